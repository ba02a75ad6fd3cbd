"""Scale benchmark: the paper's ~21M-edge, 500-task graph, stage by stage, on this machine.

Runs raytag's own (Ray-free) building blocks in order and records each stage's wall time and
peak resident memory (``VmHWM``, reset before every stage through ``/proc/self/clear_refs``):

1. ``generate``  planted-community graph (``generate_planted_graph``), streamed to a SNAP
                 edge list + communities file in a scratch folder
2. ``load``      ``read_edge_list`` / ``read_communities`` (the ``format: snap`` path)
3. ``graph``     symmetric CSR (``Graph.from_edges``)
4. ``tasks``     the top ``--tasks`` communities, ``balanced`` regime with capped positives
                 (``build_tasks``) and the projection pairs (``build_pairs``)
5. ``features``  FastRP + log-degree + SIGN hops (``compute_node_features``)
6. ``train``     θ*: one epoch of plain-torch multitask training (``train_epoch``) on a
                 uniform sample of training rows (Ray Train adds nothing per step)
7. ``fit_projector``  the configured projector fitted on ``--fit-samples`` training pairs
8. ``project``   the fast path (``make_pair_projector``) on a uniform sample of pairs, in
                 ``--chunk``-pair batches like one projection actor: pairs per second

Every stage records wall time and this process's CPU time: on a shared, oversubscribed
machine the wall time mostly measures the other tenants, the CPU time the work.

Extrapolation: the full projection is every pair ``build_pairs`` made (all train/val
positives of every task + ``--negatives-per-split`` sampled negatives per task and split),
at the measured rate (on CPU pairs per CPU-second, so CPU core-hours = pairs / rate). GPU hours are measured when
CUDA is present; otherwise they are estimated from the FLOPs one pair costs (forward through
the trunk and head, one task's backward through the trunk, the per-layer factor
projections), counted from the model and projector shapes, at an assumed sustained
``--gpu-tflops`` (default 2 TFLOP/s: 10% of an A100's 19.5 TFLOP/s FP32 peak — small GEMMs
rarely do better). The paper spent 112 GPU hours on this graph; raytag's target is ≤ 11.

    python benchmarks/bench_scale.py                                  # full scale: 5M nodes, 500 tasks
    python benchmarks/bench_scale.py --nodes 200000 --tasks 100       # smoke test, about a minute

The full run needs ≈10 GB of RAM (TaskSet labels + splits are N × tasks bytes each, the
features N × (dim+1) × (hops+1) × 4 bytes) and some minutes. The last line of output is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from raytag.data.features import compute_node_features
from raytag.data.graph import Graph
from raytag.data.loaders import read_communities, read_edge_list
from raytag.data.pairs import build_pairs
from raytag.data.synthetic import generate_planted_graph
from raytag.data.tasks import TRAIN, TaskSet, build_tasks
from raytag.grads import KroneckerProjector, make_pair_projector
from raytag.grads.factory import build_projector, fit_sample
from raytag.models import SignMLP
from raytag.models.training import train_epoch

PAPER_GPU_HOURS = 112.0
TARGET_GPU_HOURS = 11.0
GIB = 1024**3


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def cpu_seconds() -> float:
    """This process's user + system CPU time: on a shared, oversubscribed machine wall time
    mostly measures the other tenants, CPU time measures the work."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class StageLog:
    """Wall time, CPU time and peak RSS of each stage, printed as it finishes."""

    def __init__(self):
        self.stages: dict[str, dict] = {}
        self.peak_is_per_stage = True

    @contextmanager
    def stage(self, name: str):
        self.peak_is_per_stage &= _reset_peak_rss()
        started, cpu_started = time.perf_counter(), cpu_seconds()
        yield self.stages.setdefault(name, {})
        record = self.stages[name]
        record["seconds"] = round(time.perf_counter() - started, 2)
        record["cpu_seconds"] = round(cpu_seconds() - cpu_started, 2)
        record["peak_rss_gib"] = round(_proc_status_kib("VmHWM") / 1024**2, 3)
        record["rss_after_gib"] = round(_proc_status_kib("VmRSS") / 1024**2, 3)
        details = ", ".join(f"{k}={v}" for k, v in record.items()
                            if k not in ("seconds", "cpu_seconds", "peak_rss_gib", "rss_after_gib"))
        print(f"{name:>14}: {record['seconds']:8.1f} s wall, {record['cpu_seconds']:8.1f} s CPU, "
              f"peak RSS {record['peak_rss_gib']:.2f} GiB"
              + (f"  ({details})" if details else ""), flush=True)


def training_rows(split: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """Rows that are in some task's training split (chunked: ``split == TRAIN`` on all of an
    N × tasks array at once would allocate another N × tasks bytes)."""
    return np.concatenate([np.flatnonzero((split[start:start + chunk] == TRAIN).any(axis=1)) + start
                           for start in range(0, split.shape[0], chunk)])


def pair_flops(model: SignMLP, projector) -> float:
    """Multiply-adds × 2 for one pair's projected gradient on the fast path: the forward pass
    (trunk + head), one task's backward through the trunk, and each layer's two factor
    projections plus the coordinate products."""
    shapes = [(layer.out_features, layer.in_features) for layer in model.linears]
    forward = sum(2 * o * i for o, i in shapes)
    backward = sum(2 * o * i for o, i in shapes[1:]) + 2 * shapes[-1][1]  # head row, then the trunk
    if isinstance(projector, KroneckerProjector):
        factors = sum(2 * r_out.shape[0] * r_out.shape[1] + 2 * r_in.shape[0] * r_in.shape[1]
                      for r_out, r_in in zip(projector.r_out, projector.r_in))
        return float(forward + backward + factors + projector.d)
    return float(forward + backward + 2 * projector.D * projector.d)  # dense: the full gradient times R


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    log = StageLog()
    scratch = Path(tempfile.mkdtemp(prefix="raytag-scale-", dir=args.scratch))
    try:
        with log.stage("generate") as record:
            edges_path, _ = generate_planted_graph(
                args.nodes, args.communities or args.tasks, args.avg_degree,
                community_size_range=(args.min_community, min(args.max_community, args.nodes)),
                seed=args.seed, out_dir=scratch)
            record["edge_file_gib"] = round(edges_path.stat().st_size / GIB, 3)
        with log.stage("load") as record:
            edges = read_edge_list(edges_path)
            communities = read_communities(scratch / "communities.txt")
            record["edge_lines"] = int(edges.shape[0])
        with log.stage("graph") as record:
            graph = Graph.from_edges(edges)
            del edges
            record.update(nodes=graph.num_nodes, edges=graph.num_edges)
        with log.stage("tasks") as record:
            taskset, graph = build_tasks(graph, communities, num_tasks=args.tasks, regime="balanced",
                                         negative_ratio=1.0, max_positives_per_task=args.max_positives, seed=args.seed)
            pairs = build_pairs(taskset, negatives_per_split=args.negatives_per_split, seed=args.seed,
                                balance_classes=True)
            record.update(pairs=len(pairs), train_pairs=int(np.sum(pairs.split == TRAIN)))
        with log.stage("features") as record:
            features = compute_node_features(graph.adjacency, method="fastrp", dim=args.feature_dim,
                                             hops=args.hops, seed=args.seed)
            del graph
            record["shape"] = list(features.shape)

        with log.stage("train") as record:
            rng = np.random.default_rng(args.seed)
            candidates = training_rows(taskset.split)
            rows = np.sort(rng.choice(candidates, size=min(args.train_rows, candidates.size), replace=False))
            sample = TaskSet(taskset.nodes[rows], taskset.labels[rows], taskset.split[rows], taskset.names,
                             taskset.regime)
            x = torch.from_numpy(features[rows])
            labels = torch.from_numpy(sample.labels.astype(np.float32))
            weights = torch.from_numpy(sample.training_weights(balance_classes=True))
            model = SignMLP(features.shape[1], args.hidden, taskset.num_tasks, 0.0)
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            warm_up = SignMLP(features.shape[1], args.hidden, taskset.num_tasks, 0.0)  # torch's lazy imports
            train_epoch(warm_up, torch.optim.Adam(warm_up.parameters()), x[:2], labels[:2], weights[:2], 2,
                        torch.Generator())
            started, cpu_started = time.perf_counter(), cpu_seconds()
            loss = train_epoch(model, optimizer, x, labels, weights, args.batch_size,
                               torch.Generator().manual_seed(args.seed))
            seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
            record.update(rows=int(rows.size), loss=round(loss, 4),
                          parameters=sum(p.numel() for p in model.parameters()),
                          sample_tasks_per_s=round(rows.size * taskset.num_tasks / seconds),
                          sample_tasks_per_cpu_s=round(rows.size * taskset.num_tasks / cpu))
            del x, labels, weights, sample
        model.eval()

        with log.stage("fit_projector") as record:
            fit = fit_sample(pairs.task, pairs.split, args.fit_samples, args.seed)
            projector = build_projector(args.projector, model, torch.from_numpy(features[pairs.node[fit]]),
                                        torch.from_numpy(pairs.task[fit].astype(np.int64)),
                                        torch.from_numpy(pairs.weight[fit]), args.d, args.seed)
            record.update(projector=args.projector, d=projector.d, fit_pairs=int(fit.size))

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        with log.stage("project") as record:
            size = min(args.sample_pairs, len(pairs))
            chosen = np.sort(np.random.default_rng(args.seed + 1).choice(len(pairs), size=size, replace=False))
            project = make_pair_projector(model.to(device), projector)
            started, cpu_started = time.perf_counter(), cpu_seconds()
            for start in range(0, chosen.size, args.chunk):
                batch = chosen[start:start + args.chunk]
                out = project(torch.from_numpy(features[pairs.node[batch]]).to(device),
                              torch.from_numpy(pairs.task[batch].astype(np.int64)).to(device))
                out.grads.cpu()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
            # CPU: pairs per CPU-second (this process's share of a busy machine does not count);
            # GPU: pairs per wall second (the host's CPU time is not the work).
            rate = chosen.size / (seconds if device.type == "cuda" else cpu)
            record.update(pairs=int(chosen.size), pairs_per_s=round(chosen.size / seconds, 1),
                          pairs_per_cpu_s=round(chosen.size / cpu, 1), device=device.type)

        flops = pair_flops(model, projector)
        total_pairs = len(pairs)
        projection = {
            "total_pairs": total_pairs,
            "pairs_per_node": round(total_pairs / taskset.num_nodes, 4),
            "flops_per_pair": flops,
            "measured_device": device.type,
            "measured_pairs_per_s": round(rate, 1),
            "rate_basis": "wall time" if device.type == "cuda" else f"CPU time, {args.threads} torch thread(s)",
            "measured_gflops": round(rate * flops / 1e9, 2),
        }
        if device.type == "cuda":
            projection["gpu_hours"] = total_pairs / rate / 3600
            projection["gpu_hours_basis"] = f"measured on {torch.cuda.get_device_name()}"
        else:
            projection["cpu_core_hours"] = total_pairs / rate / 3600
            projection["gpu_hours"] = total_pairs * flops / (args.gpu_tflops * 1e12) / 3600
            projection["gpu_hours_basis"] = (f"FLOP estimate: {flops:.3g} FLOPs/pair at an assumed sustained "
                                             f"{args.gpu_tflops} TFLOP/s")
        projection["paper_gpu_hours"] = PAPER_GPU_HOURS
        projection["target_gpu_hours"] = TARGET_GPU_HOURS
        projection["meets_target"] = projection["gpu_hours"] <= TARGET_GPU_HOURS
        for key in ("gpu_hours", "cpu_core_hours"):
            if key in projection:
                projection[key] = float(f"{projection[key]:.4g}")
        return {
            "benchmark": "bench_scale",
            "settings": {k: v for k, v in vars(args).items() if k != "scratch"},
            "graph": {"nodes": log.stages["graph"]["nodes"], "edges": log.stages["graph"]["edges"],
                      "tasks": taskset.num_tasks, "features": list(features.shape)},
            "stages": log.stages,
            "peak_rss_is_per_stage": log.peak_is_per_stage,
            "total_seconds": round(sum(s["seconds"] for s in log.stages.values()), 1),
            "total_cpu_seconds": round(sum(s["cpu_seconds"] for s in log.stages.values()), 1),
            "projection": projection,
            "machine": {"cpus": os.cpu_count(), "torch_threads": args.threads, "python": platform.python_version(),
                        "torch": torch.__version__,
                        "mem_total_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GIB, 1)},
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--nodes", type=int, default=5_000_000, help="graph nodes")
    parser.add_argument("--avg-degree", type=float, default=8.4, help="mean degree (5M × 8.4 / 2 = 21M edges)")
    parser.add_argument("--tasks", type=int, default=500, help="tasks (the largest communities)")
    parser.add_argument("--communities", type=int, default=None, help="planted communities (default: --tasks)")
    parser.add_argument("--min-community", type=int, default=100, help="smallest planted community")
    parser.add_argument("--max-community", type=int, default=10_000, help="largest planted community")
    parser.add_argument("--max-positives", type=int, default=1000,
                        help="tasks.max_positives_per_task (balanced regime)")
    parser.add_argument("--negatives-per-split", type=int, default=1000, help="tasks.negatives_per_split")
    parser.add_argument("--feature-dim", type=int, default=32, help="FastRP dimension (features.dim)")
    parser.add_argument("--hops", type=int, default=2, help="SIGN hops (features.hops)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 128], help="model.hidden_dims")
    parser.add_argument("--train-rows", type=int, default=200_000, help="training rows sampled for the θ* epoch")
    parser.add_argument("--batch-size", type=int, default=4096, help="training minibatch (training.batch_size)")
    parser.add_argument("--projector", default="kfac", choices=["kfac", "kronecker"], help="project.projector")
    parser.add_argument("--d", type=int, default=200, help="project.d")
    parser.add_argument("--fit-samples", type=int, default=4000, help="project.fit_samples")
    parser.add_argument("--sample-pairs", type=int, default=100_000, help="pairs projected to measure throughput")
    parser.add_argument("--chunk", type=int, default=2048, help="pairs per projection call (project.batch_size)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: other people share this machine)")
    parser.add_argument("--gpu-tflops", type=float, default=2.0, help="assumed sustained GPU TFLOP/s for the estimate")
    parser.add_argument("--scratch", default=None, help="folder for the generated edge list (default: $TMPDIR)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("nodes", "tasks", "max_positives", "negatives_per_split", "feature_dim", "train_rows", "batch_size",
                 "d", "fit_samples", "sample_pairs", "chunk", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)}: must be at least 1")
    if args.gpu_tflops <= 0 or args.avg_degree <= 0:
        parser.error("--gpu-tflops and --avg-degree must be positive")
    return args


if __name__ == "__main__":
    print(json.dumps(run(parse_args())))
