# Issue 16, GPU call 2 (same warm machine as call 1): Gemma-3-4B long mix, then the Llama-3.1-8B short mix,
# ftcli against Unsloth. Carry .whl; output in $OUT.
set -o pipefail
source docs/runs/setup.sh
mkdir -p $OUT
echo "start $(date +%T)"
timeout 300 ftcli bench --e2e --arch gemma3-4b --mode ftcli,unsloth --mix long --timeout 200 \
  --cache /tmp/bench --out $OUT/e2e-long-gemma.json > $OUT/e2e-long-gemma.log 2>&1
cat $OUT/e2e-long-gemma.log
timeout $((470 - SECONDS)) ftcli bench --e2e --arch llama3-8b --mode ftcli,unsloth --mix short --timeout 170 \
  --cache /tmp/bench --out $OUT/e2e-short-llama.json > $OUT/e2e-short-llama.log 2>&1
cat $OUT/e2e-short-llama.log
echo "end $(date +%T)"
