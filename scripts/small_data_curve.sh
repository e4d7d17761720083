#!/usr/bin/env bash
# Issue 14's small-data curve: entity F of a Gemma 3 270M LoRA and of a spaCy
# `ner` on ja_ginza's tok2vec, trained on the same first N sentences of a user
# task's training split, for the same CPU-time budget each; scored on the same
# held-out sentences. The task file is given once, to `convert`: everything
# after reads it from the corpus's sidecar or from the model.
#   scripts/small_data_curve.sh USER.jsonl TASK.json OUT [CPU_SECONDS] [SIZES...]
# USER.jsonl: {"text", "entities": [{"label", "text", "start", "end"}]} lines.
# The Gemma runs train from configs/lora-cpu.cfg with the settings the table
# in benchmarks/small-data.md used (a CPU budget); TRAIN_OVERRIDES adds config
# settings, e.g. epochs with early stopping on dev instead of the budget:
#   TRAIN_OVERRIDES="--training.max_steps -1 --training.max_time 0 --training.eval_steps 20 --training.patience 3"
set -euo pipefail
USER_JSONL=$1
TASK_JSON=$2
OUT=$3
BUDGET=${4:-600}
shift 4 || true
SIZES=${*:-"100 400 1600"}
PY=${PYTHON:-python}
CONFIG="$(dirname "$0")/../configs/lora-cpu.cfg"
mkdir -p "$OUT"
$PY -m spacy_giellm convert jsonl "$USER_JSONL" "$OUT/all.jsonl" --task "$TASK_JSON"
TASK=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['name'])" "$TASK_JSON")
$PY -m spacy_giellm mix "$TASK=$OUT/all.jsonl" --output "$OUT/split" --dev 100 --test 300 --seed 0
for n in $SIZES; do
  head -n "$n" "$OUT/split/train.jsonl" > "$OUT/train$n.jsonl"
  cp "$OUT/split/train.tasks.json" "$OUT/train$n.tasks.json"
  # the CPU recipe as benchmarks/small-data.md measured it: lr 1e-3, warmup 0.1,
  # the CPU-time budget, no evaluation on dev ($TRAIN_OVERRIDES adds settings)
  $PY -m spacy_giellm train "$CONFIG" --paths.train "$OUT/train$n.jsonl" --paths.dev "$OUT/split/dev.jsonl" \
    --paths.output "$OUT/gemma$n" --training.max_steps 100000 --training.epochs 50 --training.max_time "$BUDGET" \
    --training.time_clock cpu --training.lr 0.001 --training.warmup 0.1 --training.eval_steps 100000 \
    --training.patience 0 ${TRAIN_OVERRIDES:-}
  $PY -m spacy_giellm merge "$OUT/gemma$n/model" "$OUT/gemma$n-merged"
  $PY -m spacy_giellm export-gguf "$OUT/gemma$n-merged" "$OUT/gemma$n.gguf" --type q8_0
  $PY -m spacy_giellm evaluate-model "$OUT/gemma$n.gguf" "$OUT/split/test.jsonl" --nlp ja_ginza \
    --output "$OUT/eval-gemma$n" --max-new-tokens 96
  $PY scripts/stockmark_baselines.py spacy-ner "$OUT/train$n.jsonl" "$OUT/split/dev.jsonl" "$OUT/split/test.jsonl" \
    "$OUT/spacy-ner$n.json" --seconds "$BUDGET" --base ja_ginza --task "$TASK"
done
