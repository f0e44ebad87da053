# GPU call 2 of session 6: GPU tests (with the windowed attention), then the Gemma-3-4B rows.
set -o pipefail
source docs/runs/setup.sh
mkdir -p $OUT
echo "start $(date +%T)"
timeout 200 pytest -m gpu tests/test_gpu.py tests/test_kernels_gpu.py -q -rs -p no:cacheprovider -s \
  > $OUT/gpu-tests.log 2>&1
grep -E "window attention|gemma3:|passed|failed|Error" $OUT/gpu-tests.log | tail -12
timeout $((590 - SECONDS)) ftcli bench --arch gemma3-4b --mode hf,ftcli,ftcli-fast,unsloth --steps 6 --timeout 230 \
  --out $OUT/bench-gemma3-4b.json > $OUT/bench-gemma3-4b.log 2>&1
echo "end $(date +%T)"
cat $OUT/bench-gemma3-4b.log
