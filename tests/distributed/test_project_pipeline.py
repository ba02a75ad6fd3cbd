"""The projection stage on Ray Data: rerun is a no-op, a killed actor changes nothing,
a changed config recomputes the stale store. Reference = an uninterrupted run with the same shard size
(the shard size fixes the GEMM shapes, hence the float rounding)."""

import logging
import os
import re
import signal
import shutil
import threading
import time

import numpy as np
import pytest
import ray
from run_helpers import copy_run

from raytag.distributed import project as project_module
from raytag.distributed.project import project_gradients
from raytag.grads import GradientStore
from raytag.pipeline import stage_hash

SHARD = 10  # many small shards, so the projection takes long enough to kill an actor mid-run


def shard_files(run) -> dict:
    """Every file under the store's shards folder -> its mtime (ns)."""
    root = run.grad_store / "shards"
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def fresh_store(tiny_run, tmp_path, name):
    run, config = tiny_run
    copy = copy_run(run, tmp_path / name)
    shutil.rmtree(copy.grad_store)
    return copy, config


def project(run, config, **kwargs):
    return project_gradients(run, config, stage_hash(config, "project"), shard_size=SHARD, **kwargs)


def assert_same_store(got: GradientStore, expected: GradientStore):
    a, b = got.read(), expected.read()
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def reference(tiny_run, tmp_path_factory):
    run, config = fresh_store(tiny_run, tmp_path_factory.mktemp("reference"), "r")
    return run, project(run, config)


def test_rerun_computes_nothing_and_store_is_unchanged(tiny_run, reference, monkeypatch):
    run, store = reference
    _, config = tiny_run
    before = shard_files(run)
    expected = {name: np.array(value) for name, value in store.read().items()}
    assert len(store.complete_shards()) > 20

    def no_dataset(*args, **kwargs):
        raise AssertionError("the rerun built a Ray dataset although every shard was complete")

    monkeypatch.setattr(project_module.ray.data, "from_items", no_dataset)
    again = project(run, config)
    assert shard_files(run) == before
    got = again.read()
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert np.array_equal(got[name], expected[name]), name


def kill_first_projector_after(store_root, min_shards: int, killed: dict, stop: threading.Event):
    """Watch the store; once ``min_shards`` shards are complete, SIGKILL the process of a live
    ShardProjector actor (Ray Data's map worker) and record its pid and the progress then."""
    job = ray.get_runtime_context().get_job_id()
    markers = store_root / "shards"
    while not stop.is_set():
        done = len(list(markers.glob("*.done.json"))) if markers.exists() else 0
        if done >= min_shards:
            workers = [a for a in ray._private.state.actors().values()
                       if a["State"] == "ALIVE" and a["JobID"] == job and "MapWorker" in a["ActorClassName"]]
            if workers:
                killed["done_at_kill"] = done
                killed["pid"] = workers[0]["Pid"]
                os.kill(killed["pid"], signal.SIGKILL)
                return
        time.sleep(0.005)


def test_killed_actor_mid_run_gives_the_uninterrupted_store(tiny_run, reference, tmp_path):
    _, expected = reference
    run, config = fresh_store(tiny_run, tmp_path, "killed")
    killed, stop = {}, threading.Event()
    watcher = threading.Thread(target=kill_first_projector_after, args=(run.grad_store, 3, killed, stop))
    watcher.start()
    try:
        store = project(run, config)
    finally:
        stop.set()
        watcher.join()
    total = len(expected.complete_shards())
    assert "pid" in killed, "the projection finished before an actor could be killed"
    assert killed["done_at_kill"] < total, "the actor was killed after the last shard"
    assert store.complete_shards() == list(range(total))
    assert_same_store(store, expected)


def test_changed_config_recomputes_the_stale_store_naming_the_field(tiny_run, reference, tmp_path, caplog):
    _, config = tiny_run
    run = copy_run(reference[0], tmp_path / "changed")
    changed = config.model_copy(update={"project": config.project.model_copy(update={"d": config.project.d + 4})})
    with caplog.at_level(logging.WARNING, logger="raytag"):
        store = project(run, changed)
    assert re.search(r"stale gradient store .*different .*\bd\b", caplog.text)
    assert store.d == config.project.d + 4 and store.read()["grads"].shape[1] == config.project.d + 4
