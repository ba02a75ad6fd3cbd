"""Per-sample gradient projection: cost against a training step, and inner-product fidelity.

Same model and data in one process. Times, in (sample, task) gradients per second:
  (a) a multitask training step (forward + backward + Adam, masked_bce, all tasks), reported
      as training samples/s (``train_step_per_s``; each sample carries all n labels — the
      accounting of the issue's reference ratios) and samples·tasks/s
      (``train_step_sample_tasks_per_s``, with ``fast_vs_train_ratio_sample_tasks``),
  (b) the seed's method: Python loop over pairs, autograd per pair, float64 dense projection
      (few pairs, rate extrapolated),
  (c) torch.func vmap per-sample gradients + dense Rademacher projection,
  (d) the factored fast path, all tasks of each sample from one forward (``fast``) and one
      task per row (``fast_pairs``),
and the Pearson correlation between projected and exact inner products over random pairs of
per-sample gradients for the fast path, dense Gaussian / Rademacher projections and the
KFAC-informed projector of the same d. Last line: one JSON object.

    python benchmarks/bench_projection.py                      # synthetic DBLP-demo shape
    python benchmarks/bench_projection.py --features x.npy --tasks 100 --d 1000
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from raytag.grads import (DenseProjector, FactoredGradientProjector, KroneckerProjector,
                          exact_projected_gradients, fit_kfac_projector, layer_gradient_energy,
                          layer_input_means,
                          linear_layer_shapes, per_sample_logit_gradients, subspace_energy)
from raytag.models import SignMLP, masked_bce


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", help=".npy float32 [N, F] node features (default: synthetic)")
    p.add_argument("--in-dim", type=int, default=387, help="synthetic feature width ((128+1)*3)")
    p.add_argument("--nodes", type=int, default=8192, help="synthetic node count")
    p.add_argument("--hidden", default="256,128", help="hidden layer widths, comma-separated")
    p.add_argument("--tasks", type=int, default=100)
    p.add_argument("--d", type=int, default=200)
    p.add_argument("--samples", type=int, default=1024, help="samples per timed fast/train call")
    p.add_argument("--vmap-samples", type=int, default=256)
    p.add_argument("--seed-samples", type=int, default=24, help="pairs timed for the seed's loop")
    p.add_argument("--fidelity-rows", type=int, default=96,
                   help="random (sample, task) gradients; all their pairs are compared (>= 2,000)")
    p.add_argument("--kfac-fit-pairs", type=int, default=4096)
    p.add_argument("--out-rows", type=int, default=0, help="R_out rows per layer (0: d_l)")
    p.add_argument("--allocation", choices=["params", "energy"], default="energy")
    p.add_argument("--center", type=int, default=1,
                   help="1: sketch each layer's mean input direction exactly (input_means)")
    p.add_argument("--pretrain-steps", type=int, default=100, help="Adam steps before measuring (θ*)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def timed(fn, device: torch.device, repeats: int = 3) -> float:
    """Median seconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def make_data(args, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and planted labels (~3% positives per task, learnable from the features)."""
    if args.features:
        x = torch.from_numpy(np.load(args.features, mmap_mode="r")[: args.nodes].astype(np.float32))
    else:
        x = torch.randn(args.nodes, args.in_dim, generator=generator)
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    scores = x @ torch.randn(x.shape[1], args.tasks, generator=generator) / math.sqrt(x.shape[1])
    labels = (scores > torch.quantile(scores, 0.97, dim=0)).float()
    return x, labels


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    x, labels = make_data(args, generator)
    hidden = [int(h) for h in args.hidden.split(",") if h]
    torch.manual_seed(args.seed)
    model = SignMLP(x.shape[1], hidden, args.tasks).to(device)
    x, labels = x.to(device), labels.to(device)
    D = sum(p.numel() for p in model.parameters())
    n, B = args.tasks, min(args.samples, x.shape[0])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    weights = torch.ones(B, n, device=device)

    def train_step(step: int = 0):
        rows = torch.arange(step * B, (step + 1) * B, device=device) % x.shape[0]
        optimizer.zero_grad()
        masked_bce(model(x[rows]), labels[rows], weights).backward()
        optimizer.step()

    for step in range(args.pretrain_steps):               # a θ* that has seen the data
        train_step(step)
    model.eval()
    train_s = timed(train_step, device)
    model.eval()

    rng = np.random.default_rng(args.seed)
    shapes = linear_layer_shapes(model.linears)
    energy_rows = torch.as_tensor(rng.integers(0, x.shape[0], 2048), device=device)
    energy_tasks = torch.as_tensor(rng.integers(0, n, 2048), device=device)
    layer_weights = (layer_gradient_energy(model, x[energy_rows], energy_tasks)
                     if args.allocation == "energy" else None)
    input_means = (layer_input_means(model, x[energy_rows]) if args.center else None)
    kron = KroneckerProjector.random(shapes, args.d, "gaussian", seed=args.seed, layer_weights=layer_weights,
                                     out_rows=args.out_rows or None, input_means=input_means)
    fast = FactoredGradientProjector(model, kron)
    batch_rows = torch.arange(B, device=device)
    batch_tasks = torch.as_tensor(rng.integers(0, n, B), device=device)
    fast_all_s = timed(lambda: fast.project_all_tasks(x[batch_rows]), device)
    fast_pairs_s = timed(lambda: fast.project_pairs(x[batch_rows], batch_tasks), device)

    dense_rad = DenseProjector(D, args.d, "rademacher", seed=args.seed, cache_bytes=4 << 30)
    V = min(args.vmap_samples, B)
    vmap_s = timed(lambda: exact_projected_gradients(model, x[:V], batch_tasks[:V], dense_rad), device, 2)

    seed_matrix = (2.0 * np.random.default_rng(args.seed).integers(0, 2, size=(D, args.d)) - 1.0) / np.sqrt(args.d)
    S = args.seed_samples

    def seed_loop():
        out = model(x[:S])
        grads = []
        for i in range(S):
            g = torch.autograd.grad(out[i, batch_tasks[i]], list(model.parameters()), retain_graph=True)
            grads.append(torch.cat([t.reshape(-1) for t in g]).cpu().numpy())
        return np.matmul(np.array(grads), seed_matrix)
    seed_s = timed(seed_loop, device, 2)
    del seed_matrix

    # fidelity over all pairs of M random (sample, task) gradients
    M = args.fidelity_rows
    fid_rows = torch.as_tensor(rng.integers(0, x.shape[0], M), device=device)
    fid_tasks = torch.as_tensor(rng.integers(0, n, M), device=device)
    exact, _ = per_sample_logit_gradients(model, x[fid_rows], fid_tasks)
    upper = torch.triu_indices(M, M, offset=1, device=device)
    true_ip = (exact @ exact.T)[upper[0], upper[1]]

    def fidelity(projected: torch.Tensor) -> float:
        return pearson((projected @ projected.T)[upper[0], upper[1]], true_ip)

    fit_rows = torch.as_tensor(rng.integers(0, x.shape[0], args.kfac_fit_pairs), device=device)
    fit_tasks = torch.as_tensor(rng.integers(0, n, args.kfac_fit_pairs), device=device)
    kfac = fit_kfac_projector(model, x[fit_rows], fit_tasks, args.d)
    dense_gauss = DenseProjector(D, args.d, "gaussian", seed=args.seed + 1, cache_bytes=4 << 30)
    fast_proj = fast.project_pairs(x[fid_rows], fid_tasks).grads
    results = {
        # a training sample carries all n task labels; the reference ratios (seed loop
        # ~1,700x, vmap+dense ~260x) count training in samples/s, so that is the baseline here
        "train_step_per_s": B / train_s,
        "train_step_sample_tasks_per_s": B * n / train_s,
        "seed_loop_per_s": S / seed_s,
        "vmap_dense_per_s": V / vmap_s,
        "fast_per_s": B * n / fast_all_s,
        "fast_pairs_per_s": B / fast_pairs_s,
    }
    results.update({
        "fast_vs_train_ratio": results["train_step_per_s"] / results["fast_per_s"],
        "seed_loop_vs_train_ratio": results["train_step_per_s"] / results["seed_loop_per_s"],
        "vmap_dense_vs_train_ratio": results["train_step_per_s"] / results["vmap_dense_per_s"],
        "fast_pairs_vs_train_ratio": results["train_step_per_s"] / results["fast_pairs_per_s"],
        "fast_vs_train_ratio_sample_tasks": results["train_step_sample_tasks_per_s"] / results["fast_per_s"],
        "fidelity_fast": fidelity(fast_proj),
        "fidelity_dense_gaussian": fidelity(dense_gauss.project(exact)),
        "fidelity_dense_rademacher": fidelity(dense_rad.project(exact)),
        "fidelity_kfac": fidelity(FactoredGradientProjector(model, kfac).project_pairs(x[fid_rows], fid_tasks).grads),
        "fast_matches_exact_max_abs": float((fast_proj - kron.project(exact)).abs().max()),
        "d": args.d, "D": D, "tasks": n, "hidden": hidden, "in_dim": int(x.shape[1]),
        "samples": B, "fidelity_pairs": int(upper.shape[1]), "layer_dims": kron.layer_dims,
        "out_rows": args.out_rows or None, "allocation": args.allocation, "center": bool(args.center),
        "threads": args.threads, "device": str(device),
        "features": args.features or "synthetic",
    })
    if D * args.d * 8 <= 2 << 30:       # subspace energies need a D × d basis: small d only
        held = exact[: M // 2]
        results["energy_kfac"] = subspace_energy(held, kfac)
        results["energy_random_kronecker"] = subspace_energy(held, kron)
    for key, value in results.items():
        if isinstance(value, float):
            results[key] = round(value, 4) if abs(value) < 1e4 else round(value)
    for key, value in results.items():
        print(f"{key:>28}: {value}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
