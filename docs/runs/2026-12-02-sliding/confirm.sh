# GPU call 3 of session 6: lean against Unsloth on the 8B shapes at HEAD, Gemma's hf/lean/fast with more
# steps (its step times are noisy), then the QLoRA row.
set -o pipefail
source docs/runs/setup.sh
mkdir -p $OUT
echo "start $(date +%T)"
for arch in llama3-8b qwen3-8b; do
  timeout 150 ftcli bench --arch $arch --mode unsloth,ftcli --steps 8 --timeout 100 \
    --out $OUT/bench-$arch.json > $OUT/bench-$arch.log 2>&1
done
timeout 150 ftcli bench --arch gemma3-4b --mode hf,ftcli,ftcli-fast --steps 10 --timeout 60 \
  --out $OUT/bench-gemma3-4b.json > $OUT/bench-gemma3-4b.log 2>&1
[ $SECONDS -lt 400 ] && timeout $((570 - SECONDS)) ftcli bench --arch llama3-8b --load-in-4bit --mode unsloth,ftcli \
  --steps 6 --timeout 120 --out $OUT/bench-qlora.json > $OUT/bench-qlora.log 2>&1
echo "end $(date +%T)"
cat $OUT/bench-*.log
