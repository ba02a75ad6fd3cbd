"""Group tasks so that tasks in a group help each other (pure numpy/scipy/cvxpy; no ray).

Front door: :func:`cluster_tasks`. Every method maximizes (or is scored by) the same average
within-group density, so objectives compare across methods.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from raytag.cluster.choose_k import choose_k
from raytag.cluster.grouping import Grouping, check_affinity, check_k, groups_to_labels, labels_to_groups
from raytag.cluster.local_search import local_search, scalable_grouping
from raytag.cluster.objective import cluster_matrix, grouping_objective, random_objective_expectation
from raytag.cluster.sdp import mosek_usable, sdp_grouping, solve_sdp, threshold_rounding
from raytag.cluster.spectral import random_grouping, spectral_grouping

AUTO_SDP_MAX_N = 150
"""``method="auto"`` solves the SDP up to this many tasks and uses the scalable path beyond.
Measured on 2 shared cores (benchmarks/bench_cluster.py): SCS takes ~1–2 s at n=100, ~4 s at
150, ~12 s at 200 and ~210 s at 500; at high noise its refined rounding still beats the
scalable path by up to ~1% below 150 tasks, while past that the SDP time stops paying."""

METHODS = ("auto", "sdp", "spectral", "scalable")


def resolve_method(method: str, n: int, sdp_max_n: int = AUTO_SDP_MAX_N) -> str:
    if method not in METHODS:
        raise ValueError(f"method: must be one of {METHODS}, got {method!r}")
    if method == "auto":
        return "sdp" if n <= sdp_max_n else "scalable"
    return method


def cluster_tasks(
    T: np.ndarray,
    k: int | None = None,
    method: str = "auto",
    *,
    seed: int = 0,
    solver: str = "auto",
    rounding: str = "refined",
    overlap: bool = False,
    k_values: list[int] | None = None,
    sdp_max_n: int = AUTO_SDP_MAX_N,
    restarts: int = 30,
) -> Grouping:
    """Group the n tasks of affinity matrix T (symmetric, higher = tasks help each other).

    ``method``: ``"sdp"`` (the seed's SDP + rounding), ``"spectral"`` (baseline),
    ``"scalable"`` (spectral init + local search on the same objective) or ``"auto"``
    (SDP up to ``sdp_max_n`` tasks, scalable beyond). ``k=None`` sweeps k and picks by the
    gain over random groups of the same sizes minus the same gain on a
    permuted null matrix (see :mod:`raytag.cluster.choose_k`); the table is in
    ``extra["k_sweep"]``. ``overlap=True`` (SDP with the seed's threshold rounding only)
    lets a task join several groups.
    """
    start = time.perf_counter()
    T = check_affinity(T)
    n = T.shape[0]
    chosen = resolve_method(method, n, sdp_max_n)
    if overlap and chosen != "sdp":
        raise ValueError(f"overlap: only the SDP's threshold rounding makes overlapping groups; method resolved to {chosen!r}")

    def run(k_groups: int) -> Grouping:
        if chosen == "sdp":
            return sdp_grouping(T, k_groups, rounding="threshold" if overlap else rounding, overlap=overlap, solver=solver, seed=seed)
        if chosen == "spectral":
            return spectral_grouping(T, k_groups, seed=seed)
        return scalable_grouping(T, k_groups, seed=seed, restarts=restarts)

    if k is None:
        k, table = choose_k(T, k_values=k_values, seed=seed)
        sweep = {"k_chosen_by": "gain_over_random_minus_null", "k_sweep": table}
    else:
        sweep = {"k_chosen_by": "user"}
    grouping = run(check_k(k, n))
    extra = {**grouping.extra, "requested_method": method, **sweep}
    return dataclasses.replace(grouping, seconds=time.perf_counter() - start, extra=extra)


__all__ = [
    "AUTO_SDP_MAX_N",
    "Grouping",
    "choose_k",
    "cluster_matrix",
    "cluster_tasks",
    "check_affinity",
    "grouping_objective",
    "groups_to_labels",
    "labels_to_groups",
    "local_search",
    "mosek_usable",
    "random_grouping",
    "random_objective_expectation",
    "resolve_method",
    "scalable_grouping",
    "sdp_grouping",
    "solve_sdp",
    "spectral_grouping",
    "threshold_rounding",
]
