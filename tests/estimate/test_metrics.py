import json

import numpy as np
import pytest

from raytag.estimate.metrics import METRIC_KEYS, leave_one_out_task_mean, validation_metrics
from raytag.estimate.subsets import sample_subsets

X = 99.0  # loss of a task outside the subset: must never count
SUBSETS = np.array([[0, 1, -1], [0, 2, -1], [1, 2, -1], [0, 1, 2]])
TRUE = np.array([[1.0, 2.0, X], [1.2, X, 3.0], [X, 2.2, 3.3], [0.9, 2.1, 3.1]])
EST = np.array([[1.1, 2.0, X], [1.3, X, 3.2], [X, 2.3, 3.1], [1.0, 2.1, 3.0]])
BASE = np.array([1.05, 2.15, 3.15])


def test_metrics_hand_computed():
    out = validation_metrics(SUBSETS, TRUE, EST, BASE, [0, 1, 2])
    # within task: tasks 0 and 1 ranked perfectly (+1); task 2 ranks true (1,3,2) as (3,2,1):
    # 1 - 6 * (2² + 1² + 1²) / (3 * (3² - 1)) = -0.5
    assert out["within_task_spearman"] == pytest.approx((1 + 1 - 0.5) / 3)
    # |est - true| sums to 0.9 over 9 pairs; |true - base| sums to 0.35 + 0.25 + 0.35
    assert out["delta_relative_error"] == pytest.approx(0.9 / 0.95)
    rel = [0.1 / 1.0, 0.1 / 1.2, 0.1 / 0.9, 0 / 2.0, 0.1 / 2.2, 0 / 2.1, 0.2 / 3.0, 0.2 / 3.3, 0.1 / 3.1]
    assert out["mean_relative_error"] == pytest.approx(np.mean(rel))
    assert out["n_pairs"] == 9
    # pooled: the 9 estimates order exactly like the truth except task 2's internal order;
    # ranks of the true values 1.0,1.2,0.9,2.0,2.2,2.1,3.0,3.3,3.1 vs estimates
    true_rank = [2, 3, 1, 4, 6, 5, 7, 9, 8]
    est_rank = [2, 3, 1, 4, 6, 5, 9, 8, 7]
    d2 = sum((a - b) ** 2 for a, b in zip(true_rank, est_rank))
    assert out["spearman"] == pytest.approx(1 - 6 * d2 / (9 * 80))
    assert set(METRIC_KEYS) <= set(out) and set(out["baselines"]) == {"no_change", "task_mean"}
    json.dumps(out)  # None, not NaN, where undefined


def test_baselines_hand_computed():
    out = validation_metrics(SUBSETS, TRUE, EST, BASE, [0, 1, 2])
    no_change = out["baselines"]["no_change"]
    assert no_change["delta_relative_error"] == pytest.approx(1.0)
    assert no_change["within_task_spearman"] is None  # a constant prediction ranks nothing
    assert no_change["affinity_spearman"] is None
    member = (SUBSETS[:, :, None] == np.arange(3)).any(1)
    loo = leave_one_out_task_mean(SUBSETS, TRUE, member)
    np.testing.assert_allclose(loo[[0, 1, 3], 0], [(1.2 + 0.9) / 2, (1.0 + 0.9) / 2, (1.0 + 1.2) / 2])
    assert np.isnan(loo[2, 0])
    task_mean = out["baselines"]["task_mean"]
    # leave-one-out means rank every task's subsets exactly backwards
    assert task_mean["within_task_spearman"] == pytest.approx(-1.0)
    errors = np.abs(loo - TRUE)[member]
    assert task_mean["delta_relative_error"] == pytest.approx(errors.sum() / 0.95)


def test_affinity_spearman_invariant_to_per_task_shift():
    rng = np.random.default_rng(0)
    subsets = sample_subsets(6, m=30, size=3, seed=0)
    true = rng.random((30, 6))
    shifted = validation_metrics(subsets, true, true * 2 + np.arange(6), true.mean(0), range(6))
    assert shifted["affinity_spearman"] == pytest.approx(1.0)
    assert shifted["within_task_spearman"] == pytest.approx(1.0)
    noisy = validation_metrics(subsets, true, true + rng.random((30, 6)), true.mean(0), range(6))
    assert noisy["affinity_spearman"] < 0.9


def test_only_validated_tasks_count():
    out = validation_metrics(SUBSETS, TRUE, EST, BASE, [0])
    assert out["n_pairs"] == 3 and out["within_task_spearman"] == pytest.approx(1.0)
    assert out["delta_relative_error"] == pytest.approx(0.3 / 0.35)


def test_metrics_errors():
    with pytest.raises(ValueError, match="base_losses"):
        validation_metrics(SUBSETS, TRUE, EST, BASE[:2], [0])
    with pytest.raises(ValueError, match="validated_tasks"):
        validation_metrics(SUBSETS, TRUE, EST, BASE, [5])
    with pytest.raises(ValueError, match="est_losses"):
        validation_metrics(SUBSETS, TRUE, EST[:2], BASE, [0])
