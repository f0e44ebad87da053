# GPU call 1 of session 6: where Gemma's lean step goes, sliding-window attention backends, long-context slices.
set -o pipefail
source docs/runs/setup.sh
mkdir -p $OUT /tmp/prof
python3 docs/runs/2026-12-02-sliding/sliding.py > $OUT/sliding.log 2>&1
python3 docs/runs/2026-12-02-sliding/sliding.py 1 16384 32 8 128 4096 >> $OUT/sliding.log 2>&1
grep -v Warning $OUT/sliding.log | grep -v "^  "
timeout 150 ftcli bench --arch gemma3-4b --layers 4 --mode ftcli,ftcli-fast --steps 5 --timeout 120 --profile /tmp/prof \
  --out /tmp/g4.json > $OUT/gemma4.log 2>&1
timeout 150 ftcli bench --arch llama3-8b --layers 4 --seq 262144 --batch 1 --mode ftcli --steps 3 --timeout 140 \
  --out /tmp/long1.json > $OUT/long.log 2>&1
timeout 100 ftcli bench --arch llama3-8b --layers 4 --seq 131072 --batch 1 --mode liger,ftcli --steps 3 --timeout 90 \
  --out /tmp/long2.json >> $OUT/long.log 2>&1
[ $SECONDS -lt 420 ] && timeout $((560 - SECONDS)) ftcli bench --arch gemma3-4b --layers 4 --mode unsloth --steps 5 \
  --timeout $((550 - SECONDS)) --profile /tmp/prof --out /tmp/g4u.json >> $OUT/gemma4.log 2>&1
for f in /tmp/prof/*.txt; do echo "=== $f"; cat $f; done > $OUT/tables.txt
cp /tmp/prof/*.gz $OUT/ 2>/dev/null
cat $OUT/gemma4.log $OUT/long.log
