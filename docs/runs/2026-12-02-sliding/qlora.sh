# GPU call 4 of session 6: the QLoRA row at HEAD (the last of the device time).
set -o pipefail
source docs/runs/setup.sh
mkdir -p $OUT
timeout 200 ftcli bench --arch llama3-8b --load-in-4bit --mode unsloth,ftcli --steps 6 --timeout 120 \
  --out $OUT/bench-qlora.json > $OUT/bench-qlora.log 2>&1
cat $OUT/bench-qlora.log
