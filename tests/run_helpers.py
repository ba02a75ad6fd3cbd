"""Helpers shared by tests (importable as ``run_helpers``; a module named ``conftest`` is
ambiguous because several folders have one)."""

from __future__ import annotations

import shutil


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
