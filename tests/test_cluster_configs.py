"""Cluster configs and job files: parse every YAML and check the fields raytag relies on.

Launcher configs are validated against the schema shipped with the installed Ray, the
runtime_env against Ray's own RuntimeEnv parser, and submit.sh by running it with a stub
`ray` that records the command it would submit.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_CONFIGS = REPO / "cluster_configs"
JOBS = REPO / "jobs"
RAY_VERSION = ray.__version__
RAY_MAJOR_MINOR = ".".join(RAY_VERSION.split(".")[:2])
GPU_MACHINE = re.compile(r"^(g\d|p\d)[a-z0-9]*\.|^(g2|a2|a3|a4)-")  # AWS g5.*, p4d.*; GCP g2-*, a2-*

YAML_FILES = sorted([*CLUSTER_CONFIGS.glob("*.yaml"), *CLUSTER_CONFIGS.glob("*.yml"), *JOBS.glob("*.yaml"), *JOBS.glob("*.yml")])


def _docs(path: Path) -> list:
    with open(path) as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def _by_kind(kind: str) -> list[tuple[Path, dict]]:
    return [(path, doc) for path in YAML_FILES for doc in _docs(path) if isinstance(doc, dict) and doc.get("kind") == kind]


LAUNCHER_CONFIGS = [path for path in YAML_FILES if any(isinstance(d, dict) and "provider" in d for d in _docs(path))]


def test_every_yaml_parses_and_the_expected_files_exist():
    names = {path.name for path in YAML_FILES}
    assert {"aws.yaml", "gcp.yaml", "rayjob.yaml", "raycluster.yaml", "runtime_env.yaml"} <= names
    for path in YAML_FILES:
        assert _docs(path), f"{path} holds no YAML document"
    assert {p.name for p in LAUNCHER_CONFIGS} == {"aws.yaml", "gcp.yaml"}


# --------------------------------------------------------------------------- cluster launcher


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_matches_rays_schema_and_raytag_shape(path):
    config = _docs(path)[0]
    with open(Path(ray.__file__).parent / "autoscaler" / "ray-schema.json") as handle:
        jsonschema.validate(config, json.load(handle))

    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    workers = {name: spec for name, spec in node_types.items() if name != config["head_node_type"]}

    # Head: no GPU and no CPUs for tasks.
    head_machine = head["node_config"].get("InstanceType") or head["node_config"].get("machineType")
    assert not GPU_MACHINE.search(head_machine) and "guestAccelerators" not in head["node_config"]
    assert head.get("resources", {}).get("GPU", 0) == 0
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--num-cpus=0" in head_start
    # Dashboard on loopback only; users port-forward with `ray dashboard`.
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start

    # Worker groups autoscale from zero; one of them has GPUs.
    assert workers and all(spec["min_workers"] == 0 for spec in workers.values())
    gpu_groups = [
        name
        for name, spec in workers.items()
        if spec.get("resources", {}).get("GPU", 0) > 0 or GPU_MACHINE.search(spec["node_config"].get("InstanceType") or spec["node_config"]["machineType"])
    ]
    cpu_groups = [name for name in workers if name not in gpu_groups]
    assert gpu_groups and cpu_groups

    # Ray image of the installed version; raytag installed on top of it from the checkout.
    image = config["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{RAY_MAJOR_MINOR}.") and image.endswith("-gpu")
    assert image.split(":")[1].split("-")[0] == RAY_VERSION
    assert config["file_mounts"]["~/raytag"] == "."
    assert any(re.search(r"pip install (-e )?~/raytag\b", command) for command in config["setup_commands"])

    # Token authentication on every node: the mode in every Ray process, the token file mounted.
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    for command in [*config["head_start_ray_commands"], *config["worker_start_ray_commands"]]:
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token ray start" in command
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


# --------------------------------------------------------------------------- KubeRay


def _cluster_specs() -> list[tuple[str, dict]]:
    specs = [(f"{p.name}:RayCluster", doc["spec"]) for p, doc in _by_kind("RayCluster")]
    specs += [(f"{p.name}:RayJob", doc["spec"]["rayClusterSpec"]) for p, doc in _by_kind("RayJob")]
    return specs


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def _gpus(container: dict) -> int:
    resources = container.get("resources", {})
    return max(int(resources.get(part, {}).get("nvidia.com/gpu", 0)) for part in ("limits", "requests"))


def test_kuberay_manifests_exist():
    assert [p.name for p, _ in _by_kind("RayCluster")] == ["raycluster.yaml"]
    assert [p.name for p, _ in _by_kind("RayJob")] == ["rayjob.yaml"]
    for path, doc in [*_by_kind("RayCluster"), *_by_kind("RayJob")]:
        assert doc["apiVersion"] == "ray.io/v1", path


@pytest.mark.parametrize("name,spec", _cluster_specs(), ids=[name for name, _ in _cluster_specs()])
def test_kuberay_cluster_spec_shape(name, spec):
    assert spec["rayVersion"].rsplit(".", 1)[0] == RAY_MAJOR_MINOR and spec["rayVersion"] == RAY_VERSION
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"

    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"  # never a public LoadBalancer/NodePort
    assert all(_gpus(c) == 0 for c in _containers(head["template"]))

    groups = spec["workerGroupSpecs"]
    assert all(group["minReplicas"] == 0 and group.get("replicas", 0) == 0 and group["maxReplicas"] > 0 for group in groups)
    gpu_groups = [g for g in groups if any(_gpus(c) > 0 for c in _containers(g["template"]))]
    assert gpu_groups and len(gpu_groups) < len(groups)
    for group in gpu_groups:
        for container in _containers(group["template"]):
            limits = container["resources"]["limits"]
            assert int(limits["nvidia.com/gpu"]) >= 1  # Kubernetes schedules extended resources by limits

    # One image everywhere, built from the matching Ray image (cluster_configs/Dockerfile).
    images = {c["image"] for t in [head["template"], *(g["template"] for g in groups)] for c in _containers(t)}
    assert len(images) == 1 and f"ray{RAY_VERSION}" in images.pop()


def test_dockerfile_builds_raytag_on_the_matching_ray_image():
    text = (CLUSTER_CONFIGS / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(RAY_VERSION)}-py311-gpu$", text, flags=re.M)
    assert re.search(r"^COPY .* \. /app$", text, flags=re.M)
    assert re.search(r"^RUN pip install .*(-e )?/app$", text, flags=re.M)


def test_rayjob_entrypoint_runs_raytag_on_a_shared_run_dir():
    (path, job), = _by_kind("RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:4] == ["python", "-m", "raytag", "run"]
    config = argv[4]
    assert config.startswith("/app/") and (REPO / config.removeprefix("/app/")).is_file()
    run_dir = argv[argv.index("--run-dir") + 1]
    # The run dir is shared storage: mounted in the head and in every worker group.
    spec = job["spec"]["rayClusterSpec"]
    templates = [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]
    for template in templates:
        mounts = [m["mountPath"] for c in _containers(template) for m in c.get("volumeMounts", [])]
        assert any(run_dir.startswith(mount.rstrip("/") + "/") for mount in mounts), (path, mounts)
    claims = {doc["metadata"]["name"] for _, doc in _by_kind("PersistentVolumeClaim")}
    volumes = {v["persistentVolumeClaim"]["claimName"] for t in templates for v in t["spec"].get("volumes", [])}
    assert volumes and volumes <= claims


# --------------------------------------------------------------------------- local recipe


def test_local_recipe_is_loopback_only_and_stops_its_own_head():
    text = (CLUSTER_CONFIGS / "local.md").read_text()
    code = "\n".join(re.findall(r"```bash\n(.*?)```", text, flags=re.S))
    start = re.search(r"ray start --head.*?&\n", code, flags=re.S).group(0)
    for flag in ("--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--port=", "--block"):
        assert flag in start
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in code and "RAY_AUTH_MODE=token" in code
    assert "ray job submit --address http://127.0.0.1:8265" in code
    assert "--runtime-env jobs/runtime_env.yaml" in code
    assert "python -m raytag run raytag/configs/dblp_demo.yaml --run-dir /tmp/raytag-runs/dblp" in code
    assert (REPO / "raytag/configs/dblp_demo.yaml").is_file()
    assert re.search(r'kill "\$\(cat /tmp/raytag-ray-head.pid\)"', code)
    assert "ray stop" not in code


# --------------------------------------------------------------------------- jobs/


def test_runtime_env_is_accepted_by_ray_and_keeps_outputs_out():
    from ray.runtime_env import RuntimeEnv

    runtime_env = _docs(JOBS / "runtime_env.yaml")[0]
    parsed = RuntimeEnv(**runtime_env)  # raises on unknown fields or wrong types
    excludes = parsed["excludes"]
    for pattern in ("runs/", ".git", "*.npy", "*.pt"):
        assert pattern in excludes
    assert all(isinstance(value, str) for value in parsed["env_vars"].values())
    assert "working_dir" not in runtime_env  # given by --working-dir, so the same file works anywhere


@pytest.fixture
def stub_ray(tmp_path):
    """A `ray` executable that records its arguments instead of contacting a cluster."""
    record = tmp_path / "argv.json"
    stub = tmp_path / "bin" / "ray"
    stub.parent.mkdir()
    stub.write_text(f'#!/usr/bin/env python3\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, "w"))\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}"}
    return env, record


def _submit(env, *args, cwd):
    return subprocess.run(["bash", str(JOBS / "submit.sh"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=30)


def test_submit_sh_builds_the_documented_command(stub_ray, tmp_path):
    env, record = stub_ray
    env = {**env, "RAYTAG_SUBMIT_ARGS": "--no-wait"}
    result = _submit(env, "http://127.0.0.1:8265", "raytag/configs/dblp_demo.yaml", "s3://bucket/runs/dblp", "--seed", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    argv = json.loads(record.read_text())
    assert argv[:3] == ["job", "submit", "--address"] and argv[3] == "http://127.0.0.1:8265"
    options = argv[: argv.index("--")]
    assert options[options.index("--working-dir") + 1] == "."
    assert options[options.index("--runtime-env") + 1] == "jobs/runtime_env.yaml"
    assert "--no-wait" in options
    assert re.fullmatch(r"raytag-dblp-\d{8}-\d{6}", options[options.index("--submission-id") + 1])
    metadata = json.loads(options[options.index("--metadata-json") + 1])
    assert metadata == {"raytag_config": "raytag/configs/dblp_demo.yaml", "raytag_run_dir": "s3://bucket/runs/dblp"}
    entrypoint = argv[argv.index("--") + 1 :]
    assert entrypoint == ["python", "-m", "raytag", "run", "raytag/configs/dblp_demo.yaml", "--run-dir", "s3://bucket/runs/dblp", "--seed", "3"]


@pytest.mark.parametrize(
    "args,message",
    [
        ((), "Usage: jobs/submit.sh ADDRESS CONFIG RUN_DIR"),
        (("http://127.0.0.1:8265", "raytag/configs/missing.yaml", "/tmp/r"), "CONFIG 'raytag/configs/missing.yaml' is not a file"),
        (("http://127.0.0.1:8265", "raytag/configs/dblp_demo.yaml", "runs/dblp"), "RUN_DIR 'runs/dblp' must be an absolute path"),
    ],
)
def test_submit_sh_rejects_bad_arguments_before_submitting(stub_ray, tmp_path, args, message):
    env, record = stub_ray
    result = _submit(env, *args, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert not record.exists()
