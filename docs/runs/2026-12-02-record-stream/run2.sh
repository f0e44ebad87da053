# One H200: the offload GPU test, then the Qwen3-8B and Llama-3.1-8B rows (after the forward stopped waiting for each D2H copy).
set -o pipefail
source docs/runs/setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
mkdir -p $OUT
echo "start $(date +%T)"
timeout 90 pytest -m gpu tests/test_gpu.py -k offloaded_checkpointing -q -rs -s -p no:cacheprovider > $OUT/gpu-split-test.log 2>&1
tail -4 $OUT/gpu-split-test.log
B="ftcli bench --steps 6 --timeout 150 --mode hf,unsloth,ftcli,ftcli-fast"
for arch in qwen3-8b llama3-8b; do
  echo "$arch $(date +%T)"
  timeout 255 $B --arch $arch --out $OUT/bench-$arch.json > $OUT/bench-$arch.log 2>&1
  rm -rf /tmp/ftcli-bench/$arch
done
echo "end $(date +%T)"
cat $OUT/bench-*.log
