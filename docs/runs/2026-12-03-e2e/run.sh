# Issue 16, GPU call 1 (one H200): the packed-rows GPU tests, then `ftcli bench --e2e` on the Llama-3.1-8B shape,
# long mix: ftcli train (lean, packing auto) against Unsloth's packing path and plain TRL, one epoch each.
# Carry .whl. Output lands in $OUT.
set -o pipefail
source docs/runs/setup.sh
mkdir -p $OUT
echo "start $(date +%T)"
timeout 150 pytest -m gpu tests/engine/test_gpu.py -k "packed or window_attention" -q -rs -s -p no:cacheprovider \
  > $OUT/gpu-tests.log 2>&1
grep -E "packed|passed|failed|Error" $OUT/gpu-tests.log | tail -8
timeout $((590 - SECONDS)) ftcli bench --e2e --arch llama3-8b --mode ftcli,unsloth,trl --mix long --timeout 200 \
  --cache /tmp/bench --out $OUT/e2e-llama3-8b.json > $OUT/e2e-llama3-8b.log 2>&1
echo "end $(date +%T)"
cat $OUT/e2e-llama3-8b.log
