"""Helpers shared by tests (importable as ``run_helpers``; a module named ``conftest`` is
ambiguous because several folders have one)."""

from __future__ import annotations

import shutil

import numpy as np
import torch


def write_labelled_graph(folder, *, num_nodes=800, num_labels=8, seed=0):
    """A small planted-community graph as an adjacency list + node-labels file (the
    `adjlist` input format), so tests exercise the same path a user's files take."""
    from pathlib import Path

    from raytag.data.synthetic import generate_planted_graph

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    edges, communities = generate_planted_graph(num_nodes, num_labels, 8.0, community_size_range=(60, 200),
                                                seed=seed)
    neighbours = {}
    for u, v in edges:
        neighbours.setdefault(int(u), []).append(int(v))
    lines = [" ".join(map(str, [node, *nbrs])) for node, nbrs in sorted(neighbours.items())]
    (folder / "graph.adj").write_text("# node neighbours...\n" + "\n".join(lines) + "\n")
    labels = {}
    for index, members in enumerate(communities):
        for node in members:
            labels.setdefault(int(node), []).append(f"label{index}")
    (folder / "labels.txt").write_text("\n".join(f"{node} {' '.join(names)}" for node, names in sorted(labels.items())) + "\n")
    return folder / "graph.adj", folder / "labels.txt"


TINY_OVERRIDES = [
    "tasks.num_tasks=8", "tasks.seeds_per_task=5", "tasks.negatives_per_split=60",
    "features.dim=16", "features.hops=1", "model.hidden_dims=[32,16]",
    "training.epochs=3", "training.batch_size=256", "project.d=24", "project.batch_size=200",
    "project.fit_samples=300", "estimate.num_subsets=40", "estimate.subset_size=3", "estimate.batch_size=10",
    "estimate.num_actors=1", "finetune.steps=10", "validate.n_validated_tasks=4", "validate.n_subsets=8",
    "validate.stochastic_subsets=1", "groups.epochs=3", "groups.seeds=1", "select.num_subsets=30", "select.budget=2",
    "cluster.k=2",
]


def copy_run(run, destination):
    """A writable copy of a shared run directory."""
    from raytag.rundir import RunDir

    shutil.copytree(run.root, destination)
    return RunDir(destination)


def independent_gd_truth(run, subset, lr, steps):
    """θ* fine-tuned on ``subset`` by torch.optim.SGD on a loss written out here from the raw
    pair arrays (mean over tasks of each task's weighted-mean BCE), then each task's weighted
    validation BCE."""
    from raytag.data.pairs import Pairs
    from raytag.models import load_model

    model = load_model(run.checkpoint)
    features = np.load(run.features)
    pairs = Pairs.load(run.pairs)
    n_tasks = model.num_tasks

    def loss_terms(split, tasks):
        keep = (pairs.split == split) & np.isin(pairs.task, tasks)
        x = torch.from_numpy(features[pairs.node[keep]])
        task = torch.from_numpy(pairs.task[keep].astype(np.int64))
        return x, task, torch.from_numpy(pairs.label[keep]), torch.from_numpy(pairs.weight[keep])

    def per_task_mean_bce(x, task, label, weight):
        logits = model(x).gather(1, task[:, None])[:, 0]
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, label, reduction="none")
        total = torch.zeros(n_tasks).index_add_(0, task, weight)
        summed = torch.zeros(n_tasks).index_add_(0, task, weight * bce)
        return summed / total, total > 0

    train = loss_terms(1, subset)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        losses, present = per_task_mean_bce(*train)
        losses[present].mean().backward()
        optimizer.step()
    with torch.no_grad():
        losses, present = per_task_mean_bce(*loss_terms(2, np.arange(n_tasks)))
    return np.where(present.numpy(), losses.double().numpy(), np.nan)
