"""Per-task ranking metrics under the TaskSet split convention (1 train, 2 val, 3 test).

Under the ``seeds`` regime a task's positive rate is ~2%, so F1 at a 0.5 threshold is
degenerate: every F1 here uses the threshold that maximizes F1 on the task's validation
nodes, applied unchanged to its test nodes. Average precision needs no threshold.
Scores may be logits or probabilities — only their order matters.
"""

from __future__ import annotations

import numpy as np

TRAIN, VAL, TEST = 1, 2, 3


def _check_scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels must have the same length, got {scores.size} and {labels.size}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite (found NaN or inf)")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError(f"labels must be 0/1, got values {np.unique(labels)[:10].tolist()}")
    return scores, labels.astype(bool)


def _ranked_counts(scores: np.ndarray, labels: np.ndarray):
    """Cumulative true/false positives at each distinct score, highest score first.

    Tied scores form one threshold (as in scikit-learn), so the result never depends on
    the order of tied samples.
    """
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    true_pos = np.cumsum(sorted_labels)[last_of_tie]
    false_pos = (last_of_tie + 1) - true_pos
    return sorted_scores[last_of_tie], true_pos, false_pos


def average_precision(scores, labels) -> float:
    """``Σ_k (R_k − R_{k−1}) · P_k`` over distinct thresholds — scikit-learn's definition.

    Returns NaN when there are no positives (scikit-learn returns 0 with a warning; NaN
    keeps such tasks out of averages instead of dragging them down).
    """
    scores, labels = _check_scores_labels(scores, labels)
    positives = int(labels.sum())
    if positives == 0:
        return float("nan")
    _, true_pos, false_pos = _ranked_counts(scores, labels)
    precision = true_pos / (true_pos + false_pos)
    recall_gain = np.diff(true_pos, prepend=0) / positives
    return float(np.sum(recall_gain * precision))


def best_f1_threshold(scores, labels) -> tuple[float, float]:
    """The threshold ``τ`` (predict positive when ``score >= τ``) maximizing F1, and that F1.

    Candidates are the distinct scores; on ties in F1 the highest threshold wins. Returns
    ``(nan, nan)`` when there are no positives (F1 is undefined).
    """
    scores, labels = _check_scores_labels(scores, labels)
    positives = int(labels.sum())
    if positives == 0:
        return float("nan"), float("nan")
    thresholds, true_pos, false_pos = _ranked_counts(scores, labels)
    f1 = 2 * true_pos / (true_pos + false_pos + positives)
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def f1_at_threshold(scores, labels, threshold: float) -> float:
    """F1 of predicting positive when ``score >= threshold`` (NaN without positives or threshold)."""
    scores, labels = _check_scores_labels(scores, labels)
    positives = int(labels.sum())
    if positives == 0 or not np.isfinite(threshold):
        return float("nan")
    predicted = scores >= threshold
    true_pos = int(np.sum(predicted & labels))
    return 2 * true_pos / (int(predicted.sum()) + positives)


def per_task_metrics(scores, labels, split) -> dict:
    """Per-task validation/test AP and F1 (test F1 at the validation-chosen threshold).

    ``scores``, ``labels``, ``split``: [N, n] arrays (TaskSet rows × tasks); only entries
    with split 2 (val) and 3 (test) are scored. Returns per-task float64 arrays
    ``val_ap``, ``test_ap``, ``val_f1``, ``test_f1``, ``threshold``, ``base_rate`` (test
    positive rate — the AP of a random ranking), ``num_test_positives``, and NaN-ignoring
    means ``mean_val_ap``, ``mean_test_ap``, ``mean_val_f1``, ``mean_test_f1``,
    ``mean_base_rate``. A task without positives in a split gets NaN for that split.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    split = np.asarray(split)
    if scores.ndim != 2 or scores.shape != labels.shape or scores.shape != split.shape:
        raise ValueError(
            f"scores, labels and split must all be [N, n] arrays of one shape, got "
            f"{scores.shape}, {labels.shape}, {split.shape}"
        )
    if not np.isin(split, (0, TRAIN, VAL, TEST)).all():
        raise ValueError(f"split values must be 0 (unused), 1 (train), 2 (val) or 3 (test), got {np.unique(split).tolist()}")
    num_tasks = scores.shape[1]
    result = {key: np.full(num_tasks, np.nan) for key in ("val_ap", "test_ap", "val_f1", "test_f1", "threshold", "base_rate")}
    result["num_test_positives"] = np.zeros(num_tasks, dtype=np.int64)
    for task in range(num_tasks):
        val = split[:, task] == VAL
        test = split[:, task] == TEST
        val_scores, val_labels = scores[val, task], labels[val, task]
        test_scores, test_labels = scores[test, task], labels[test, task]
        result["val_ap"][task] = average_precision(val_scores, val_labels)
        result["test_ap"][task] = average_precision(test_scores, test_labels)
        threshold, result["val_f1"][task] = best_f1_threshold(val_scores, val_labels)
        result["threshold"][task] = threshold
        result["test_f1"][task] = f1_at_threshold(test_scores, test_labels, threshold)
        if test.any():
            result["base_rate"][task] = float(np.mean(test_labels))
        result["num_test_positives"][task] = int(np.sum(test_labels))
    for key in ("val_ap", "test_ap", "val_f1", "test_f1", "base_rate"):
        values = result[key]
        result[f"mean_{key}"] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return result
