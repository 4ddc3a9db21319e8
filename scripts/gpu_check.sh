#!/usr/bin/env bash
# The GPU check, in one run of ~12 minutes on a CUDA machine: the torch executor's parity with
# transformers and lossless speculation on CUDA (eager and compiled, the compiled steps built on
# the engine thread that replays them), the published families, the scale benchmark, the floor probe, the
# benchmark (eager), k auto against every fixed k alone and with 8 sessions, and last the
# benchmark with compiled services. Each stage has its own time limit and the check goes on
# past a failed one, so a run always reports every stage (the summary at the end, and
# $OUT_DIR/*.txt).
# Usage: bash scripts/gpu_check.sh [OUT_DIR]
# Environment:
#   PYTHON       a python that already has a CUDA torch (default: make .venv and pip-install)
#   WHEELS       a folder of wheels to install offline into a scratch site first (for machines
#                with no package index; e.g. grpcio and protobuf at the versions pyproject pins)
#   STAGE_S      each stage's limit in seconds (300)
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
# The published families (Llama-3.2, TinyLlama, Qwen2.5, Qwen3, Mistral; shrunk): lossless over
# gRPC, eager and compiled, long contexts, sliding windows, and bfloat16 against transformers'.
SPECDEC_FAMILIES_COMPILED=all stage families "$PYTHON" -m pytest -q tests/test_families.py
# The Llama-3.2-1B shape (4 layers) in the checkpoint's bfloat16 (--dtype auto on CUDA): start-up,
# peak memory, target-only and draft == target against transformers, TTFT of 1,500 tokens.
stage scale "$PYTHON" -m bench.scale --family llama-3.2-1b --layers 4 --device cuda:0 \
  --out "$OUT/scale.json"
stage floor "$PYTHON" -m bench.floor --device cuda:0 --target-model models/target \
  --draft-model models/draft --full-batch-size 4 --json "$OUT/floor.json"
stage bench_draft "$PYTHON" -m bench --method draft --k 4 --device cuda:0 --compile off --repeats 3 \
  --json "$OUT/bench_draft.json"
stage auto_k "$PYTHON" -m bench.auto_k --method draft --device cuda:0 --sessions 1,8 --repeats 3 \
  --json "$OUT/auto_k.json"
stage bench_draft_compiled "$PYTHON" -m bench --method draft --k 4 --device cuda:0 --compile on \
  --repeats 2 --json "$OUT/bench_draft_compiled.json"
printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
