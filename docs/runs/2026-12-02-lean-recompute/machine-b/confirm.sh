# After CHUNK_ROWS 2048 -> 4096 (two chunks at 8192 tokens): the rows most likely to move, peers beside.
set -o pipefail
source docs/runs/setup.sh
mkdir -p $OUT
timeout 250 ftcli bench --arch gemma3-4b --mode unsloth,ftcli --steps 6 --timeout 230 \
  --out $OUT/bench-gemma3-4b.json > $OUT/bench-gemma3-4b.log 2>&1
timeout 150 ftcli bench --arch qwen3-8b --mode unsloth,ftcli --steps 6 --timeout 70 \
  --out $OUT/bench-qwen3-8b.json > $OUT/bench-qwen3-8b.log 2>&1
[ $SECONDS -lt 380 ] && timeout $((530 - SECONDS)) ftcli bench --arch llama3-8b --load-in-4bit --mode unsloth,ftcli \
  --steps 6 --timeout 70 --out $OUT/bench-qlora.json > $OUT/bench-qlora.log 2>&1
echo "end after $SECONDS s"
cat $OUT/bench-*.log | grep -v Warning
