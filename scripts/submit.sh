#!/usr/bin/env bash
# Submit the pipeline (or the evaluation) as a Ray job to a running cluster; the job joins that cluster
# (cluster.address=auto).
#
#   scripts/submit.sh [hydra overrides...]      e.g. scripts/submit.sh output.dir=/shared/runs/digits train.seeds=[0,1,2]
#   scripts/submit.sh --module pipeline.evaluate experiment=mnist_seed000
#
# RAY_ADDRESS selects the cluster's dashboard (default http://127.0.0.1:8265); with token authentication, the
# cluster's token comes from RAY_AUTH_TOKEN or ~/.ray/auth_token (README, "Running on a cluster"). output.dir must
# be an absolute path on storage every node sees: the job runs in a copy of this folder that Ray uploads, so a
# relative one is refused.
set -euo pipefail
cd "$(dirname "$0")/.."
module=pipeline
if [[ "${1:-}" == "--module" ]]; then
  if [[ -z "${2:-}" ]]; then echo "error: --module needs a module name, e.g. pipeline.evaluate" >&2; exit 2; fi
  module="$2"
  shift 2
fi
why="a submitted job runs in Ray's temporary copy of this folder, where its outputs would be lost;"
why+=" use an absolute path on storage every node sees"
output_dir=""
for arg in "$@"; do
  if [[ "$arg" =~ ^\+{0,2}output\.dir=[\"\']?(.*)$ ]]; then output_dir="${BASH_REMATCH[1]}"; fi
done
if [[ "$module" == pipeline && -z "$output_dir" ]]; then
  echo "error: output.dir is not set and its default (outputs/default) is relative: $why" >&2
  exit 2
fi
if [[ -n "$output_dir" && "$output_dir" != /* ]]; then
  echo "error: output.dir=$output_dir is relative: $why" >&2
  exit 2
fi
exec ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" --working-dir . -- \
  python -m "$module" cluster.address=auto "$@"
