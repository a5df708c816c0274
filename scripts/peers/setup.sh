#!/usr/bin/env bash
# Creates .venv-peers at the repo root: torch 2.13.0 (CPU build) + dattri 0.3.0 for the outside TRAK
# reference (scripts/peers/trak_dattri.py). Torch and dattri never enter the package's own environment.
#
# torch==2.13.0 is installed FIRST and pinned exactly: a CPU wheel of it lies on this machine's disk,
# while plain `torch` or a range would pull a CUDA build of several GB. dattri is installed after it,
# so its `torch` requirement is already satisfied and nothing else is fetched.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.venv-peers"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

"${PIP[@]}" install torch==2.13.0
# The constraint keeps pip from replacing the CPU torch while resolving dattri's requirements.
CONSTRAINT="$(mktemp)"
trap 'rm -f "$CONSTRAINT"' EXIT
echo "torch==2.13.0" >"$CONSTRAINT"
"${PIP[@]}" install -c "$CONSTRAINT" dattri==0.3.0 numpy pyarrow scipy

if "${PIP[@]}" list 2>/dev/null | grep -i -E 'nvidia|cuda|triton'; then
    echo "error: CUDA packages were installed into $VENV (listed above); remove the venv and check the torch pin" >&2
    exit 1
fi
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import torch
print(f"torch {torch.__version__} (cuda build: {torch.version.cuda}), dattri {md.version('dattri')}, numpy {md.version('numpy')}, pyarrow {md.version('pyarrow')}")
assert torch.version.cuda is None, "torch is a CUDA build"
PY
echo "ok: $VENV has no nvidia/CUDA packages"
