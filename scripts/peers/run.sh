#!/usr/bin/env bash
# The outside TRAK reference end to end: .venv-peers (if missing), the experiment's arrays, dattri TRAK.
#   scripts/peers/run.sh [experiment] [K] [target]        default: mnist_seed000 20 margin
# Writes outputs/peers/<experiment>.npz and docs/results/peers/<experiment>_dattri_trak{,_ce}{,_models}.parquet
# (target margin: TRAK's classification margin on the validation side; ce: the validation cross-entropy).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
EXPERIMENT="${1:-mnist_seed000}"
MODELS="${2:-20}"
TARGET="${3:-margin}"
OUT="docs/results/peers/${EXPERIMENT}_dattri_trak$([ "$TARGET" = margin ] || echo "_$TARGET").parquet"
cd "$ROOT"
[ -x .venv-peers/bin/python ] || bash scripts/peers/setup.sh
.venv/bin/python scripts/peers/export_data.py --experiment "$EXPERIMENT" --out "outputs/peers/$EXPERIMENT.npz"
nice -n 10 .venv-peers/bin/python scripts/peers/trak_dattri.py --data "outputs/peers/$EXPERIMENT.npz" \
    --models "$MODELS" --proj-dim 512 --check-ensemble 5 --target "$TARGET" --out "$OUT"
.venv-peers/bin/python scripts/peers/summarize.py "$OUT"
