# Issue 16, GPU call 2 (one H200): `ftcli bench --e2e` on the Llama-3.1-8B shape, long mix (the generator fixed
# after call 1: its word sampler repeated one word, so rows came out ~40% short), ftcli (lean, packing auto)
# against Unsloth's packing path and plain TRL; then the short mix for ftcli and Unsloth where time is left.
set -o pipefail
source docs/runs/setup.sh
mkdir -p $OUT
echo "start $(date +%T)"
timeout 330 ftcli bench --e2e --arch llama3-8b --mode ftcli,unsloth,trl --mix long --timeout 160 \
  --cache /tmp/bench --out $OUT/e2e-long.json > $OUT/e2e-long.log 2>&1
cat $OUT/e2e-long.log
[ $SECONDS -lt 380 ] && timeout $((500 - SECONDS)) ftcli bench --e2e --arch llama3-8b --mode ftcli,unsloth --mix short \
  --timeout 120 --cache /tmp/bench --out $OUT/e2e-short.json > $OUT/e2e-short.log 2>&1
cat $OUT/e2e-short.log 2>/dev/null
echo "end $(date +%T)"
