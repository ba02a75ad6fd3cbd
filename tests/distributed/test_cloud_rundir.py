"""Run directories at URIs: the sync layer on its own (file:// and a local moto S3 server), the
tiny pipeline in-process against a file:// URI, and `raytag run` against s3:// on moto.

Every remote run must leave the same results at its URI as the local ``tiny_run`` fixture
computed in place.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from raytag.rundir import RunDir
from raytag.storage import RemoteRunDir, RunDirError, working_copy_root

BUCKET = "raytag-test"
RESULTS = ["tasks.json", "prepared/taskset.npz", "prepared/pairs.npz", "features/x.npy", "model/theta_star.pt",
           "grads/consolidated-grads.npy", "grads/consolidated-base_logits.npy", "estimate/subsets.npy",
           "estimate/losses.npy", "affinity.npy"]
"""Files a remote run must reproduce byte for byte (stage markers and timings carry times)."""


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on loopback with one bucket; yields the environment that points at it."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    import pyarrow.fs as pafs

    filesystem = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                                   endpoint_override=f"{host}:{port}", scheme="http", allow_bucket_creation=True)
    filesystem.create_dir(BUCKET)
    yield env
    server.stop()


@pytest.fixture(params=["file", "s3"])
def remote_uri(request, tmp_path, monkeypatch):
    """A fresh remote run-directory URI of each kind, with the working copies under tmp_path."""
    monkeypatch.setenv("RAYTAG_CACHE_DIR", str(tmp_path / "cache"))
    if request.param == "file":
        return f"file://{tmp_path}/remote/run"
    for name, value in request.getfixturevalue("s3_server").items():
        monkeypatch.setenv(name, value)
    return f"s3://{BUCKET}/{request.node.name.replace('[', '-').rstrip(']')}/run"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def other_node(uri: str, cache: Path, monkeypatch) -> RunDir:
    """The same run directory as another node sees it: its own, empty working copy."""
    monkeypatch.setenv("RAYTAG_CACHE_DIR", str(cache))
    return RunDir(uri)


# --------------------------------------------------------------------------- the sync layer


def test_push_then_pull_on_another_node_copies_every_file_once(remote_uri, tmp_path, monkeypatch):
    run = RunDir(remote_uri)
    write(run.config_yaml, "name: x\n")
    write(run.grad_store / "shards" / "shard-000000" / "grads.npy", "arrays")
    write(run.grad_store / "shards" / "shard-000000.done.json", "{}")
    write(run.root / "ray_results" / "train" / "checkpoint", "Ray's own")  # Ray writes these at the URI itself
    write(run.root / "grads" / ".grads.npy.abc.tmp", "an atomic write in progress")
    uploaded = []
    original_upload = RemoteRunDir._upload
    monkeypatch.setattr(RemoteRunDir, "_upload", lambda self, name: (uploaded.append(name), original_upload(self, name)))
    run.push(run.root)
    assert uploaded[-1] == "grads/shards/shard-000000.done.json"  # the completion marker goes last
    assert sorted(uploaded) == ["config.yaml", "grads/shards/shard-000000.done.json", "grads/shards/shard-000000/grads.npy"]
    assert run.remote.push() == 0  # nothing changed: nothing is sent again

    node = other_node(remote_uri, tmp_path / "other-node", monkeypatch)
    assert node.root != run.root
    node.pull(node.worker_inputs()[0], node.config_yaml, node.grad_store)
    assert node.config_yaml.read_text() == "name: x\n"
    assert (node.grad_store / "shards" / "shard-000000" / "grads.npy").read_text() == "arrays"
    assert not (node.root / "ray_results").exists()
    assert node.remote.pull() == 0  # pulled files carry the remote mtime: a second pull copies nothing

    write(node.config_yaml, "name: changed on the other node\n")
    assert node.remote.push() == 1
    assert run.remote.pull() == 1 and run.config_yaml.read_text() == "name: changed on the other node\n"


def test_mirror_and_remove_propagate_deletions_both_ways(remote_uri, tmp_path, monkeypatch):
    run = RunDir(remote_uri)
    for name in ("estimate/batches/batch_00000.npy", "estimate/batches/batch_00001.npy", "affinity.npy"):
        write(run.root / name, name)
    run.push(run.root)
    (run.estimate_dir / "batches" / "batch_00001.npy").unlink()
    run.push(run.estimate_dir, mirror=True)
    assert sorted(run.remote.remote_files()) == ["affinity.npy", "estimate/batches/batch_00000.npy"]

    write(run.root / "stale.json", "left from an older run at this URI")
    run.pull(run.root, mirror=True)
    assert not (run.root / "stale.json").exists() and (run.root / "affinity.npy").is_file()

    run.remove(run.estimate_dir / "batches")
    assert list(run.remote.remote_files()) == ["affinity.npy"] and not (run.estimate_dir / "batches").exists()
    run.remove(run.root)
    assert run.is_empty() and not run.root.exists()


def test_run_dir_travels_as_its_location(remote_uri, tmp_path, monkeypatch):
    run = RunDir(remote_uri)
    assert run.location == remote_uri and run.ray_results == f"{remote_uri}/ray_results"
    assert run.location_of(run.report_html) == f"{remote_uri}/report/report.html"
    monkeypatch.setenv("RAYTAG_CACHE_DIR", str(tmp_path / "worker-node"))
    arrived = pickle.loads(pickle.dumps(run))  # what a Ray worker on another node unpickles
    assert arrived.location == remote_uri and arrived.root == working_copy_root(remote_uri)
    assert arrived.root.is_relative_to(tmp_path / "worker-node")


def test_a_query_string_stays_at_the_end_of_derived_uris():
    remote = RemoteRunDir("s3://bucket/prefix/run/?region=eu-west-1")
    assert remote.uri == "s3://bucket/prefix/run?region=eu-west-1"
    assert remote.uri_of("ray_results") == "s3://bucket/prefix/run/ray_results?region=eu-west-1"
    assert remote.path == "bucket/prefix/run"


def test_local_run_dir_is_used_in_place_and_must_be_visible(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.remote is None and run.location == str(tmp_path / "run")
    assert run.ray_results == str(tmp_path / "run" / "ray_results")
    with pytest.raises(RunDirError, match=r"run/? does not exist on node .*shared file system.*s3://"):
        run.pull(*run.worker_inputs())  # what a worker on a node without this path runs into
    run.root.mkdir()
    write(run.config_yaml, "name: x\n")
    run.pull(*run.worker_inputs())
    run.push(run.root, mirror=True)  # nothing to send anywhere
    assert [p.name for p in run.root.iterdir()] == ["config.yaml"]


def test_an_unusable_uri_names_itself_and_the_fix():
    with pytest.raises(RunDirError, match=r"'nosuch://bucket/run'.*s3://bucket/prefix.*environment"):
        RunDir("nosuch://bucket/run")


# --------------------------------------------------------------------------- whole runs


def assert_same_results(remote_uri: str, reference: RunDir, cache: Path, monkeypatch) -> None:
    """Every result file at ``remote_uri``, fetched by a node that never ran a stage, equals
    the local reference run's."""
    fresh = other_node(remote_uri, cache, monkeypatch)
    fresh.pull(fresh.root)
    for name in RESULTS:
        assert (fresh.root / name).read_bytes() == (reference.root / name).read_bytes(), name
    assert json.loads(fresh.groups_json.read_text())["groups"] == json.loads(reference.groups_json.read_text())["groups"]
    assert fresh.report_html.is_file() and (fresh.root / "stages" / "cluster.json").is_file()
    assert any(Path(fresh.root, "grads", "shards").glob("shard-*.done.json"))


@pytest.mark.slow
def test_tiny_pipeline_on_a_file_uri_matches_the_local_run(tiny_run, tmp_path, monkeypatch):
    from raytag.pipeline import RUN_STAGES, run_stage, save_config

    reference, config = tiny_run
    remote_uri = f"file://{tmp_path}/remote/run"
    # Ray's workers started before this test: they keep their working copy in the default cache,
    # apart from the driver's, exactly like workers on other nodes.
    worker_copy = working_copy_root(remote_uri) if "RAYTAG_CACHE_DIR" not in os.environ else None
    monkeypatch.setenv("RAYTAG_CACHE_DIR", str(tmp_path / "driver-node"))
    try:
        run = RunDir(remote_uri)
        save_config(run, config)
        for stage in RUN_STAGES:
            run_stage(run, config, stage)
        assert_same_results(remote_uri, reference, tmp_path / "reader-node", monkeypatch)
        assert any(Path(tmp_path, "remote", "run", "ray_results", "train").rglob("checkpoint_*"))  # Ray Train's, at the URI
        assert not (run.root / "ray_results").exists()
    finally:
        if worker_copy is not None:
            shutil.rmtree(worker_copy, ignore_errors=True)


@pytest.mark.slow
def test_raytag_run_on_s3_matches_the_local_run(tiny_run, s3_server, tmp_path, monkeypatch):
    """The CLI as a user runs it: `raytag run CONFIG --run-dir s3://...`, endpoint and credentials
    in the environment, its own embedded Ray (with the test session's CPU count)."""
    reference, _ = tiny_run
    remote_uri = f"s3://{BUCKET}/cli/run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(s3_server, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAYTAG_CACHE_DIR=str(tmp_path / "cli-node"))
    command = [sys.executable, "-m", "raytag", "run", str(reference.config_yaml), "--run-dir", remote_uri,
               "--set", "ray.num_cpus=2"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-5000:]
    assert result.stdout.strip().splitlines()[-1] == f"report: {remote_uri}/report/report.html"
    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    assert_same_results(remote_uri, reference, tmp_path / "reader-node", monkeypatch)

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)  # all stages skipped
    assert rerun.returncode == 0 and rerun.stderr.count("done already") == 6, rerun.stderr[-3000:]
