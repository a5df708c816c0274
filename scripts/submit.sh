#!/usr/bin/env bash
# Submit the pipeline as a Ray job to a running cluster; the job joins that cluster (cluster.address=auto).
#
#   scripts/submit.sh [hydra overrides...]      e.g. scripts/submit.sh output.dir=/shared/runs/digits train.seeds=[0,1,2]
#
# RAY_ADDRESS selects the cluster's dashboard (default http://127.0.0.1:8265). output.dir should be an absolute
# path on storage every node sees: the job runs in a copy of this folder that Ray uploads.
set -euo pipefail
cd "$(dirname "$0")/.."
exec ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" --working-dir . -- \
  python -m pipeline cluster.address=auto "$@"
