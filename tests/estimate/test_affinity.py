import numpy as np
import pytest

from raytag.estimate.affinity import affinity_matrix, higher_order_surrogate, task_scores
from raytag.estimate.subsets import sample_subsets


def _loop_scores(subsets, losses, n):
    scores = np.zeros(losses.shape)
    for t in range(n):
        rows = [k for k, row in enumerate(subsets) if t in row and np.isfinite(losses[k, t])]
        values = -losses[rows, t]
        std = values.std()
        for k, v in zip(rows, values):
            scores[k, t] = (v - values.mean()) / std if std > 0 else 0.0
    return scores


def _loop_affinity(subsets, losses, n):
    scores = _loop_scores(subsets, losses, n)
    raw = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i == j:
                rows = [k for k, row in enumerate(subsets) if list(row[row >= 0]) == [i]]
            else:
                rows = [k for k, row in enumerate(subsets) if i in row and j in row]
            rows = [k for k in rows if np.isfinite(losses[k, i])]
            raw[i, j] = np.mean(scores[rows, i]) if rows else 0.0
    return (raw + raw.T) / 2


def test_affinity_matches_loop_reference_with_singletons_and_nans():
    n = 7
    rng = np.random.default_rng(0)
    subsets = np.concatenate([sample_subsets(n, m=30, size=3, seed=1),
                              np.array([[0, -1, -1], [0, -1, -1], [4, -1, -1]])])
    losses = rng.random((subsets.shape[0], n)) + 0.5
    losses[5, subsets[5, 0]] = np.nan  # a missing loss is skipped, not propagated
    expected = _loop_affinity(subsets, losses, n)
    got = affinity_matrix(subsets, losses, n)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert np.isfinite(got).all() and np.allclose(got, got.T)
    assert got[0, 0] != 0 and got[4, 4] != 0 and got[1, 1] == 0


def test_affinity_zero_for_pairs_never_drawn():
    subsets = np.array([[0, 1], [0, 1], [2, 3], [2, 3]])
    losses = np.array([[1.0, 2.0, 0, 0], [2.0, 1.0, 0, 0], [0, 0, 1.0, 1.0], [0, 0, 1.0, 1.0]])
    got = affinity_matrix(subsets, losses, 4)
    assert got[0, 2] == 0 and got[1, 3] == 0
    # task 0's scores are +1/-1 in rows 0/1 and so are task 1's: mean 0 over both rows
    assert got[0, 1] == 0
    scores, has = task_scores(subsets, losses, 4)
    assert scores[:, 0].tolist() == [1.0, -1.0, 0.0, 0.0] and has[:, 2:].sum() == 4
    assert (scores[:, 2:] == 0).all()  # constant losses: no information, score 0


def test_affinity_rejects_mismatched_losses():
    with pytest.raises(ValueError, match="losses must have shape"):
        affinity_matrix(np.array([[0, 1]]), np.zeros((2, 2)), 2)


def _loop_surrogate(subsets, losses, n, l2):
    scores = _loop_scores(subsets, losses, n)
    coef = np.zeros((n, n))
    for i in range(n):
        rows = [k for k, row in enumerate(subsets) if i in row]
        x = np.array([[1.0] + [float(j in subsets[k]) for j in range(n) if j != i] for k in rows])
        y = scores[rows, i]
        # ridge as least squares on rows augmented with sqrt(l2) * I (intercept unpenalized)
        aug_x = np.vstack([x, np.hstack([np.zeros((n - 1, 1)), np.sqrt(l2) * np.eye(n - 1)])])
        beta = np.linalg.lstsq(aug_x, np.r_[y, np.zeros(n - 1)], rcond=None)[0]
        coef[i, [j for j in range(n) if j != i]] = beta[1:]
    return (coef + coef.T) / 2


def test_higher_order_surrogate_matches_loop_reference():
    n = 6
    subsets = sample_subsets(n, m=40, size=3, seed=2)
    losses = np.random.default_rng(3).random((40, n))
    np.testing.assert_allclose(higher_order_surrogate(subsets, losses, n, l2=0.1),
                               _loop_surrogate(subsets, losses, n, 0.1), atol=1e-10)


def test_higher_order_surrogate_recovers_planted_effect():
    n = 8
    subsets = sample_subsets(n, m=400, size=4, seed=4)
    member = np.zeros((400, n))
    np.put_along_axis(member, subsets, 1.0, axis=1)
    losses = 1.0 - 0.5 * (member[:, [1]] * (np.arange(n) == 0))  # task 0 helped by task 1
    losses = losses + 0.01 * np.random.default_rng(0).random((400, n))
    coef = higher_order_surrogate(subsets, losses, n, l2=1e-3)
    # with fixed-size subsets only differences between coefficients are identifiable
    assert coef[0, 1] - coef[0, 2:].max() > 0.5
