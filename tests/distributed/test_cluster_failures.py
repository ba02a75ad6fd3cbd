"""Failures on a real multi-node Ray: a worker node dies mid-projection and mid-estimation,
a driver dies mid-stage. Every run must end with outputs identical to an uninterrupted run's.

The two-node cluster (``ray.cluster_utils.Cluster``: head + worker, both on 127.0.0.1) runs
in a subprocess — this file run as a script — because the test session already holds an
embedded Ray (``ray_session``) and a process can join only one Ray at a time.

The uninterrupted reference is computed here, in-process and without Ray, on the run's own
inputs: the same shards / batches in order on one thread (the actors' thread count), so
float32 round-off matches exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

# Without it Ray resolves 127.0.0.1 to the machine's external address, where nothing listens.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

# Small shards / batches and two actors, so each stage takes long enough to be hit mid-run.
CLUSTER_OVERRIDES = ["project.batch_size=20", "project.num_actors=2", "estimate.num_subsets=200",
                     "estimate.batch_size=2", "estimate.num_actors=2"]
DRIVER_OVERRIDES = ["estimate.num_subsets=300", "estimate.batch_size=2", "estimate.num_actors=1"]
KILL_AFTER = 3  # shards / batches finished before the kill


def ray_free_env() -> dict:
    """The environment for a child that must start or join its own Ray (not the test session's)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return env


def single_threaded(function):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return function()
    finally:
        torch.set_num_threads(threads)


def projected_in_process(run, shard: int) -> tuple[np.ndarray, np.ndarray]:
    """(grads, base_logits) of every pair, computed shard by shard with the store's projector."""
    import torch

    from raytag.data.pairs import Pairs
    from raytag.distributed.project import PROJECTOR_DIR
    from raytag.grads import GradientStore, make_pair_projector, projector_from_spec
    from raytag.models import load_model

    spec = GradientStore(run.grad_store).manifest["projector"]
    project = make_pair_projector(load_model(run.checkpoint), projector_from_spec(spec, run.grad_store / PROJECTOR_DIR))
    pairs, features = Pairs.load(run.pairs), np.load(run.features)

    def compute():
        outputs = [project(torch.from_numpy(features[pairs.node[start:start + shard]]),
                           torch.from_numpy(pairs.task[start:start + shard].astype(np.int64)))
                   for start in range(0, len(pairs), shard)]
        return (np.concatenate([out.grads.float().numpy() for out in outputs]),
                np.concatenate([out.logits.float().numpy() for out in outputs]))

    return single_threaded(compute)


def estimated_in_process(run, config) -> tuple[np.ndarray, np.ndarray]:
    """(subsets, predicted losses) of the estimate stage, in one process, batch by batch: each
    subset's own tasks, shifted by the run's anchor offsets (real fine-tunes, not redone here)."""
    from raytag.estimate.subsets import sample_subsets
    from raytag.pipeline import load_gradient_data, make_estimator

    data = load_gradient_data(run)
    estimate = config.estimate
    subsets = sample_subsets(data.n_tasks, m=estimate.num_subsets, size=min(estimate.subset_size, data.n_tasks),
                             seed=estimate.seed)
    estimator = single_threaded(lambda: make_estimator(config).fit(data))
    losses = single_threaded(lambda: estimator.predict(subsets, batch_size=estimate.batch_size, members_only=True))
    offsets = np.asarray(json.loads((run.estimate_dir / "anchors.json").read_text())["offsets"])
    return subsets, losses + offsets[None, :]


def without_projection(tiny_run, folder: Path):
    """A copy of the tiny run without gradients or estimates (what the cluster test recomputes)."""
    from run_helpers import copy_run

    run = copy_run(tiny_run[0], folder)
    for stage in ("project", "estimate"):
        run.marker(stage).unlink()
    for stale in (run.grad_store, run.estimate_dir):
        shutil.rmtree(stale)
    return run


@pytest.mark.cluster
@pytest.mark.slow
def test_worker_node_killed_during_projection_and_estimation(tiny_run, tmp_path):
    from raytag.config import load_config
    from raytag.grads import GradientStore

    run = without_projection(tiny_run, tmp_path / "run")
    result = subprocess.run([sys.executable, __file__, str(run.root)], env=ray_free_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for stage, total in (("project", "shards"), ("estimate", "batches")):
        kill = report[stage]
        assert kill["killed"], f"{stage}: no actor ran on the worker node, so nothing was killed: {kill}"
        assert KILL_AFTER <= kill["done_at_kill"] < kill[total], f"{stage}: not killed mid-run: {kill}"

    config = load_config(run.config_yaml, CLUSTER_OVERRIDES)
    store = GradientStore(run.grad_store)
    assert store.complete_shards() == list(range(report["project"]["shards"]))
    got = store.read()
    grads, logits = projected_in_process(run, config.project.batch_size)
    assert np.array_equal(got["grads"], grads) and np.array_equal(got["base_logits"], logits)
    assert np.array_equal(got["pair_index"], np.arange(len(grads)))
    subsets, losses = estimated_in_process(run, config)
    assert np.array_equal(np.load(run.estimate_dir / "subsets.npy"), subsets)
    assert np.array_equal(np.load(run.estimate_dir / "losses.npy"), losses, equal_nan=True)  # NaN: non-members


@pytest.mark.cluster
@pytest.mark.slow
def test_driver_killed_mid_estimate_resumes_by_rerunning_the_command(tiny_run, tmp_path):
    from run_helpers import copy_run

    from raytag.config import load_config
    from raytag.estimate.affinity import affinity_matrix
    from raytag.pipeline import stage_hash

    run = copy_run(tiny_run[0], tmp_path / "run")
    shutil.rmtree(run.estimate_dir)  # the fixture's batches must not count as this run's progress
    config = load_config(run.config_yaml, DRIVER_OVERRIDES)  # changes the estimate section only: it reruns
    assert config.affinity.method == "mean"
    command = [sys.executable, "-m", "raytag", "estimate", "--run-dir", str(run.root)]
    for override in DRIVER_OVERRIDES:
        command += ["--set", override]
    batches = run.estimate_dir / "batches"
    driver = subprocess.Popen(command, env=ray_free_env(), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(batches.glob("batch_*.npy"))) < KILL_AFTER:
            assert driver.poll() is None, f"the driver ended before it could be killed: {driver.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no estimate batches appeared within 120 s"
            time.sleep(0.01)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the embedded Ray it started
        driver.wait()
    survivors = {p.name: p.stat().st_mtime_ns for p in batches.glob("batch_*.npy")}
    total = -(-config.estimate.num_subsets // config.estimate.batch_size)
    assert KILL_AFTER <= len(survivors) < total, f"{len(survivors)} of {total} batches before the kill"
    assert not run.is_done("estimate", stage_hash(config, "estimate"))

    for stage in ("estimate", "affinity"):  # the same command again, then the next stage
        rerun = subprocess.run([*command[:3], stage, *command[4:]], env=ray_free_env(), capture_output=True,
                               text=True, timeout=180)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {name: (batches / name).stat().st_mtime_ns for name in survivors} == survivors  # kept, not redone
    subsets, losses = estimated_in_process(run, config)
    assert np.array_equal(np.load(run.estimate_dir / "losses.npy"), losses, equal_nan=True)  # NaN: non-members
    assert np.array_equal(np.load(run.affinity), affinity_matrix(subsets, losses, losses.shape[1]))


# --------------------------------------------------------------------------- the cluster scenario


def _kill_worker_when(cluster, worker, progress_dir: Path, pattern: str, actor_class: str, record: dict,
                      stop: threading.Event) -> None:
    """Once ``KILL_AFTER`` files match ``pattern`` and an ``actor_class`` actor lives on the worker
    node, kill that node's processes (no graceful shutdown) and record the progress then."""
    import ray

    while not stop.is_set():
        done = len(list(progress_dir.glob(pattern))) if progress_dir.exists() else 0
        if done >= KILL_AFTER:
            on_worker = [a for a in ray._private.state.actors().values()
                         if a["State"] == "ALIVE" and actor_class in a["ActorClassName"]
                         and a["Address"]["NodeID"] == worker.node_id]
            if on_worker:
                record.update(killed=True, done_at_kill=done, worker_actors_at_kill=len(on_worker))
                cluster.remove_node(worker, allow_graceful=False)
                return
        time.sleep(0.005)


def _run_with_worker_kill(cluster, worker, run, config, stage: str, progress_dir: Path, pattern: str,
                          actor_class: str) -> dict:
    from raytag.pipeline import run_stage

    record, stop = {"killed": False}, threading.Event()
    watcher = threading.Thread(target=_kill_worker_when,
                               args=(cluster, worker, progress_dir, pattern, actor_class, record, stop))
    watcher.start()
    try:
        run_stage(run, config, stage)
    finally:
        stop.set()
        watcher.join()
    return record


def cluster_scenario(run_dir: str) -> dict:
    """Projection on head + worker with the worker killed mid-stage (it finishes on the head);
    then estimation with a fresh worker (the autoscaler's replacement), killed mid-stage too."""
    import ray
    from ray.cluster_utils import Cluster

    from raytag.config import load_config
    from raytag.data.pairs import Pairs
    from raytag.rundir import RunDir

    temp_dir = tempfile.mkdtemp(prefix="rtc", dir="/tmp")  # Ray's socket paths must stay short
    node = {"node_ip_address": "127.0.0.1", "num_cpus": 2, "object_store_memory": 100 * 1024**2}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "temp_dir": temp_dir, "include_dashboard": False})
    try:
        worker = cluster.add_node(**node)
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        run = RunDir(run_dir)
        config = load_config(run.config_yaml, CLUSTER_OVERRIDES)
        project = _run_with_worker_kill(cluster, worker, run, config, "project", run.grad_store / "shards",
                                        "*.done.json", "MapWorker")
        project["shards"] = -(-len(Pairs.load(run.pairs)) // config.project.batch_size)
        worker = cluster.add_node(**node)
        estimate = _run_with_worker_kill(cluster, worker, run, config, "estimate", run.estimate_dir / "batches",
                                         "batch_*.npy", "EstimatorWorker")
        estimate["batches"] = -(-config.estimate.num_subsets // config.estimate.batch_size)
        return {"project": project, "estimate": estimate}
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(cluster_scenario(sys.argv[1])))
