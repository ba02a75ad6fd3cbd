"""Clustering: objective identities, SDP recovery and solver fallback, local search, auto choice."""

import itertools
import sys
import types

import cvxpy as cp
import numpy as np
import pytest

from raytag.cluster import (
    Grouping,
    cluster_matrix,
    cluster_tasks,
    grouping_objective,
    groups_to_labels,
    labels_to_groups,
    local_search,
    random_grouping,
    random_objective_expectation,
    resolve_method,
    scalable_grouping,
    sdp_grouping,
    spectral_grouping,
    threshold_rounding,
)
from raytag.cluster import sdp as sdp_module
from raytag.cluster.objective import labels_objective
from raytag.cluster.planted import adjusted_rand_index, planted_affinity
from raytag.cluster.spectral import kmeans


def _random_symmetric(n, seed):
    A = np.random.default_rng(seed).normal(size=(n, n))
    return (A + A.T) / 2


def test_objective_three_ways_agree():
    T = _random_symmetric(15, 0)
    labels = np.random.default_rng(1).integers(0, 4, size=15)
    groups = labels_to_groups(labels)
    trace_form = float(np.trace(T @ cluster_matrix(groups, 15)))
    assert grouping_objective(T, groups) == pytest.approx(trace_form, rel=1e-12)
    assert labels_objective(T, labels) == pytest.approx(trace_form, rel=1e-12)
    explicit = sum(T[i, j] / len(g) for g in groups for i in g for j in g)
    assert trace_form == pytest.approx(explicit, rel=1e-12)


def test_random_expectation_matches_monte_carlo():
    T = _random_symmetric(9, 2) + np.diag(np.arange(9.0))
    sizes = [2, 3, 4]
    draws = [grouping_objective(T, random_grouping(sizes, 9, seed=s)) for s in range(4000)]
    assert np.mean(draws) == pytest.approx(random_objective_expectation(T, sizes), abs=4 * np.std(draws) / np.sqrt(4000))


def test_adjusted_rand_index_reference_values():
    # Reference values from Hubert & Arabie's formula (as in scikit-learn's documentation).
    assert adjusted_rand_index([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert adjusted_rand_index([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(4 / 7)
    assert adjusted_rand_index([0, 0, 0, 0], [0, 1, 2, 3]) == pytest.approx(0.0)


@pytest.mark.parametrize("solver", ["CLARABEL", "SCS"])
def test_sdp_recovers_planted_groups(solver):
    T, planted = planted_affinity(12, 3, noise=0.15, seed=3)
    for rounding in ("refined", "threshold"):
        result = sdp_grouping(T, 3, rounding=rounding, solver=solver)
        assert result.solver == solver and result.extra["solver_status"].startswith("optimal")
        assert adjusted_rand_index(planted, groups_to_labels(result.groups, 12)) == pytest.approx(1.0)
        # The relaxation bounds every partition from above.
        assert result.extra["relaxed_objective"] >= result.objective - 1e-3 * abs(result.objective)


def test_sdp_matches_brute_force_optimum_on_tiny_matrix():
    T = _random_symmetric(8, 4)
    best = max(
        labels_objective(T, np.array((0,) + labels), 2)
        for labels in itertools.product([0, 1], repeat=7)
        if 1 in labels
    )
    assert sdp_grouping(T, 2, solver="SCS").objective == pytest.approx(best, rel=1e-9)
    assert scalable_grouping(T, 2).objective == pytest.approx(best, rel=1e-9)


def test_threshold_rounding_overlap_keeps_shared_task():
    X = np.zeros((5, 5))
    X[np.ix_([0, 1, 2], [0, 1, 2])] = 1 / 3
    X[np.ix_([2, 3, 4], [2, 3, 4])] += 1 / 3
    disjoint = threshold_rounding(X)
    overlapping = threshold_rounding(X, overlap=True)
    assert sorted(map(sorted, disjoint)) == [[0, 1, 2], [3, 4]]
    assert sorted(map(sorted, overlapping)) == [[0, 1, 2], [2, 3, 4]]


@pytest.mark.parametrize("seed", range(5))
def test_local_search_never_lowers_objective(seed):
    rng = np.random.default_rng(seed)
    T = _random_symmetric(40, seed)
    start = rng.permutation(np.arange(40) % 5)
    labels, info = local_search(T, start, 5)
    assert info["objective_before"] == pytest.approx(labels_objective(T, start, 5))
    assert info["objective_after"] == pytest.approx(labels_objective(T, labels, 5))  # incremental gains were exact
    assert info["objective_after"] > info["objective_before"]
    assert np.bincount(labels, minlength=5).min() >= 1
    again, info_again = local_search(T, labels, 5)  # a local optimum stays put
    assert np.array_equal(again, labels) and info_again["moves"] == info_again["swaps"] == 0


def test_scalable_and_spectral_recover_planted_groups():
    T, planted = planted_affinity(120, 8, noise=0.5, seed=5)
    scalable = scalable_grouping(T, 8)
    assert adjusted_rand_index(planted, groups_to_labels(scalable.groups, 120)) > 0.95
    assert scalable.objective >= labels_objective(T, planted) - 1e-9
    assert scalable.objective >= spectral_grouping(T, 8).objective - 1e-9


def test_scalable_within_one_percent_of_sdp():
    T, _ = planted_affinity(60, 6, noise=0.8, seed=6)
    sdp = sdp_grouping(T, 6, solver="SCS")
    assert scalable_grouping(T, 6).objective >= 0.99 * sdp.objective


def test_auto_picks_by_size():
    assert resolve_method("auto", 10, sdp_max_n=12) == "sdp"
    assert resolve_method("auto", 13, sdp_max_n=12) == "scalable"
    small, _ = planted_affinity(10, 2, noise=0.1, seed=7)
    large, _ = planted_affinity(20, 2, noise=0.1, seed=7)
    assert cluster_tasks(small, 2, sdp_max_n=12).method == "sdp"
    assert cluster_tasks(large, 2, sdp_max_n=12).method == "scalable"
    assert cluster_tasks(large, 2, method="sdp", sdp_max_n=12).method == "sdp"
    with pytest.raises(ValueError, match="method"):
        cluster_tasks(large, 2, method="kmeans")


def test_solver_fallback_without_mosek(monkeypatch):
    monkeypatch.setattr(sdp_module, "mosek_usable", lambda: False)
    assert sdp_module.choose_solver(10) == "CLARABEL"
    assert sdp_module.choose_solver(sdp_module.CLARABEL_MAX_N + 1) == "SCS"
    monkeypatch.setattr(cp, "installed_solvers", lambda: ["SCS", "OSQP"])
    assert sdp_module.choose_solver(10) == "SCS"
    T, planted = planted_affinity(10, 2, noise=0.1, seed=8)
    result = sdp_grouping(T, 2)
    assert result.solver == "SCS"
    assert adjusted_rand_index(planted, groups_to_labels(result.groups, 10)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="MOSEK"):
        sdp_module.choose_solver(10, "MOSEK")
    monkeypatch.setattr(sdp_module, "mosek_usable", lambda: True)
    assert sdp_module.choose_solver(10) == "MOSEK"


def test_mosek_probe_survives_missing_license(monkeypatch):
    def unlicensed_solve(self, *args, **kwargs):
        raise cp.error.SolverError("MOSEK: license file not found")

    sdp_module.mosek_usable.cache_clear()
    monkeypatch.setitem(sys.modules, "mosek", types.ModuleType("mosek"))
    monkeypatch.setattr(cp, "installed_solvers", lambda: ["MOSEK", "SCS"])
    monkeypatch.setattr(cp.Problem, "solve", unlicensed_solve)
    try:
        assert sdp_module.mosek_usable() is False
        monkeypatch.setattr(sdp_module, "CLARABEL_MAX_N", 0)
        assert sdp_module.choose_solver(10) == "SCS"
    finally:
        sdp_module.mosek_usable.cache_clear()


def test_random_grouping_keeps_sizes():
    groups = random_grouping([3, 5, 2], 10, seed=1)
    assert [len(g) for g in groups] == [3, 5, 2]
    assert sorted(i for g in groups for i in g) == list(range(10))
    overlapping = random_grouping([6, 6], 10, seed=1)
    assert [len(set(g)) for g in overlapping] == [6, 6]
    with pytest.raises(ValueError, match="sizes"):
        random_grouping([11], 10)


def test_kmeans_separates_blobs():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [10, 0], [0, 10]])
    truth = np.repeat(np.arange(3), 20)
    points = centers[truth] + rng.normal(scale=0.5, size=(60, 2))
    assert adjusted_rand_index(truth, kmeans(points, 3, seed=0)) == pytest.approx(1.0)


def test_grouping_json_and_input_errors():
    grouping = Grouping([[0, 2], [1]], "sdp", 2, 1.5, "SCS", 0.1, {"solver_status": "optimal"})
    assert grouping.to_json(["a", "b", "c"]) == {
        "groups": [["a", "c"], ["b"]],
        "method": "sdp",
        "k": 2,
        "objective": 1.5,
        "solver": "SCS",
        "seconds": 0.1,
        "solver_status": "optimal",
    }
    with pytest.raises(ValueError, match="names"):
        grouping.to_json(["a", "b"])
    with pytest.raises(ValueError, match="symmetric"):
        cluster_tasks(np.arange(9.0).reshape(3, 3), 2)
    with pytest.raises(ValueError, match="k"):
        cluster_tasks(np.eye(3), 5)
