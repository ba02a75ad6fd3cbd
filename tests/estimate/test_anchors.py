import numpy as np
import pytest

from raytag.estimate.affinity import affinity_matrix
from raytag.estimate.anchors import anchor_offsets, anchor_subsets
from raytag.estimate.subsets import sample_subsets


def test_anchor_subsets_partition_every_task_once_in_near_equal_sizes():
    anchors = anchor_subsets(23, 5, seed=3)
    assert len(anchors) == 5
    assert sorted(len(a) for a in anchors) == [4, 4, 5, 5, 5]
    assert np.array_equal(np.sort(np.concatenate(anchors)), np.arange(23))
    assert all(np.array_equal(a, np.sort(a)) for a in anchors)
    again = anchor_subsets(23, 5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(anchors, again))


def test_anchor_offsets_are_each_tasks_gap_on_its_own_anchor():
    anchors = [np.array([0, 2]), np.array([1, 3])]
    true = np.array([[1.0, 9.0, 2.0, 9.0],
                     [9.0, 0.5, 9.0, np.nan]])
    estimated = np.array([[0.8, 0.0, 2.5, 0.0],
                          [0.0, 0.25, 0.0, 1.0]])
    offsets = anchor_offsets(anchors, true, estimated, 4)
    np.testing.assert_allclose(offsets, [0.2, 0.25, -0.5, 0.0])  # task 3 has no real loss: 0


def test_anchor_offsets_reject_overlapping_anchors_and_wrong_shapes():
    with pytest.raises(ValueError, match="share tasks"):
        anchor_offsets([np.array([0, 1]), np.array([1, 2])], np.zeros((2, 3)), np.zeros((2, 3)), 3)
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        anchor_offsets([np.array([0]), np.array([1, 2])], np.zeros((2, 3)), np.zeros((3, 3)), 3)


def test_a_per_task_offset_leaves_the_affinity_matrix_unchanged():
    rng = np.random.default_rng(0)
    subsets = sample_subsets(12, m=200, size=4, seed=1)
    losses = rng.normal(size=(200, 12))
    shifted = losses + rng.normal(size=12)[None, :] * 5
    np.testing.assert_allclose(affinity_matrix(subsets, shifted, 12), affinity_matrix(subsets, losses, 12), atol=1e-12)
