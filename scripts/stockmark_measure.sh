#!/usr/bin/env bash
# The stockmark measurement (benchmarks/quality-public-corpora.md, its last row): GIELLM (tiny Llama from scratch, CPU)
# next to ja_ginza's NER and a spaCy `ner`, on one fixed held-out 10%.
#   scripts/stockmark_measure.sh [ner.json] [out dir] [CPU seconds of training]
# The budget is process CPU time with ONE thread per process (THREADS), so
# that other jobs on a shared machine neither shrink it nor inflate it with
# spin-waiting threads: 3600 CPU s = the compute of 30 minutes of 2 cores.
# Needs no network.
set -euo pipefail
NER_JSON=${1:-../shared/data/stockmark-ner/ner.json}
OUT=${2:-metrics/stockmark}
BUDGET=${3:-3600}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1} OPENBLAS_NUM_THREADS=${THREADS:-1}
mkdir -p "$OUT"
# 1. Data: convert, then a seeded split: 10% test, 5% dev, the rest train.
$PY -m spacy_giellm convert stockmark-ner "$NER_JSON" "$OUT/data/ner.jsonl"
$PY -m spacy_giellm mix ner-ja="$OUT/data/ner.jsonl" --output "$OUT/data" --dev 0.05 --test 0.1 --seed 0 \
  | tee "$OUT/split.json"
# 2. GIELLM: a ~5M-parameter Llama trained from scratch for the budget.
/usr/bin/time -v $PY -m spacy_giellm train "$OUT/data/train.jsonl" "$OUT/data/dev.jsonl" \
  --output "$OUT/giellm" --from-scratch --max-steps 100000 --max-time "$BUDGET" --time-clock cpu --epochs 100 \
  --lr 0.002 --warmup 100 --batch-size 16 --max-length 256 --vocab-size 4000 \
  --hidden-size 256 --num-layers 4 --num-heads 4 --intermediate-size 512 \
  --eval-steps 200 --patience 5 --seed 0 2> "$OUT/giellm-train.log"
cp "$OUT/giellm/manifest.json" "$OUT/giellm-manifest.json"
$PY -m spacy_giellm evaluate-model "$OUT/giellm/model" "$OUT/data/test.jsonl" --output "$OUT/giellm-eval" \
  --max-new-tokens 96 --title "GIELLM, tiny Llama from scratch, stockmark ner.json held-out 10%"
cp "$OUT/giellm-eval/metrics.json" "$OUT/giellm.json"
# 3. Baselines on the same held-out part.
$PY scripts/stockmark_baselines.py ginza "$OUT/data/test.jsonl" "$OUT/ginza.json"
$PY scripts/stockmark_baselines.py spacy-ner "$OUT/data/train.jsonl" "$OUT/data/dev.jsonl" "$OUT/data/test.jsonl" \
  "$OUT/spacy-ner.json" --seconds "$BUDGET" --clock cpu
