"""Connect to Ray: an embedded local Ray by default, a cluster when an address is given."""

from __future__ import annotations

import os

# Keep an embedded Ray on loopback: without this Ray binds the machine's external address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # noqa: E402

from raytag.config import RayConfig  # noqa: E402


def ensure_ray(config: RayConfig, address: str | None = None) -> None:
    """Start or join Ray once per process; an already-initialized session is reused."""
    if ray.is_initialized():
        return
    target = address or config.address or os.environ.get("RAY_ADDRESS")
    if target and target != "local":
        ray.init(address=target)
        return
    ray.init(
        address="local",
        num_cpus=config.num_cpus,
        include_dashboard=config.include_dashboard,
        dashboard_host=config.dashboard_host,
        log_to_driver=True,  # per-epoch progress lines from Ray Train workers
        configure_logging=False,
    )


def use_gpu(setting: str) -> bool:
    """Resolve a ``use_gpu`` config value ("auto" means: when the cluster has GPUs)."""
    if setting == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return setting == "true"


def cpus_per_worker(num_workers: int) -> int:
    """Split the cluster's CPUs evenly among workers (at least one each), but never more than the
    largest node has: a worker runs on one node, and a bigger request could never be scheduled."""
    even_share = int(ray.cluster_resources().get("CPU", 1)) // max(1, num_workers)
    largest_node = max((int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node["Alive"]), default=1)
    return max(1, min(even_share, largest_node))
