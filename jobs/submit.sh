#!/usr/bin/env bash
# Submit a raytag run to a Ray cluster through the Ray Jobs API.
#
# Usage: jobs/submit.sh ADDRESS CONFIG RUN_DIR [more `raytag run` options...]
#   ADDRESS  the cluster's job API: http://127.0.0.1:8265 for a local head, or the local
#            end of `ray dashboard cluster.yaml` / `kubectl port-forward` for a remote one
#   CONFIG   run config, relative to the repository root (it travels in the working dir),
#            e.g. raytag/configs/dblp_demo.yaml
#   RUN_DIR  where every stage reads and writes: an absolute path on storage that every
#            node sees (the local disk on a one-machine cluster, NFS/EFS/Filestore on a
#            multi-node one) or a cloud URI (s3://bucket/prefix, gs://bucket/prefix)
#
# Environment:
#   RAY_AUTH_MODE=token       needed when the cluster has token authentication on (all
#                             configs in cluster_configs/ do); the token comes from
#                             RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token
#   RAYTAG_SUBMIT_ARGS        extra `ray job submit` options, e.g. "--no-wait" or
#                             "--entrypoint-num-cpus=1" (runs the driver on a worker
#                             instead of the task-free head)
#
# Example:
#   jobs/submit.sh http://127.0.0.1:8265 raytag/configs/dblp_demo.yaml /tmp/raytag-runs/dblp
set -euo pipefail

if [[ $# -lt 3 ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
fi
address=$1
config=$2
run_dir=$3
shift 3

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

if [[ ! -f "$config" ]]; then
  echo "submit.sh: CONFIG '$config' is not a file under $repo_root; give its path relative to the repository root (e.g. raytag/configs/dblp_demo.yaml)" >&2
  exit 2
fi
# The job runs inside Ray's temporary copy of the working dir, which Ray deletes later:
# a relative RUN_DIR would put the results there.
if [[ "$run_dir" != /* && "$run_dir" != *://* ]]; then
  echo "submit.sh: RUN_DIR '$run_dir' must be an absolute path on storage all nodes share, or an s3:// / gs:// URI" >&2
  exit 2
fi

# A readable, unique id: it names the job in `ray job list` and on the dashboard.
submission_id="raytag-$(basename "$run_dir")-$(date +%Y%m%d-%H%M%S)"

# shellcheck disable=SC2086  # RAYTAG_SUBMIT_ARGS is a list of options on purpose
exec ray job submit \
  --address "$address" \
  --submission-id "$submission_id" \
  --metadata-json "{\"raytag_config\": \"$config\", \"raytag_run_dir\": \"$run_dir\"}" \
  --working-dir . \
  --runtime-env jobs/runtime_env.yaml \
  ${RAYTAG_SUBMIT_ARGS:-} \
  -- python -m raytag run "$config" --run-dir "$run_dir" "$@"
