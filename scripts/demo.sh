#!/usr/bin/env bash
# The README's main job: set up (if needed), start the verifier and the proposer as separate
# processes on the models shipped in models/, and generate over gRPC; then decode the same prompts
# target-only on the same services and print the speedup and that the outputs are identical.
# Extra flags go to the client.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
mkdir -p out
exec python -m client.draft_based \
  --target-model-name models/target --draft-model-name models/draft \
  --num-speculative-tokens 4 --max-new-tokens 64 --ctx-len 256 \
  --quiet-services --compare-target-only --json out/demo.json "$@"
