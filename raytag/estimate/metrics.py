"""Validation metrics: estimated vs truly fine-tuned losses, beside two naive baselines.

Only (subset, task) pairs with the task in the subset and among the validated tasks count.
The metrics grouping depends on are the within-task ranking of subsets, the error on the
loss *change*, and the ranking of affinity entries; the pooled ones (``mean_relative_error``,
``spearman``) are kept for comparison with the papers, and are mostly driven by which task
a pair belongs to — the ``task_mean`` baseline shows how much. Undefined values (e.g. a
rank correlation of a constant prediction) are ``None``, so the result is valid JSON.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from raytag.estimate.affinity import affinity_matrix
from raytag.estimate.subsets import check_subsets, membership_matrix

METRIC_KEYS = ("within_task_spearman", "delta_relative_error", "affinity_spearman",
               "mean_relative_error", "spearman")


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def _metric_block(subsets, pairs, true, est, base, validated) -> dict:
    """All metric keys for one predictor; ``pairs`` [m, n] marks the pairs that count."""
    pairs = pairs & np.isfinite(est)
    per_task = [_spearman(est[pairs[:, t], t], true[pairs[:, t], t]) for t in validated]
    per_task = [r for r in per_task if r is not None]
    err = np.abs(est - true)[pairs]
    delta = np.abs(true - base[None, :])[pairs]
    n_tasks = true.shape[1]
    aff_true = affinity_matrix(subsets, np.where(pairs, true, np.nan), n_tasks)
    aff_est = affinity_matrix(subsets, np.where(pairs, est, np.nan), n_tasks)
    counted = pairs.astype(np.float64)
    seen = np.triu((counted.T @ counted) > 0, k=1)  # entries with data: both tasks scored together
    return {
        "within_task_spearman": float(np.mean(per_task)) if per_task else None,
        "delta_relative_error": _ratio(err.mean(), delta.mean()) if err.size else None,
        "affinity_spearman": _spearman(aff_est[seen], aff_true[seen]),
        "mean_relative_error": float(np.mean(err / np.abs(true[pairs]))) if err.size else None,
        "spearman": _spearman(est[pairs], true[pairs]),
        "n_pairs": int(pairs.sum()),
    }


def leave_one_out_task_mean(subsets, true_losses, pairs) -> np.ndarray:
    """``[m, n]``: each counted pair's task mean true loss over its *other* counted subsets
    (NaN where the task has no other subset)."""
    values = np.where(pairs, true_losses, 0.0)
    total, count = values.sum(0, keepdims=True), pairs.sum(0, keepdims=True)
    others = count - 1
    loo = np.divide(total - values, others, out=np.full(values.shape, np.nan),
                    where=pairs & (others > 0))
    return loo


def validation_metrics(subsets, true_losses, est_losses, base_losses, validated_tasks) -> dict:
    """Metrics of ``est_losses`` against ``true_losses`` (both ``[m, n]``, validation loss of
    every task after fine-tuning on each subset) with ``base_losses`` [n] the losses at θ*.

    Returns the keys of :data:`METRIC_KEYS` plus ``n_pairs`` and ``baselines`` with the same
    keys for ``no_change`` (predict the loss at θ*) and ``task_mean`` (predict the task's
    leave-one-out mean true loss over its other validation subsets).
    """
    true = np.asarray(true_losses, dtype=np.float64)
    est = np.asarray(est_losses, dtype=np.float64)
    base = np.asarray(base_losses, dtype=np.float64)
    if true.ndim != 2 or est.shape != true.shape:
        raise ValueError(f"true_losses and est_losses must both be [m, n]; got {true.shape} and "
                         f"{est.shape}")
    m, n_tasks = true.shape
    if base.shape != (n_tasks,):
        raise ValueError(f"base_losses must have shape ({n_tasks},), got {base.shape}")
    subsets = check_subsets(subsets, n_tasks)
    if subsets.shape[0] != m:
        raise ValueError(f"subsets has {subsets.shape[0]} rows but the losses have {m}")
    validated = np.unique(np.asarray(validated_tasks, dtype=np.int64))
    if validated.size == 0 or validated.min() < 0 or validated.max() >= n_tasks:
        raise ValueError(f"validated_tasks must be non-empty task indices in [0, {n_tasks}), "
                         f"got {np.asarray(validated_tasks).tolist()}")
    is_validated = np.zeros(n_tasks, dtype=bool)
    is_validated[validated] = True
    pairs = membership_matrix(subsets, n_tasks) & is_validated[None, :] & np.isfinite(true)
    result = _metric_block(subsets, pairs, true, est, base, validated)
    no_change = np.broadcast_to(base, true.shape)
    task_mean = leave_one_out_task_mean(subsets, true, pairs)
    result["baselines"] = {
        "no_change": _metric_block(subsets, pairs, true, no_change, base, validated),
        "task_mean": _metric_block(subsets, pairs, true, task_mean, base, validated),
    }
    return result
