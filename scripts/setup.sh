#!/usr/bin/env bash
# Create .venv and install cart into it. On a machine without an NVIDIA GPU the CPU wheel of torch
# is installed first (pinned: a bare `torch` would pull a multi-GB CUDA build); with a GPU, pip's
# normal resolution takes a CUDA build. Override with TORCH_SPEC="torch==X.Y.Z".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  if [ -n "${TORCH_SPEC:-}" ]; then spec="$TORCH_SPEC"
  elif command -v nvidia-smi >/dev/null 2>&1; then spec="torch>=2.6"
  else spec="torch==2.13.0"; fi
  # Elsewhere, TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu gets a small CPU build from PyPI's twin.
  python -m pip install -q "$spec" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
python -m pip install -q -e ".[dev]"
