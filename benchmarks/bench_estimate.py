"""Subsets per second of each estimator, and how close one Newton step is to the converged fit.

A synthetic store of the DBLP demo's shape (100 tasks, ~1,000 training + ~1,000 validation
pairs per task; ``raytag.estimate.synthetic``), subsets of size 10, at d = 200 and d = 1000.
Each estimator predicts every task's validation loss for as many subsets as fit in a time
budget. The last line is one JSON object: the headline keys are the issue's targets —
one-step, converged Newton and their agreement at the smallest d, linearized fine-tuning at
the largest d — and ``per_d`` holds everything measured at each d.

``subsets_per_s_*`` count CPU seconds of this (one-thread) process: the rate of one core of
its own, which a shared machine's wall clock cannot show (``subsets_per_wall_s_*`` are kept,
with the load average). Subsets are independent, so k actors on k cores run k times as many.

    python benchmarks/bench_estimate.py                      # full shape, 1 thread
    python benchmarks/bench_estimate.py --pairs 200 --dims 64 --budget 2   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from raytag.estimate.estimators import LinearizedFineTune, NewtonLogistic, OneStepNewton
from raytag.estimate.subsets import membership_matrix, sample_subsets
from raytag.estimate.synthetic import synthetic_gradient_data


def measure(estimator, subsets: np.ndarray, budget_s: float, batch_size: int):
    """Predict batch after batch until the time budget is spent.

    Returns (subsets per wall second, subsets per CPU second of this process, losses). On a
    shared machine the wall-clock rate mostly measures the neighbours; with one thread the
    CPU-time rate is what the same code does on a core of its own.
    """
    out, done, wall, cpu = [], 0, 0.0, 0.0
    while done < subsets.shape[0] and (wall < budget_s or not out):
        chunk = subsets[done:done + batch_size]
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        out.append(estimator.predict(chunk, batch_size=batch_size))
        wall += time.perf_counter() - start_wall
        cpu += time.process_time() - start_cpu
        done += chunk.shape[0]
    return done / wall, done / cpu, np.concatenate(out)


def timed_fit(estimator, data):
    start = time.perf_counter()
    estimator.fit(data)
    return time.perf_counter() - start


def bench_one_d(args, d: int) -> dict:
    data = synthetic_gradient_data(n_tasks=args.n_tasks, n_train=args.pairs, n_val=args.pairs, d=d,
                                   signal=args.signal, seed=args.seed)
    subsets = sample_subsets(args.n_tasks, m=args.max_subsets, size=args.subset_size, seed=args.seed)
    estimators = {
        "onestep": OneStepNewton(l2=args.l2),
        "full": NewtonLogistic(l2=args.l2),
        "linearized": LinearizedFineTune(lr=args.lr, steps=args.steps),
        "linearized_bf16": LinearizedFineTune(lr=args.lr, steps=args.steps, matmul_dtype="bfloat16"),
    }
    fit_s = {name: timed_fit(est, data) for name, est in estimators.items()}
    batch = {"onestep": estimators["onestep"].default_batch_size(), "full": 8,
             "linearized": args.linearized_batch, "linearized_bf16": args.linearized_batch}
    rate, cpu_rate, loss = {}, {}, {}
    for name, est in estimators.items():
        rate[name], cpu_rate[name], loss[name] = measure(est, subsets, args.budget, batch[name])
    # evaluating only each subset's own tasks (all the affinity needs), same fits
    for name in ("onestep", "linearized_bf16"):
        start = time.process_time()
        estimators[name].predict(subsets[:batch[name]], members_only=True)
        cpu_rate[f"{name}_members_only"] = batch[name] / (time.process_time() - start)
    base = estimators["onestep"].base_val_loss_[None, :]
    k = loss["full"].shape[0]
    change_full = loss["full"] - base
    j = min(loss["linearized"].shape[0], loss["linearized_bf16"].shape[0])
    change_lin = loss["linearized"][:j] - base
    in_subset = membership_matrix(subsets[:max(k, j)], args.n_tasks)
    return {
        "d": d,
        **{f"subsets_per_s_{name}": r for name, r in cpu_rate.items()},
        **{f"subsets_per_wall_s_{name}": r for name, r in rate.items()},
        "subsets_measured": {name: v.shape[0] for name, v in loss.items()},
        "fit_s": fit_s,
        "onestep_vs_full_max_rel_diff": float(np.max(np.abs(loss["onestep"][:k] - loss["full"])
                                                     / loss["full"])),
        # the same on the loss *change*, which is what ranks subsets (relative to its mean size)
        "onestep_vs_full_delta_rel_diff": float(np.mean(np.abs(loss["onestep"][:k] - loss["full"]))
                                                / np.mean(np.abs(change_full))),
        "linearized_bf16_vs_fp32_delta_rel_diff": float(
            np.mean(np.abs(loss["linearized_bf16"][:j] - loss["linearized"][:j]))
            / np.mean(np.abs(change_lin))),
        "mean_abs_change_in_subset_full": float(np.mean(np.abs(change_full[in_subset[:k]]))),
        "mean_abs_change_in_subset_linearized": float(np.mean(np.abs(change_lin[in_subset[:j]]))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-tasks", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=1000, help="training (and validation) pairs per task")
    parser.add_argument("--dims", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--subset-size", type=int, default=10)
    parser.add_argument("--max-subsets", type=int, default=4000)
    parser.add_argument("--budget", type=float, default=5.0, help="seconds of prediction per estimator and d")
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--signal", type=float, default=0.5)
    parser.add_argument("--linearized-batch", type=int, default=1024,
                        help="subsets per batch (larger batches make larger, faster matrix products)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 unless the cores are free: threads spin-wait badly)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    per_d = {}
    for d in args.dims:
        per_d[str(d)] = bench_one_d(args, d)
        print(json.dumps(per_d[str(d)]), flush=True)
    small, large = per_d[str(min(args.dims))], per_d[str(max(args.dims))]
    print(json.dumps({
        "subsets_per_s_onestep": small["subsets_per_s_onestep"],
        "subsets_per_s_full": small["subsets_per_s_full"],
        "onestep_vs_full_max_rel_diff": small["onestep_vs_full_max_rel_diff"],
        "subsets_per_s_linearized": large["subsets_per_s_linearized"],
        "subsets_per_s_linearized_bf16": large["subsets_per_s_linearized_bf16"],
        "subsets_per_s_onestep_members_only": small["subsets_per_s_onestep_members_only"],
        "d": small["d"], "d_linearized": large["d"],
        "subset_size": args.subset_size, "n_tasks": args.n_tasks, "pairs_per_task_split": args.pairs,
        "rate_basis": f"subsets per CPU second, {args.threads} thread(s)",
        "load_average_1min": os.getloadavg()[0],
        "threads": args.threads, "lr": args.lr, "steps": args.steps, "l2": args.l2,
        "per_d": per_d,
    }))


if __name__ == "__main__":
    main()
