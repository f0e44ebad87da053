# GPU call 3 (one H100/H200; carry .whl and .carry): issue 17's small model with real trained weights
# (make_realtext_model.py, ~2 minutes, 7 files back), then issue 16's loss check on the Llama-3.2-1B shape: ftcli,
# Unsloth and plain TRL on the same long-mix rows, every step's loss kept (first step: before any update).
set -o pipefail
source docs/runs/setup.sh
mkdir -p $OUT
echo "start $(date +%T)"
timeout 200 python3 docs/runs/2026-12-07-realtext/make_realtext_model.py train --tokenizer .carry/tokenizer \
  --out $OUT --seconds 110 2>&1 | grep -v "Token indices"
echo "e2e $(date +%T)"
timeout $((570 - SECONDS)) ftcli bench --e2e --arch llama3.2-1b --mode ftcli,unsloth,trl --mix long --timeout 150 \
  --cache /tmp/bench --out $OUT/e2e-losses-llama1b.json 2>&1 | grep -v Warning
echo "end $(date +%T)"
