"""Join a loopback Ray head as one more node and block until killed.

Usage: python benchmarks/loopback_node.py GCS_ADDRESS NUM_CPUS TEMP_DIR

`ray start --address 127.0.0.1:PORT --node-ip-address=127.0.0.1` cannot do this on a
loopback-only machine: with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 it refuses to start a
worker node, and without it Ray replaces 127.0.0.1 (in both flags) by the machine's external
address. This starts the node the way ``ray.cluster_utils.Cluster.add_node`` does, bound to
127.0.0.1, and prints the pids of its processes: SIGKILL to all of them (raylet first) and
to this process is a node failure.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from ray._private.node import Node  # noqa: E402
from ray._private.parameter import RayParams  # noqa: E402


def main() -> None:
    gcs_address, num_cpus, temp_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    params = RayParams(gcs_address=gcs_address, node_ip_address="127.0.0.1", num_cpus=num_cpus, num_gpus=0,
                       temp_dir=temp_dir, object_store_memory=512 * 1024**2, min_worker_port=0, max_worker_port=0,
                       metrics_export_port=0, dashboard_agent_listen_port=0)
    node = Node(params, head=False, shutdown_at_exit=False, spawn_reaper=False)
    raylet = node.all_processes["raylet"][0].process
    others = [info.process.pid for name, infos in node.all_processes.items() if name != "raylet" for info in infos]
    print(f"node {node.node_id}: raylet pid {raylet.pid}, other pids {' '.join(map(str, others))}", flush=True)
    while raylet.poll() is None:
        time.sleep(1)


if __name__ == "__main__":
    main()
