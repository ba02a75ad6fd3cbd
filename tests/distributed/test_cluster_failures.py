"""Failures on a real multi-node Ray: a worker node dies mid-projection and mid-estimation,
a driver dies mid-stage. Every run must end with outputs identical to an uninterrupted run's.

The two-node cluster (``ray.cluster_utils.Cluster``: head + worker, both on 127.0.0.1) runs
in a subprocess — this file run as a script — because the test session already holds an
embedded Ray (``ray_session``) and a process can join only one Ray at a time.
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

# Small shards / batches and two actors, so each stage takes long enough to be hit mid-run.
CLUSTER_OVERRIDES = ["project.batch_size=10", "project.num_actors=2", "estimate.num_subsets=300",
                     "estimate.batch_size=2", "estimate.num_actors=2"]
DRIVER_OVERRIDES = ["estimate.num_subsets=400", "estimate.batch_size=2", "estimate.num_actors=1"]
KILL_AFTER = 3  # shards / batches finished before the kill


def ray_free_env() -> dict:
    """The environment for a child that must start or join its own Ray (not the test session's)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    return env


def without_projection(tiny_run, folder: Path):
    """A copy of the tiny run without gradients or estimates (what the cluster test recomputes)."""
    from conftest import copy_run

    run = copy_run(tiny_run[0], folder)
    for stage in ("project", "estimate"):
        run.marker(stage).unlink()
    for stale in (run.grad_store, run.estimate_dir):
        shutil.rmtree(stale)
    return run


@pytest.mark.cluster
@pytest.mark.slow
def test_worker_node_killed_during_projection_and_estimation(tiny_run, tmp_path):
    from raytag.grads import GradientStore

    reference = without_projection(tiny_run, tmp_path / "reference")
    killed = without_projection(tiny_run, tmp_path / "killed")
    result = subprocess.run([sys.executable, __file__, str(reference.root), str(killed.root)],
                            env=ray_free_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    for stage, unit_total in (("project", "shards"), ("estimate", "batches")):
        kill = report[stage]
        assert kill["killed"], f"{stage}: no actor ran on the worker node, so nothing was killed: {kill}"
        assert 0 < kill["done_at_kill"] < kill[unit_total], f"{stage}: not killed mid-run: {kill}"
        assert kill["worker_actors_at_kill"] >= 1

    expected, got = GradientStore(reference.grad_store).read(), GradientStore(killed.grad_store).read()
    assert len(got["grads"]) == len(expected["grads"]) == report["project"]["pairs"]
    for name in ("grads", "base_logits", "pair_index", "task", "split", "label", "weight"):
        assert np.array_equal(got[name], expected[name]), name
    for name in ("subsets.npy", "losses.npy", "base_losses.npy"):
        assert np.array_equal(np.load(killed.estimate_dir / name), np.load(reference.estimate_dir / name)), name


@pytest.mark.cluster
@pytest.mark.slow
def test_driver_killed_mid_estimate_resumes_by_rerunning_the_command(tiny_run, tmp_path):
    from conftest import copy_run

    from raytag.config import load_config
    from raytag.pipeline import run_stage

    run, reference = copy_run(tiny_run[0], tmp_path / "driver"), copy_run(tiny_run[0], tmp_path / "reference")
    config = load_config(reference.config_yaml, DRIVER_OVERRIDES)  # changes estimate only: it reruns
    for stage in ("estimate", "affinity"):  # the uninterrupted reference, in this process's Ray
        assert run_stage(reference, config, stage)

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
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the embedded Ray it started
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    survivors = {p.name: p.stat().st_mtime_ns for p in batches.glob("batch_*.npy")}
    total = -(-config.estimate.num_subsets // config.estimate.batch_size)
    assert KILL_AFTER <= len(survivors) < total, f"{len(survivors)} of {total} batches before the kill"
    assert not run.marker("estimate").is_file()

    for stage in ("estimate", "affinity"):
        rerun = subprocess.run([*command[:3], stage, *command[4:]], env=ray_free_env(), capture_output=True,
                               text=True, timeout=180)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {name: (batches / name).stat().st_mtime_ns for name in survivors} == survivors  # kept, not redone
    assert np.array_equal(np.load(run.estimate_dir / "losses.npy"), np.load(reference.estimate_dir / "losses.npy"))
    assert np.array_equal(np.load(run.affinity), np.load(reference.affinity))


# --------------------------------------------------------------------------- the cluster scenario


def _kill_worker_when(cluster, worker, progress_dir: Path, pattern: str, actor_class: str, record: dict,
                      stop: threading.Event) -> None:
    """Once ``KILL_AFTER`` files match ``pattern`` and an ``actor_class`` actor lives on the worker
    node, kill that node's processes (no graceful shutdown) and record what was running there."""
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


def cluster_scenario(reference_dir: str, killed_dir: str) -> dict:
    """Reference run on head + worker; then the same stages with the worker killed mid-stage
    (projection finishes on the head alone; estimation gets a fresh worker, which is killed too)."""
    import ray
    from ray.cluster_utils import Cluster

    from raytag.config import load_config
    from raytag.data.pairs import Pairs
    from raytag.pipeline import run_stage
    from raytag.rundir import RunDir

    temp_dir = tempfile.mkdtemp(prefix="rtc", dir="/tmp")  # Ray's socket paths must stay short
    node = {"node_ip_address": "127.0.0.1", "num_cpus": 2, "object_store_memory": 100 * 1024**2}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "temp_dir": temp_dir, "include_dashboard": False})
    try:
        worker = cluster.add_node(**node)
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        reference, killed = RunDir(reference_dir), RunDir(killed_dir)
        config = load_config(reference.config_yaml, CLUSTER_OVERRIDES)
        for stage in ("project", "estimate"):
            run_stage(reference, config, stage)

        project = _run_with_worker_kill(cluster, worker, killed, config, "project", killed.grad_store / "shards",
                                        "*.done.json", "MapWorker")
        pairs = len(Pairs.load(killed.pairs))
        project.update(pairs=pairs, shards=-(-pairs // config.project.batch_size))
        worker = cluster.add_node(**node)  # the autoscaler's replacement
        estimate = _run_with_worker_kill(cluster, worker, killed, config, "estimate", killed.estimate_dir / "batches",
                                         "batch_*.npy", "EstimatorWorker")
        estimate["batches"] = -(-config.estimate.num_subsets // config.estimate.batch_size)
        return {"project": project, "estimate": estimate}
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(cluster_scenario(sys.argv[1], sys.argv[2])))
