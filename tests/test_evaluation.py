"""Metrics checked against hand-computed values and threshold-by-threshold loops."""

import numpy as np
import pytest

from raytag.evaluation import average_precision, best_f1_threshold, f1_at_threshold, per_task_metrics


def reference_average_precision(scores, labels):
    """Walk the thresholds from high to low, adding precision × recall increment."""
    labels = np.asarray(labels, dtype=bool)
    total, previous_recall = 0.0, 0.0
    for threshold in sorted(set(scores), reverse=True):
        predicted = np.asarray(scores) >= threshold
        true_pos = np.sum(predicted & labels)
        recall = true_pos / labels.sum()
        total += (recall - previous_recall) * true_pos / predicted.sum()
        previous_recall = recall
    return total


def reference_best_f1(scores, labels):
    labels = np.asarray(labels, dtype=bool)
    best = (None, -1.0)
    for threshold in sorted(set(scores), reverse=True):
        predicted = np.asarray(scores) >= threshold
        true_pos = np.sum(predicted & labels)
        precision = true_pos / predicted.sum()
        recall = true_pos / labels.sum()
        f1 = 0.0 if true_pos == 0 else 2 * precision * recall / (precision + recall)
        if f1 > best[1]:
            best = (threshold, f1)
    return best


def test_hand_computed_values():
    # scikit-learn's documented example: AP = 0.8333...
    assert average_precision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(5 / 6)
    # Tied scores are one threshold: {0.5: 2 tp, 1 fp} -> precision 2/3 at recall 1.
    assert average_precision([0.5, 0.5, 0.5, 0.1], [1, 0, 1, 0]) == pytest.approx(2 / 3)
    assert average_precision([0.5, 0.5, 0.5, 0.1], [0, 1, 1, 0]) == pytest.approx(2 / 3)
    assert average_precision([3.0, 2.0, 1.0], [1, 1, 0]) == pytest.approx(1.0)
    # F1 per threshold: 0.8 -> 2/3, 0.4 -> 1/2, 0.35 -> 4/5, 0.1 -> 2/3.
    threshold, f1 = best_f1_threshold([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert threshold == 0.35 and f1 == pytest.approx(0.8)
    assert f1_at_threshold([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.4) == pytest.approx(0.5)


def test_against_threshold_loops_on_random_data_with_ties():
    rng = np.random.default_rng(0)
    for trial in range(20):
        size = int(rng.integers(5, 60))
        labels = rng.random(size) < 0.3
        labels[0] = True
        scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounding creates ties
        assert average_precision(scores, labels) == pytest.approx(reference_average_precision(scores, labels))
        threshold, f1 = best_f1_threshold(scores, labels)
        ref_threshold, ref_f1 = reference_best_f1(scores, labels)
        assert f1 == pytest.approx(ref_f1)
        assert threshold == ref_threshold
        assert f1_at_threshold(scores, labels, threshold) == pytest.approx(f1)


def test_no_positives_and_bad_input():
    assert np.isnan(average_precision([0.2, 0.1], [0, 0]))
    assert all(np.isnan(best_f1_threshold([0.2, 0.1], [0, 0])))
    with pytest.raises(ValueError, match="same length"):
        average_precision([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="finite"):
        average_precision([np.nan, 0.2], [1, 0])
    with pytest.raises(ValueError, match="0/1"):
        best_f1_threshold([0.1, 0.2], [2, 0])


def test_per_task_metrics_uses_only_its_split_and_the_validation_threshold():
    rng = np.random.default_rng(1)
    nodes, tasks = 300, 4
    labels = (rng.random((nodes, tasks)) < 0.2).astype(np.uint8)
    scores = rng.normal(labels * 1.0, 1.0).astype(np.float32)
    split = rng.choice(np.array([0, 1, 2, 3], dtype=np.int8), size=(nodes, tasks), p=[0.1, 0.3, 0.2, 0.4])
    labels[:, 3][split[:, 3] == 2] = 0  # task 3 has no validation positives
    result = per_task_metrics(scores, labels, split)
    for task in range(tasks):
        val, test = split[:, task] == 2, split[:, task] == 3
        expected_test_ap = reference_average_precision(scores[test, task], labels[test, task])
        assert result["test_ap"][task] == pytest.approx(expected_test_ap)
        assert result["base_rate"][task] == pytest.approx(labels[test, task].mean())
        if task == 3:
            assert np.isnan(result["val_ap"][task]) and np.isnan(result["test_f1"][task])
            continue
        threshold, val_f1 = reference_best_f1(scores[val, task], labels[val, task])
        assert result["val_f1"][task] == pytest.approx(val_f1)
        predicted = scores[test, task] >= threshold
        true_pos = np.sum(predicted & (labels[test, task] == 1))
        expected_test_f1 = 2 * true_pos / (predicted.sum() + labels[test, task].sum())
        assert result["test_f1"][task] == pytest.approx(expected_test_f1)
    assert result["mean_test_ap"] == pytest.approx(result["test_ap"].mean())
    assert result["mean_val_f1"] == pytest.approx(np.mean(result["val_f1"][:3]))
    # Scores of train/unused entries do not matter.
    shuffled = scores.copy()
    outside = (split == 0) | (split == 1)
    shuffled[outside] = rng.normal(size=outside.sum())
    again = per_task_metrics(shuffled, labels, split)
    np.testing.assert_array_equal(again["test_ap"], result["test_ap"])
    np.testing.assert_array_equal(again["test_f1"], result["test_f1"])


def test_per_task_metrics_rejects_bad_shapes_and_split_codes():
    with pytest.raises(ValueError, match="shape"):
        per_task_metrics(np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="split values"):
        per_task_metrics(np.zeros((3, 2)), np.zeros((3, 2)), np.full((3, 2), 4))
