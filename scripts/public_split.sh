#!/usr/bin/env bash
# The fixed split of the public corpora that gemma_measure.sh and
# gemma_trimmed.sh share: stockmark NER + jrte sentiment converted, then
# 200 dev and 500 test sentences per corpus, the rest train (seed 0).
#   scripts/public_split.sh NER_JSON PN_TSV OUT   ->  OUT/split/{train,dev,test}.jsonl
set -euo pipefail
PY=${PYTHON:-python}
mkdir -p "$3"
$PY -m spacy_giellm convert stockmark-ner "$1" "$3/ner.jsonl"
$PY -m spacy_giellm convert jrte-pn "$2" "$3/sentiment.jsonl"
$PY -m spacy_giellm mix ner-ja="$3/ner.jsonl" sentiment-ja="$3/sentiment.jsonl" \
  --output "$3/split" --dev 200 --test 500 --seed 0 | tee "$3/split.json"
