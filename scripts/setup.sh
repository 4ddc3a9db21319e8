#!/usr/bin/env bash
# Create .venv and install the project with its test extra. Idempotent; safe to rerun.
# torch==2.13.0 goes first: a bare torch requirement on a fresh machine pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  pip install --quiet "torch==2.13.0"
fi
pip install --quiet -e ".[test]"
echo "setup: $(python -c 'import torch, grpc, transformers; print("torch", torch.__version__, "| grpcio", grpc.__version__, "| transformers", transformers.__version__)')" >&2
