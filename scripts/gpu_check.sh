#!/usr/bin/env bash
# The GPU check, in one run of a few minutes on a CUDA machine: the torch executor's parity with
# transformers and lossless speculation on CUDA (eager and compiled), then the floor probe and
# the benchmark there. Usage: bash scripts/gpu_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-out/gpu_check}}
mkdir -p "$OUT"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet torch   # the CUDA build this machine's driver takes
  .venv/bin/pip install --quiet -e ".[test]"
fi
. .venv/bin/activate
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('cuda', torch.version.cuda, torch.cuda.get_device_name(0))" | tee "$OUT/device.txt"
export SPECDEC_TEST_DEVICE=cuda:0
python -m pytest -q tests/test_torch_engine.py tests/test_compiled.py tests/test_lossless_grpc.py \
  2>&1 | tee "$OUT/tests.txt"
python -m bench.floor --device cuda:0 --target-model models/target --draft-model models/draft --full-batch-size 4 \
  --json "$OUT/floor.json" 2>&1 | tee "$OUT/floor.txt"
python -m bench --method draft --k 4 --device cuda:0 --json "$OUT/bench_draft.json" 2>&1 | tail -12 \
  | tee "$OUT/bench_draft.txt"
