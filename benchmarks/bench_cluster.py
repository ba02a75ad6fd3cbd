"""Clustering benchmark: time, objective and planted-group recovery per method and size.

Planted affinity matrices (k groups of varying size, +gap inside groups, Gaussian noise) for
n = 30, 100, 200, 500, 2000 by default. Methods: the SDP (per solver; rounded by the seed's
threshold rule and by the refined rounding, both from one solve), spectral clustering, the
scalable path, ``method="auto"`` and random groups of the planted sizes. The SDP is skipped
above ``--sdp-max-n`` (SCS grows ~n³: ~4 s at 150, ~12 s at 200, ~210 s at 500 measured here);
``--force-sdp`` runs it at every size.

One JSON object per row, then a summary JSON object as the last line:
``n_max, sdp_seconds_at_n_max, auto_seconds_at_n_max, auto_vs_best_objective_gap,
ari_at_n_max`` and the same per size. Run: ``python benchmarks/bench_cluster.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from raytag.cluster import cluster_tasks, grouping_objective, groups_to_labels, resolve_method, scalable_grouping
from raytag.cluster.planted import adjusted_rand_index, planted_affinity
from raytag.cluster.sdp import CLARABEL_MAX_N, refined_rounding, solve_sdp, threshold_rounding
from raytag.cluster.spectral import random_grouping, spectral_grouping


def planted_k(n: int) -> int:
    return int(min(50, max(3, n // 10)))


def bench_size(n: int, args) -> list[dict]:
    k = planted_k(n)
    T, planted = planted_affinity(n, k, noise=args.noise, gap=1.0, seed=args.seed)
    rows: list[dict] = []

    def record(method, solver, seconds, groups, **extra):
        overlap = sum(len(g) for g in groups) != n
        ari = None if overlap else adjusted_rand_index(planted, groups_to_labels(groups, n))
        row = {"n": n, "k": k, "method": method, "solver": solver, "seconds": round(seconds, 4),
               "objective": grouping_objective(T, groups), "groups": len(groups), "ari": ari, **extra}
        rows.append(row)
        print(json.dumps(row), flush=True)

    planted_groups = [np.flatnonzero(planted == g).tolist() for g in range(k)]
    record("planted", "truth", 0.0, planted_groups)
    if n <= args.sdp_max_n or args.force_sdp:
        solvers = ["SCS"] + (["CLARABEL"] if n <= args.clarabel_max_n else [])
        for solver in solvers:
            solution = solve_sdp(T, k, solver=solver)
            start = time.perf_counter()
            seed_groups = threshold_rounding(solution.X)
            threshold_seconds = time.perf_counter() - start
            record("sdp-threshold", solver, solution.seconds + threshold_seconds, seed_groups,
                   status=solution.status, sdp_seconds=solution.seconds)
            start = time.perf_counter()
            labels, _ = refined_rounding(T, solution.X, k, seed=args.seed)
            refined_seconds = time.perf_counter() - start
            record("sdp-refined", solver, solution.seconds + refined_seconds,
                   [np.flatnonzero(labels == g).tolist() for g in range(k)],
                   status=solution.status, sdp_seconds=solution.seconds,
                   relaxed_objective=solution.relaxed_objective)
    spectral = spectral_grouping(T, k, seed=args.seed)
    record("spectral", spectral.solver, spectral.seconds, spectral.groups)
    auto = cluster_tasks(T, k, method="auto", seed=args.seed)
    auto_resolves_to = resolve_method("auto", n)
    record("auto", auto.solver, auto.seconds, auto.groups, resolved=auto_resolves_to)
    if auto_resolves_to != "scalable":
        scalable = scalable_grouping(T, k, seed=args.seed)
        record("scalable", scalable.solver, scalable.seconds, scalable.groups)
    sizes = [len(g) for g in planted_groups]
    record("random", "same sizes as planted", 0.0, random_grouping(sizes, n, seed=args.seed))
    return rows


def summarize(rows: list[dict], sizes: list[int]) -> dict:
    per_size = {}
    for n in sizes:
        at_n = [r for r in rows if r["n"] == n]
        # Only k-group partitions compete: the objective grows with the number of groups, and
        # the seed's threshold rounding returns however many groups its threshold yields.
        finished = [r for r in at_n if r["method"] not in ("planted", "random") and r["groups"] == r["k"]]
        best = max(r["objective"] for r in finished)
        auto = next(r for r in at_n if r["method"] == "auto")
        sdp = [r for r in at_n if r["method"] == "sdp-refined"]
        per_size[n] = {
            "auto_method": auto["resolved"],
            "auto_seconds": auto["seconds"],
            "auto_vs_best_objective_gap": (best - auto["objective"]) / abs(best),
            "auto_ari": auto["ari"],
            "sdp_seconds": min(r["sdp_seconds"] for r in sdp) if sdp else None,
            "best_method": max(finished, key=lambda r: r["objective"])["method"],
        }
    n_max = max(sizes)
    top = per_size[n_max]
    return {
        "n_max": n_max,
        "sdp_seconds_at_n_max": top["sdp_seconds"],
        "auto_seconds_at_n_max": top["auto_seconds"],
        "auto_vs_best_objective_gap": top["auto_vs_best_objective_gap"],
        "ari_at_n_max": top["auto_ari"],
        "max_auto_gap_any_n": max(v["auto_vs_best_objective_gap"] for v in per_size.values()),
        "per_size": per_size,
        "load_average_1min": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[30, 100, 200, 500, 2000])
    parser.add_argument("--noise", type=float, default=0.5, help="noise std; the planted within-group gap is 1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sdp-max-n", type=int, default=200, help="skip the SDP above this many tasks")
    parser.add_argument("--force-sdp", action="store_true", help="run the SDP at every size (slow: ~n^3)")
    parser.add_argument("--clarabel-max-n", type=int, default=CLARABEL_MAX_N)
    args = parser.parse_args()
    rows = [row for n in args.sizes for row in bench_size(n, args)]
    print(json.dumps(summarize(rows, sorted(args.sizes))))


if __name__ == "__main__":
    main()
