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
# The Node.js example client (examples/node), where npm exists: its lockfile, exactly (npm ci).
if command -v npm >/dev/null && [ ! examples/node/node_modules/.package-lock.json -nt examples/node/package-lock.json ]; then
  (cd examples/node && npm ci --no-audit --no-fund --loglevel=error) \
    || echo "setup: npm ci in examples/node failed; the Node.js client's tests will fail" >&2
fi
