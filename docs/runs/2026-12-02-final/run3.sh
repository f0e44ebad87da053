# One H200, the session's last device time: the Gemma-3-4B row, the QLoRA row beside Unsloth, a 4-layer
# Qwen3-8B profile of lean split vs lean whole, then GPU tests in what time is left.
set -o pipefail
source docs/runs/setup.sh
mkdir -p $OUT
echo "start $(date +%T)"
timeout 300 ftcli bench --arch gemma3-4b --mode hf,unsloth,ftcli --steps 6 --timeout 230 --out $OUT/bench-gemma3-4b.json > $OUT/bench-gemma3-4b.log 2>&1
echo "qlora $(date +%T)"
timeout 175 ftcli bench --arch llama3-8b --load-in-4bit --mode unsloth,ftcli --steps 6 --timeout 150 --out $OUT/bench-qlora.json > $OUT/bench-qlora.log 2>&1
echo "profile $(date +%T)"
timeout 70 ftcli bench --arch qwen3-8b --layers 4 --mode ftcli,ftcli-whole --steps 4 --timeout 45 --profile /tmp/prof --out /tmp/prof.json > $OUT/profile-qwen3-4layers.log 2>&1
cat /tmp/prof/qwen3-8b-ftcli.txt /tmp/prof/qwen3-8b-ftcli-whole.txt > $OUT/profile-qwen3-4layers.txt
echo "gpu tests $(date +%T), $SECONDS s in"
[ $SECONDS -lt 440 ] && timeout $((480 - SECONDS)) pytest -m gpu tests/test_gpu.py -k "quickstart or qlora_trains or offloaded" -q -rs -p no:cacheprovider > $OUT/gpu-tests.log 2>&1
tail -3 $OUT/gpu-tests.log
echo "end $(date +%T)"
cat $OUT/bench-*.log $OUT/profile-qwen3-4layers.log
head -3 /tmp/prof/qwen3-8b-ftcli.txt /tmp/prof/qwen3-8b-ftcli-whole.txt
