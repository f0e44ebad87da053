# The bench rows on a one-GPU machine, in two device calls of under 10 minutes each (timings from the
# 2026-12-02 runs): `bash docs/runs/single-gpu.sh 1` (Qwen3-8B and Llama-3.1-8B: hf, unsloth, ftcli,
# ftcli-fast, ftcli-minimal), then `bash docs/runs/single-gpu.sh 2` (Gemma-3-4B, the QLoRA row, the GPU
# tests). Carry .whl (docs/gpu.md). Output lands in $OUT.
set -o pipefail
source docs/runs/setup.sh
mkdir -p $OUT
echo "part $1 start $(date +%T)"
if [ "$1" = 1 ]; then
  for arch in qwen3-8b llama3-8b; do
    timeout 280 ftcli bench --arch $arch --mode hf,unsloth,ftcli,ftcli-fast,ftcli-minimal --steps 6 --timeout 150 \
      --out $OUT/bench-$arch.json > $OUT/bench-$arch.log 2>&1
  done
else
  timeout 300 ftcli bench --arch gemma3-4b --mode hf,unsloth,ftcli,ftcli-fast --steps 6 --timeout 230 \
    --out $OUT/bench-gemma3-4b.json > $OUT/bench-gemma3-4b.log 2>&1
  timeout 175 ftcli bench --arch llama3-8b --load-in-4bit --mode unsloth,ftcli --steps 6 --timeout 150 \
    --out $OUT/bench-qlora.json > $OUT/bench-qlora.log 2>&1
  [ $SECONDS -lt 520 ] && timeout $((580 - SECONDS)) pytest -m gpu tests/engine/test_gpu.py tests/kernels/test_gpu.py -q -rs \
    -p no:cacheprovider > $OUT/gpu-tests.log 2>&1
  tail -3 $OUT/gpu-tests.log
fi
echo "end $(date +%T)"
cat $OUT/bench-*.log
