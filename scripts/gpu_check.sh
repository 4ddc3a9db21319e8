#!/usr/bin/env bash
# The GPU check, in one run of a few minutes on a CUDA machine: the torch executor's parity with
# transformers and lossless speculation on CUDA (eager and compiled), then the floor probe and
# the benchmark there. Each stage has its own time limit and the check goes on past a failed
# one, so a run always reports every stage (the summary at the end, and $OUT_DIR/*.txt).
# Usage: bash scripts/gpu_check.sh [OUT_DIR]
# Environment:
#   PYTHON       a python that already has a CUDA torch (default: make .venv and pip-install)
#   WHEELS       a folder of wheels to install offline into a scratch site first (for machines
#                with no package index; e.g. grpcio and protobuf at the versions pyproject pins)
#   STAGE_S      each stage's limit in seconds (300)
#   BENCH_FLAGS  extra flags for `python -m bench` (e.g. "--compile off --repeats 3")
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-out/gpu_check}}
STAGE_S=${STAGE_S:-300}
mkdir -p "$OUT"
if [ -n "${PYTHON:-}" ]; then
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # the project, uninstalled
else
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet torch   # the CUDA build this machine's driver takes
    .venv/bin/pip install --quiet -e ".[test]"
  fi
  PYTHON=.venv/bin/python
fi
if [ -n "${WHEELS:-}" ]; then
  site=$(mktemp -d)
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$WHEELS"/*.whl \
    || exit 1
  export PYTHONPATH="$site:${PYTHONPATH:-}"
fi
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'torch', torch.__version__)" \
  | tee "$OUT/device.txt" || exit 1
export SPECDEC_TEST_DEVICE=cuda:0 PYTHONUNBUFFERED=1
summary=()
stage() {  # stage NAME CMD...: run CMD under the stage limit, its output to $OUT/NAME.txt
  # (the last lines shown)
  local name=$1; shift
  local t0=$SECONDS
  echo "== $name: $*"
  # To a file, not a pipe: a service a killed stage leaves behind cannot hold the pipe open.
  timeout -k 10 "$STAGE_S" "$@" >"$OUT/$name.txt" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.txt"
  summary+=("$name: rc $rc in $((SECONDS - t0)) s")
}
stage tests "$PYTHON" -m pytest -q tests/test_torch_engine.py tests/test_compiled.py \
  tests/test_lossless_grpc.py
stage floor "$PYTHON" -m bench.floor --device cuda:0 --target-model models/target \
  --draft-model models/draft --full-batch-size 4 --json "$OUT/floor.json"
# shellcheck disable=SC2086  # BENCH_FLAGS is a list of flags
stage bench_draft "$PYTHON" -m bench --method draft --k 4 --device cuda:0 \
  --json "$OUT/bench_draft.json" ${BENCH_FLAGS:-}
printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
