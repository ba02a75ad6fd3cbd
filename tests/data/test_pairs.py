import numpy as np
import pytest

from raytag.data.loaders import DataError
from raytag.data.pairs import Pairs, build_pairs
from raytag.data.tasks import TaskSet


def _taskset(num_nodes=500, num_tasks=3, seed=0):
    """Hand-made splits: a few train/val positives, many negatives, some unused/test rows."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((num_nodes, num_tasks)) < 0.1).astype(np.uint8)
    split = rng.choice(np.array([0, 1, 2, 3], dtype=np.int8), size=(num_nodes, num_tasks), p=[0.1, 0.4, 0.3, 0.2])
    return TaskSet(np.arange(num_nodes, dtype=np.int64) * 7, labels, split, [f"t{i}" for i in range(num_tasks)],
                   "seeds")


def test_pairs_contents_and_sort_order():
    tasks = _taskset()
    pairs = build_pairs(tasks, negatives_per_split=40, seed=0)
    assert (pairs.node.dtype, pairs.task.dtype, pairs.split.dtype, pairs.label.dtype, pairs.weight.dtype) == (
        np.int64, np.int32, np.int8, np.float32, np.float32)
    order = np.lexsort((pairs.node, pairs.split, pairs.task))
    np.testing.assert_array_equal(order, np.arange(len(pairs)))
    np.testing.assert_array_equal(tasks.split[pairs.node, pairs.task], pairs.split)
    np.testing.assert_array_equal(tasks.labels[pairs.node, pairs.task], pairs.label)
    for task in range(tasks.num_tasks):
        for code in (1, 2):
            rows = (pairs.task == task) & (pairs.split == code)
            positives = np.flatnonzero((tasks.split[:, task] == code) & (tasks.labels[:, task] == 1))
            negatives = np.flatnonzero((tasks.split[:, task] == code) & (tasks.labels[:, task] == 0))
            np.testing.assert_array_equal(pairs.node[rows & (pairs.label == 1)], positives)
            assert np.all(pairs.weight[rows & (pairs.label == 1)] == 1)
            sampled = rows & (pairs.label == 0)
            assert sampled.sum() == min(40, negatives.size)
            # Weighted negative count is exactly the true count.
            assert pairs.weight[sampled].sum() == pytest.approx(negatives.size, rel=1e-6)


def test_small_splits_keep_every_negative_with_weight_one():
    tasks = _taskset(num_nodes=60)
    pairs = build_pairs(tasks, negatives_per_split=10_000)
    np.testing.assert_array_equal(pairs.weight, 1)
    expected = np.sum(np.isin(tasks.split, (1, 2)))
    assert len(pairs) == expected


def test_weighted_sums_are_unbiased():
    """Averaged over sampling seeds, the weighted sum of any per-node value over a split's
    sampled rows equals its sum over the full split."""
    tasks = _taskset(num_nodes=400, num_tasks=1)
    value = np.random.default_rng(9).exponential(size=400)
    in_train = tasks.split[:, 0] == 1
    truth = value[in_train].sum()
    estimates = []
    for seed in range(400):
        pairs = build_pairs(tasks, negatives_per_split=15, seed=seed)
        rows = pairs.split == 1
        estimates.append(np.sum(pairs.weight[rows] * value[pairs.node[rows]]))
    estimates = np.array(estimates)
    standard_error = estimates.std() / np.sqrt(estimates.size)
    assert estimates.std() > 0
    assert abs(estimates.mean() - truth) < 4 * standard_error


def test_seeded_and_roundtrip(tmp_path):
    tasks = _taskset()
    a = build_pairs(tasks, negatives_per_split=30, seed=5)
    b = build_pairs(tasks, negatives_per_split=30, seed=5)
    c = build_pairs(tasks, negatives_per_split=30, seed=6)
    np.testing.assert_array_equal(a.node, b.node)
    assert not np.array_equal(a.node, c.node)
    a.save(tmp_path / "pairs.npz")
    loaded = Pairs.load(tmp_path / "pairs.npz")
    for field in ("node", "task", "split", "label", "weight"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(a, field))
        assert getattr(loaded, field).dtype == getattr(a, field).dtype


def test_rejects_nonpositive_sample_size():
    with pytest.raises(DataError, match="negatives_per_split=0"):
        build_pairs(_taskset(), negatives_per_split=0)


def test_balanced_classes_weigh_the_same():
    taskset = _taskset()
    pairs = build_pairs(taskset, negatives_per_split=5, seed=0, balance_classes=True)
    for task in range(taskset.num_tasks):
        for split in (1, 2):
            rows = (pairs.task == task) & (pairs.split == split)
            positive = pairs.weight[rows & (pairs.label == 1)].sum()
            negative = pairs.weight[rows & (pairs.label == 0)].sum()
            true_negatives = ((taskset.split[:, task] == split) & (taskset.labels[:, task] == 0)).sum()
            assert positive == pytest.approx(true_negatives, rel=1e-5)
            assert negative == pytest.approx(true_negatives, rel=1e-5)
    weights = taskset.training_weights(balance_classes=True)
    train = taskset.split == 1
    for task in range(taskset.num_tasks):
        column, label = weights[:, task], taskset.labels[:, task]
        assert column[train[:, task] & (label == 1)].sum() == pytest.approx(column[train[:, task] & (label == 0)].sum())
        assert np.all(column[~train[:, task]] == 0)
