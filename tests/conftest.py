"""Shared fixtures: one embedded Ray session for the whole test run, tiny graphs on disk."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from run_helpers import TINY_OVERRIDES, write_labelled_graph

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
