#!/usr/bin/env bash
# Submit the pipeline (or the evaluation) as a Ray job to a running cluster; the job joins that cluster
# (cluster.address=auto).
#
#   scripts/submit.sh [hydra overrides...]      e.g. scripts/submit.sh output.dir=/shared/runs/digits train.seeds=[0,1,2]
#   scripts/submit.sh --module pipeline.evaluate experiment=mnist_seed000
#
# RAY_ADDRESS selects the cluster's dashboard (default http://127.0.0.1:8265). output.dir should be an absolute
# path on storage every node sees: the job runs in a copy of this folder that Ray uploads.
set -euo pipefail
cd "$(dirname "$0")/.."
module=pipeline
if [[ "${1:-}" == "--module" ]]; then
  if [[ -z "${2:-}" ]]; then echo "error: --module needs a module name, e.g. pipeline.evaluate" >&2; exit 2; fi
  module="$2"
  shift 2
fi
exec ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" --working-dir . -- \
  python -m "$module" cluster.address=auto "$@"
