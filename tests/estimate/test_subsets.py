import json
from itertools import combinations

import numpy as np
import pytest

from raytag.estimate.subsets import (check_subsets, membership_matrix, sample_subsets,
                                     subsets_from_names, validation_design)


def test_sample_subsets_balanced_distinct_sorted():
    subsets = sample_subsets(23, m=300, size=7, seed=3)
    assert subsets.shape == (300, 7) and subsets.dtype == np.int64
    assert (np.diff(subsets, axis=1) > 0).all()  # sorted, hence no repeated task
    assert subsets.min() >= 0 and subsets.max() < 23
    counts = np.bincount(subsets.ravel(), minlength=23)
    assert counts.max() - counts.min() <= 1
    assert counts.sum() == 300 * 7


def test_sample_subsets_seeded_and_pairs_all_drawn():
    a = sample_subsets(20, m=200, size=5, seed=1)
    assert np.array_equal(a, sample_subsets(20, m=200, size=5, seed=1))
    assert not np.array_equal(a, sample_subsets(20, m=200, size=5, seed=2))
    seen = {pair for row in a for pair in combinations(row.tolist(), 2)}
    assert len(seen) == 20 * 19 // 2  # the affinity matrix needs every pair co-drawn


def test_sample_subsets_full_size_and_errors():
    assert np.array_equal(sample_subsets(4, m=3, size=4), np.tile(np.arange(4), (3, 1)))
    with pytest.raises(ValueError, match="size"):
        sample_subsets(5, m=3, size=6)
    with pytest.raises(ValueError, match="m must"):
        sample_subsets(5, m=0, size=2)


def test_subsets_from_names_pads_and_sorts():
    names = ["a", "b", "c", "d"]
    out = subsets_from_names([["c", "a"], ["d"], ["b", "c", "d"]], names)
    assert out.tolist() == [[0, 2, -1], [3, -1, -1], [1, 2, 3]]
    member = membership_matrix(out, 4)
    assert member.tolist() == [[True, False, True, False], [False, False, False, True],
                               [False, True, True, True]]


@pytest.mark.parametrize("subsets, message", [
    ([["a", "zz"]], "unknown tasks 'zz'"),
    ([["a"], []], r"subsets\[1\] is empty"),
    ([["a", "a"]], "more than once"),
    ([], "subsets is empty"),
    ("a", "list of lists"),
])
def test_subsets_from_names_errors(subsets, message):
    with pytest.raises(ValueError, match=message):
        subsets_from_names(subsets, ["a", "b"])


@pytest.mark.parametrize("subsets, message", [
    ([[0, 5]], "outside"),
    ([[-1, 0]], "starts with padding"),
    ([[0, -1, 1]], "padding"),
    ([[1, 1]], "repeats"),
    ([[0.5, 1.0]], "integer"),
    ([0, 1], "2-D"),
])
def test_check_subsets_errors(subsets, message):
    with pytest.raises(ValueError, match=message):
        check_subsets(subsets, 3)


def test_validation_design_coverage_and_record():
    design = validation_design(100, n_validated=20, n_subsets=40, size=10, seed=5)
    pool = set(design.validated_tasks.tolist())
    assert len(pool) == 20
    assert set(design.subsets.ravel().tolist()) <= pool
    per_task = {t: int((design.subsets == t).any(1).sum()) for t in pool}
    assert min(per_task.values()) >= 8
    assert design.appearances().tolist() == [per_task[t] for t in design.validated_tasks]
    record = json.loads(json.dumps(design.to_dict()))
    assert record["subsets"] == design.subsets.tolist() and record["n_subsets"] == 40


def test_validation_design_refuses_thin_coverage():
    with pytest.raises(ValueError, match="min_appearances"):
        validation_design(100, n_validated=20, n_subsets=10, size=5)
