#!/usr/bin/env bash
# Development tooling (not shipped): the leak-free small-data comparison of
# issue 23. A user task (USER_DIR from scripts/heldout_labels.py + `mix`:
# train{N}.jsonl, dev.jsonl, test.jsonl, labels the starting model never
# saw) is learnt at each size N by
#   - GIELLM from the starting model (START_MERGED: its merged HF dir),
#   - GIELLM from the raw base the starting model was built on (RAW_BASE),
#   - spaCy `ner` on ja_ginza's pretrained tok2vec,
# each for the same CPU-seconds budget (all processes' CPU time), epochs
# with early stopping on the dev loss (Gemma) or dev F (spaCy); and the
# starting model with no fine-tuning (zero-shot on the new label names) is
# scored too. Gemma models are merged, exported to Q8_0 and scored through
# the giellm component on ja_ginza docs; everything on the same test.
#   scripts/starting_model_curve.sh USER_DIR START_MERGED START_GGUF RAW_BASE OUT CPU_SECONDS [SIZES...]
set -euo pipefail
USER_DIR=$1
START_MERGED=$2
START_GGUF=$3
RAW_BASE=$4
OUT=$5
BUDGET=$6
shift 6
SIZES=${*:-"100 400"}
PY=${PYTHON:-python}
HERE=$(dirname "$0")
mkdir -p "$OUT"
TASK=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['name'])" "$USER_DIR/task.json")

evaluate_gguf() {  # GGUF OUTDIR
  $PY -m spacy_giellm evaluate-model "$1" "$USER_DIR/test.jsonl" --nlp ja_ginza --task "$USER_DIR/task.json" \
    --output "$2" --max-new-tokens 96 > /dev/null
}

if [ ! -f "$OUT/zero-shot/metrics.json" ]; then
  evaluate_gguf "$START_GGUF" "$OUT/zero-shot"
fi
for n in $SIZES; do
  steps_per_epoch=$(( ($(wc -l < "$USER_DIR/train$n.jsonl") + 7) / 8 ))
  for start in start raw; do
    base=$START_MERGED; [ "$start" = raw ] && base=$RAW_BASE
    run="$OUT/$start$n"
    if [ ! -f "$run/eval/metrics.json" ]; then
      $PY -m spacy_giellm train "$USER_DIR/train$n.jsonl" "$USER_DIR/dev.jsonl" --output "$run/train" \
        --base-model "$base" --epochs 30 --max-time "$BUDGET" --time-clock cpu \
        --lr 0.0005 --warmup 0.1 --batch-size 8 --max-length 320 --lora-r 16 --lora-alpha 32 \
        --lora-targets all-linear --eval-steps "$steps_per_epoch" --patience 2 --seed 0 --processes 2 \
        > "$run.train.log" 2>&1
      $PY -m spacy_giellm merge "$run/train/model" "$run/merged" > /dev/null
      $PY -m spacy_giellm export-gguf "$run/merged" "$run/q8_0.gguf" --type q8_0 > /dev/null
      evaluate_gguf "$run/q8_0.gguf" "$run/eval"
    fi
  done
  if [ ! -f "$OUT/spacy-ner$n.json" ]; then
    $PY "$HERE/stockmark_baselines.py" spacy-ner "$USER_DIR/train$n.jsonl" "$USER_DIR/dev.jsonl" "$USER_DIR/test.jsonl" \
      "$OUT/spacy-ner$n.json" --seconds "$BUDGET" --base ja_ginza --task "$TASK" > "$OUT/spacy-ner$n.log" 2>&1
  fi
done
$PY "$HERE/starting_model_table.py" "$OUT" $SIZES
