"""Choosing k: the sweep finds the planted number of groups and its table is consistent."""

import numpy as np
import pytest

from raytag.cluster import cluster_tasks, random_objective_expectation
from raytag.cluster.choose_k import choose_k, null_affinity
from raytag.cluster.planted import adjusted_rand_index, planted_affinity
from raytag.cluster.grouping import groups_to_labels


def test_choose_k_finds_planted_k():
    T, planted = planted_affinity(48, 4, noise=0.4, seed=11)
    k, table = choose_k(T)
    assert k == 4
    assert [row["k"] for row in table] == sorted(row["k"] for row in table)
    best = max(table, key=lambda row: row["corrected_gain"])
    assert best["k"] == 4 and best["gain"] - best["null_gain"] == pytest.approx(best["corrected_gain"])


def test_cluster_tasks_without_k_reports_sweep():
    T, planted = planted_affinity(40, 4, noise=0.4, seed=12)
    grouping = cluster_tasks(T, method="scalable", k_values=[2, 3, 4, 6, 8])
    assert grouping.k == 4 and grouping.extra["k_chosen_by"] == "gain_over_random_minus_null"
    assert [row["k"] for row in grouping.extra["k_sweep"]] == [2, 3, 4, 6, 8]
    assert adjusted_rand_index(planted, groups_to_labels(grouping.groups, 40)) == pytest.approx(1.0)
    row = next(r for r in grouping.extra["k_sweep"] if r["k"] == 4)
    sizes = [len(g) for g in grouping.groups]
    assert row["gain"] == pytest.approx(grouping.objective - random_objective_expectation(T, sizes))


def test_null_affinity_keeps_entries_and_diagonal():
    T, _ = planted_affinity(20, 2, seed=13)
    null = null_affinity(T, seed=1)
    assert np.allclose(null, null.T) and np.array_equal(np.diag(null), np.diag(T))
    upper = np.triu_indices(20, 1)
    assert np.array_equal(np.sort(null[upper]), np.sort(T[upper]))
    assert not np.array_equal(null, T)


def test_choose_k_rejects_bad_k_values():
    T, _ = planted_affinity(10, 2, seed=14)
    with pytest.raises(ValueError, match="k_values"):
        choose_k(T, k_values=[1, 3])
