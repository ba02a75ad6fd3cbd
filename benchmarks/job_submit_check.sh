#!/usr/bin/env bash
# End-to-end check of the cluster path: a loopback-only local Ray head (`ray start --head`),
# a raytag run submitted with `ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml`,
# its outputs, and raytag's metrics on the head's Prometheus export port.
#
# Usage: [RAYTAG_CHECK_KILL_NODE=1] benchmarks/job_submit_check.sh [CONFIG [--set FIELD=VALUE ...]]
#   Without CONFIG a tiny labelled graph (the tests' recipe: 800 nodes, 8 tasks) and a config
#   for it are generated, so the whole run takes a minute or two. With CONFIG (e.g.
#   raytag/configs/dblp_demo.yaml) that config runs instead; extra arguments go to `raytag run`.
#   RAYTAG_CHECK_KILL_NODE=1 also joins a second node to the head (benchmarks/loopback_node.py:
#   `ray start --address` cannot bind a worker node to 127.0.0.1; RAYTAG_CHECK_WORKER_CPUS CPUs,
#   default 2) and kills it by pid (SIGKILL to its raylet, its other processes and the helper) once
#   RAYTAG_CHECK_KILL_AFTER projection shards (default 2) are done and a projection actor runs
#   on it; the job must still succeed. Pass `--set project.num_actors=2` so that projection
#   spans both nodes.
#
# Everything lives in a fresh /tmp/rtjob.* folder (Ray's temp dir, the run dir, logs). Every
# port is free-picked and bound to 127.0.0.1; token authentication is on (RAY_AUTH_MODE=token,
# token from RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH / ~/.ray/auth_token, generated if missing).
# The head is stopped by its own pid at exit — never `ray stop`, which would stop every Ray
# on the machine. Exit status 0 when the job succeeded, the run dir holds affinity.npy,
# groups.json and report/report.html, and raytag metrics were exported; the last line of
# output is one JSON object with the findings (with a second node: whether and when it was killed).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
work=$(mktemp -d /tmp/rtjob.XXXXXX)  # short: Ray's socket paths must stay under 108 bytes
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export RAY_AUTH_MODE=token
unset RAY_ADDRESS
started=$(date +%s)

free_port() {
  python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
gcs_port=$(free_port); dashboard_port=$(free_port); metrics_port=$(free_port)
agent_port=$(free_port); client_port=$(free_port)
kill_node=${RAYTAG_CHECK_KILL_NODE:-0}
if [[ -z "${RAY_AUTH_TOKEN:-}" && -z "${RAY_AUTH_TOKEN_PATH:-}" && ! -s "$HOME/.ray/auth_token" ]]; then
  ray get-auth-token --generate > /dev/null
fi

# 1. The config: the given one, or a tiny generated graph with the tests' settings.
if [[ $# -ge 1 ]]; then
  config=$1
  shift
else
  config="$work/tiny.yaml"
  python - "$work" <<'EOF'
import sys
from pathlib import Path

import yaml

sys.path.insert(0, "tests")
from run_helpers import TINY_OVERRIDES, write_labelled_graph  # the tests' tiny graph recipe

from raytag.config import load_config

work = Path(sys.argv[1])
adjacency, labels = write_labelled_graph(work / "graph")
config = load_config(None, ["name=job-submit-check", "data.format=adjlist", f"data.adjacency={adjacency}",
                            f"data.labels={labels}", *TINY_OVERRIDES])
(work / "tiny.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
EOF
fi
run_dir="$work/run"

# 2. The head: every port on loopback, the dashboard / job API included. Ray gives a new
#    raylet 30 s to register with the GCS, which a very busy machine can miss; a head that
#    dies while starting is therefore retried (3 attempts, 5 minutes each).
head_pid=""
scraper_pid=""
worker_pid=""
killer_pid=""
stop_head() {
  [[ -n "$killer_pid" ]] && kill "$killer_pid" 2> /dev/null || true
  if [[ -n "$worker_pid" ]] && kill -0 "$worker_pid" 2> /dev/null; then
    kill "$worker_pid" 2> /dev/null && wait "$worker_pid" 2> /dev/null || true
  fi
  [[ -n "$scraper_pid" ]] && kill "$scraper_pid" 2> /dev/null || true
  [[ -n "$head_pid" ]] && kill "$head_pid" 2> /dev/null && wait "$head_pid" 2> /dev/null || true
}
trap stop_head EXIT
trap 'exit 130' INT TERM  # exit through the EXIT trap

address="http://127.0.0.1:$dashboard_port"
for attempt in 1 2 3; do
  ray start --head --block \
    --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 \
    --port="$gcs_port" --dashboard-port="$dashboard_port" --metrics-export-port="$metrics_port" \
    --dashboard-agent-listen-port="$agent_port" --ray-client-server-port="$client_port" \
    --num-cpus="${RAYTAG_CHECK_CPUS:-2}" --temp-dir="$work/ray" \
    > "$work/head.log" 2>&1 &
  head_pid=$!
  deadline=$((SECONDS + 300))
  until ray job list --address "$address" > /dev/null 2>&1; do
    if ! kill -0 "$head_pid" 2> /dev/null || ((SECONDS > deadline)); then
      echo "attempt $attempt: the head did not come up: $(grep -m1 -E 'Exception|Error' "$work/head.log")" >&2
      stop_head
      head_pid=""
      break
    fi
    sleep 1
  done
  [[ -n "$head_pid" ]] && break
done
[[ -n "$head_pid" ]] || { echo "no Ray head after 3 attempts; see $work/head.log" >&2; exit 1; }
echo "head up: pid $head_pid, GCS 127.0.0.1:$gcs_port, job API $address, metrics :$metrics_port, temp $work/ray"
unauthenticated=$(curl -s -o /dev/null -w '%{http_code}' "$address/api/jobs/" || true)
echo "job API without the token answers HTTP $unauthenticated"

# 2b. Optionally a second node on the same loopback head, killed by pid during projection.
if [[ "$kill_node" == 1 ]]; then
  python benchmarks/loopback_node.py "127.0.0.1:$gcs_port" "${RAYTAG_CHECK_WORKER_CPUS:-2}" "$work/ray2" \
    > "$work/worker.log" 2>&1 &
  worker_pid=$!
  python - "$address" <<'EOF'
import sys
import time

from ray.util.state import list_nodes

deadline = time.monotonic() + 300
while sum(node.state == "ALIVE" for node in list_nodes(address=sys.argv[1])) < 2:
    if time.monotonic() > deadline:
        sys.exit("the second node did not join within 300 s")
    time.sleep(1)
EOF
  echo "second node up: pid $worker_pid (log $work/worker.log)"
  (  # kill it once projection is under way on it; the finding goes to kill.json
    python - "$address" "$run_dir" "$worker_pid" "${RAYTAG_CHECK_KILL_AFTER:-2}" "$work/worker.log" \
      > "$work/kill.json" 2> "$work/kill.log" <<'EOF'
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

from ray.util.state import list_actors, list_nodes

address, run_dir, worker_pid, kill_after = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
found = re.search(r"raylet pid (\d+), other pids ([\d ]*)", Path(sys.argv[5]).read_text())
node_pids = [int(found.group(1)), *map(int, found.group(2).split())]  # raylet first
worker_node = next(node.node_id for node in list_nodes(address=address) if not node.is_head_node)
shards = run_dir / "grads" / "shards"
while True:
    done = len(list(shards.glob("*.done.json"))) if shards.is_dir() else 0
    if done >= kill_after:
        projecting = [actor for actor in list_actors(address=address, filters=[("state", "=", "ALIVE")])
                      if "MapWorker" in actor.class_name and actor.node_id == worker_node]
        if projecting:
            for pid in (*node_pids, worker_pid):  # every process of the node: no graceful shutdown
                os.kill(pid, signal.SIGKILL)
            print(json.dumps({"killed": True, "shards_done_at_kill": done, "projection_actors_on_node": len(projecting),
                              "killed_pids": [*node_pids, worker_pid], "at": time.strftime("%H:%M:%S")}))
            break
    time.sleep(0.5)
EOF
  ) &
  killer_pid=$!
fi

# 3. Scrape raytag's metrics every 2 s while the job runs (a finished worker's series may
#    be dropped later, so keep every raytag line seen).
(
  while true; do
    { echo "# scrape"; curl -s "http://127.0.0.1:$metrics_port/metrics" | grep '^ray_raytag_'; } >> "$work/metrics.txt" || true
    sleep 2
  done
) &
scraper_pid=$!

# 4. Submit the run exactly as jobs/README.md says and wait for it.
submission_id="raytag-check-$(date +%H%M%S)"
for attempt in 1 2 3; do  # a busy head's version check can time out before anything is submitted
  ray job submit --address "$address" --submission-id "$submission_id" --no-wait \
    --working-dir . --runtime-env jobs/runtime_env.yaml \
    -- python -m raytag run "$config" --run-dir "$run_dir" "$@" && break
  ((attempt < 3)) || { echo "ray job submit failed 3 times" >&2; exit 1; }
  sleep 10
done
status=$(python - "$address" "$submission_id" <<'EOF'
import sys
import time

from ray.job_submission import JobSubmissionClient

client = JobSubmissionClient(sys.argv[1])
while not (status := client.get_job_status(sys.argv[2])).is_terminal():
    time.sleep(3)
print(status.value)
EOF
)
ray job logs --address "$address" "$submission_id" > "$work/job.log" 2>&1 || true
echo "job $submission_id: $status (log: $work/job.log)"
tail -5 "$work/job.log"
sleep 3  # one more scrape after the end
kill "$scraper_pid" 2> /dev/null || true
wait "$scraper_pid" 2> /dev/null || true
scraper_pid=""
{ echo "# scrape"; curl -s "http://127.0.0.1:$metrics_port/metrics" | grep '^ray_raytag_'; } >> "$work/metrics.txt" || true

[[ -n "$killer_pid" ]] && kill "$killer_pid" 2> /dev/null || true
killer_pid=""

# 5. Stop this head only, and look for anything of it left running.
stop_head
trap - EXIT
leftover=$(pgrep -f -- "$work/ray" | tr '\n' ' ' || true)

python - "$work" "$run_dir" "$submission_id" "$status" "$unauthenticated" "$started" "$leftover" "$kill_node" <<'EOF'
import json
import re
import sys
import time
from pathlib import Path

work, run_dir, submission_id, status, unauthenticated, started, leftover, kill_node = sys.argv[1:9]
run = Path(run_dir)
artifacts = {name: (run / name).is_file() for name in ("affinity.npy", "groups.json", "report/report.html")}
# Per scrape, each metric summed over the processes that report it (one series per worker),
# keyed by name and raytag's own labels; then the largest value any scrape saw.
metrics: dict[str, float] = {}
text = (Path(work) / "metrics.txt").read_text() if (Path(work) / "metrics.txt").exists() else ""
for scrape in text.split("# scrape\n"):
    series = {}  # one value per exported series (a scrape may hold a late duplicate)
    for name, labels, value in re.findall(r"^(ray_raytag_\w+)(?:\{([^}]*)\})? (\S+)$", scrape, re.M):
        own = ",".join(f'{k}="{v}"' for k, v in re.findall(r'(\w+)="([^"]*)"', labels) if k in ("stage", "estimator"))
        series[(f"{name}{{{own}}}" if own else name, labels)] = float(value)
    totals: dict[str, float] = {}
    for (key, _), value in series.items():
        totals[key] = totals.get(key, 0.0) + value
    for key, value in totals.items():
        metrics[key] = max(metrics.get(key, 0.0), value)
result = {"job": submission_id, "status": status, "artifacts": artifacts,
          "unauthenticated_http": unauthenticated, "raytag_metrics": metrics,
          "head_processes_left": leftover.split(), "seconds": round(time.time() - float(started)), "work_dir": work}
if artifacts["groups.json"]:
    result["groups"] = json.loads((run / "groups.json").read_text()).get("groups")
ok = status == "SUCCEEDED" and all(artifacts.values()) and bool(metrics) and not leftover.split()
if kill_node == "1":
    kill_file = Path(work) / "kill.json"
    result["second_node"] = json.loads(kill_file.read_text() or "null") if kill_file.exists() else None
    ok = ok and bool(result["second_node"] and result["second_node"]["killed"])
result["ok"] = ok
print(json.dumps(result))
sys.exit(0 if ok else 1)
EOF
