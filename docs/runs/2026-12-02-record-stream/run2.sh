# One H200: offload + RMSNorm GPU tests, the RMSNorm row-tile micro-benchmark, then the Qwen3-8B and
# Llama-3.1-8B rows (forward no longer waits for each D2H copy; q/k norms in row tiles).
set -o pipefail
source docs/runs/setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
mkdir -p $OUT
echo "start $(date +%T)"
timeout 100 pytest -m gpu tests/test_gpu.py -k "offloaded_checkpointing or rms_norm" -q -rs -s -p no:cacheprovider > $OUT/gpu-tests.log 2>&1
grep -E "rms_norm|passed|failed|Error" $OUT/gpu-tests.log | tail -14
timeout 60 python3 docs/runs/2026-12-02-record-stream/micro_rms.py 2>&1 | tee $OUT/micro-rms.log
B="ftcli bench --steps 6 --timeout 150 --mode hf,unsloth,ftcli,ftcli-fast"
for arch in qwen3-8b llama3-8b; do
  echo "$arch $(date +%T)"
  timeout 250 $B --arch $arch --out $OUT/bench-$arch.json > $OUT/bench-$arch.log 2>&1
  rm -rf /tmp/ftcli-bench/$arch
done
echo "end $(date +%T)"
cat $OUT/bench-*.log
