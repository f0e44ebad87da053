# Issue 16, GPU call 1: `ftcli bench --e2e`, long mix, Llama-3.1-8B and Qwen3-8B shapes, ftcli (lean, packing auto)
# against Unsloth's packing path, one invocation; then the GPU tests where time is left. Carry .whl; output in $OUT.
set -o pipefail
source docs/runs/setup.sh
mkdir -p $OUT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "start $(date +%T)"
timeout 420 ftcli bench --e2e --arch llama3-8b,qwen3-8b --mode ftcli,unsloth --mix long --timeout 170 \
  --cache /tmp/bench --out $OUT/e2e-long-llama-qwen.json > $OUT/e2e-long-llama-qwen.log 2>&1
cat $OUT/e2e-long-llama-qwen.log
echo "gpu tests $(date +%T)"
[ $SECONDS -lt 470 ] && timeout $((585 - SECONDS)) pytest -m gpu tests/engine/test_gpu.py tests/kernels/test_gpu.py -q -rs \
  -p no:cacheprovider > $OUT/gpu-tests.log 2>&1
tail -3 $OUT/gpu-tests.log
echo "end $(date +%T)"
