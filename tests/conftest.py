"""Shared fixtures: one embedded Ray session for the whole test run, tiny graphs on disk."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def ray_session():
    """An embedded loopback Ray shared by every test that needs one (start-up is slow)."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay short
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _temp_dir=temp_dir, configure_logging=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def write_labelled_graph(folder, *, num_nodes=800, num_labels=8, seed=0):
    """A small planted-community graph as an adjacency list + node-labels file (the
    `adjlist` input format), so tests exercise the same path a user's files take."""
    from pathlib import Path

    import numpy as np

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


@pytest.fixture(scope="session")
def tiny_run(ray_session, tmp_path_factory):
    """A run directory with prepare → cluster done on a tiny labelled graph (shared, read-only:
    tests that write copy it first with ``copy_run``)."""
    from raytag.config import load_config
    from raytag.pipeline import run_stage, save_config
    from raytag.rundir import RunDir

    folder = tmp_path_factory.mktemp("tiny_graph")
    adjacency, labels = write_labelled_graph(folder)
    config = load_config(None, ["data.format=adjlist", f"data.adjacency={adjacency}", f"data.labels={labels}",
                                *TINY_OVERRIDES])
    run = RunDir(tmp_path_factory.mktemp("tiny_run"))
    save_config(run, config)
    for stage in ("prepare", "train", "project", "estimate", "affinity", "cluster"):
        run_stage(run, config, stage)
    return run, config


def copy_run(run, destination):
    """A writable copy of a shared run directory."""
    from raytag.rundir import RunDir

    shutil.copytree(run.root, destination)
    return RunDir(destination)
