"""Subsets per second of each estimator, and how close one Newton step is to the converged fit.

A synthetic store of the DBLP demo's shape (100 tasks, ~1,000 training + ~1,000 validation
pairs per task; ``raytag.estimate.synthetic``), subsets of size 10, at d = 200 and d = 1000.
Each estimator predicts every task's validation loss for as many subsets as fit in a time
budget. The last line is one JSON object: the headline keys are the issue's targets —
one-step, converged Newton and their agreement at the smallest d, linearized fine-tuning at
the largest d — and ``per_d`` holds everything measured at each d.

    python benchmarks/bench_estimate.py                      # full shape, 2 threads
    python benchmarks/bench_estimate.py --pairs 200 --dims 64 --budget 2   # quick look
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from raytag.estimate.estimators import LinearizedFineTune, NewtonLogistic, OneStepNewton
from raytag.estimate.subsets import membership_matrix, sample_subsets
from raytag.estimate.synthetic import synthetic_gradient_data


def measure(estimator, subsets: np.ndarray, budget_s: float, batch_size: int) -> tuple[float, np.ndarray]:
    """Predict batch after batch until the time budget is spent; returns (subsets/s, losses)."""
    out, done, elapsed = [], 0, 0.0
    while done < subsets.shape[0] and (elapsed < budget_s or not out):
        chunk = subsets[done:done + batch_size]
        start = time.perf_counter()
        out.append(estimator.predict(chunk, batch_size=batch_size))
        elapsed += time.perf_counter() - start
        done += chunk.shape[0]
    return done / elapsed, np.concatenate(out)


def timed_fit(estimator, data):
    start = time.perf_counter()
    estimator.fit(data)
    return time.perf_counter() - start


def bench_one_d(args, d: int) -> dict:
    data = synthetic_gradient_data(n_tasks=args.n_tasks, n_train=args.pairs, n_val=args.pairs, d=d,
                                   signal=args.signal, seed=args.seed)
    subsets = sample_subsets(args.n_tasks, m=args.max_subsets, size=args.subset_size, seed=args.seed)
    onestep, full = OneStepNewton(l2=args.l2), NewtonLogistic(l2=args.l2)
    linearized = LinearizedFineTune(lr=args.lr, steps=args.steps)
    fit_s = {name: timed_fit(est, data) for name, est in
             (("onestep", onestep), ("full", full), ("linearized", linearized))}
    rate_one, loss_one = measure(onestep, subsets, args.budget, onestep.default_batch_size())
    rate_full, loss_full = measure(full, subsets, args.budget, batch_size=8)
    rate_lin, loss_lin = measure(linearized, subsets, args.budget, linearized.default_batch_size())
    k = loss_full.shape[0]
    base = onestep.base_val_loss_[None, :]
    change_full = loss_full - base
    in_subset = membership_matrix(subsets[:k], args.n_tasks)
    return {
        "d": d,
        "subsets_per_s_onestep": rate_one,
        "subsets_per_s_full": rate_full,
        "subsets_per_s_linearized": rate_lin,
        "subsets_measured": {"onestep": loss_one.shape[0], "full": k, "linearized": loss_lin.shape[0]},
        "fit_s": fit_s,
        "onestep_vs_full_max_rel_diff": float(np.max(np.abs(loss_one[:k] - loss_full) / loss_full)),
        # the same on the loss *change*, which is what ranks subsets (relative to its mean size)
        "onestep_vs_full_delta_rel_diff": float(np.mean(np.abs(loss_one[:k] - loss_full))
                                                / np.mean(np.abs(change_full))),
        "mean_abs_change_in_subset_full": float(np.mean(np.abs(change_full[in_subset]))),
        "mean_abs_change_in_subset_linearized": float(np.mean(np.abs(
            loss_lin[:k] - base)[in_subset])),
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
    parser.add_argument("--threads", type=int, default=2)
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
        "d": small["d"], "d_linearized": large["d"],
        "subset_size": args.subset_size, "n_tasks": args.n_tasks, "pairs_per_task_split": args.pairs,
        "threads": args.threads, "lr": args.lr, "steps": args.steps, "l2": args.l2,
        "per_d": per_d,
    }))


if __name__ == "__main__":
    main()
