# GPU part of the quantisation-quality bar (#17): train the small real-text model (≤ 5 min) and bring its
# weights back. One device call:  bash docs/runs/2026-12-07-quants/run.sh
# The GPU machine has no llama-cpp-python, so the quants and their quality table are made on the CPU
# afterwards with quality_table.py (see docs/export.md, "Measured on trained weights").
# Output in $OUT: model.safetensors cut in 15 MB parts + SHA256SUMS, config.json, heldout.jsonl.gz,
# train-summary.json, train.log (≤ 60 MB in all).
set -eo pipefail
HERE=docs/runs/2026-12-07-quants
source docs/runs/setup.sh || true
mkdir -p "$OUT" "$HERE/tokenizer"
# the real 32k tokenizer (Phi-3-mini, SentencePiece-style BPE): from the shared fixtures when they are there
for f in tokenizer.json tokenizer_config.json; do
  for d in shared ../shared; do
    [ -f "$HERE/tokenizer/$f" ] || cp "$d/fixtures/real-world/tokenizers/phi-3-mini-4k-instruct/$f" "$HERE/tokenizer/" 2>/dev/null || true
  done
done
work=$(mktemp -d)
timeout 420 python3 $HERE/make_realtext_model.py --out "$work" --seconds "${TRAIN_SECONDS:-240}" 2>&1 | tee "$OUT/train.log"
cp "$work/train-summary.json" "$work/heldout.jsonl.gz" "$work/model/config.json" "$OUT/"
cp "$work/model/generation_config.json" "$OUT/" 2>/dev/null || true
(cd "$work/model" && sha256sum model.safetensors > "$OUT/SHA256SUMS" && split -b 15M -d model.safetensors "$OUT/model.safetensors.part-")
ls -la "$OUT"
