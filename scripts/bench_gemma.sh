#!/usr/bin/env bash
# The real-model speed table (benchmarks/decoding-speed.md): a Gemma 3 270M fine-tuned for
# stockmark NER (merged HF dir and its GGUFs), on held-out sentences, all
# cores, wall clock (run it on a quiet machine).
#   scripts/bench_gemma.sh MERGED_DIR GGUF_DIR TEST.jsonl OUT [N]
# GGUF_DIR holds q8_0.gguf, f16.gguf, Q4_K_M.gguf (export-gguf --type ...).
set -euo pipefail
MERGED=$1
GGUFS=$2
TEST=$3
OUT=$4
N=${5:-100}
PY=${PYTHON:-python}
THREADS=$(nproc)
mkdir -p "$OUT"
common=(--texts "$TEST" --task ner-ja --batch-size 8 --max-new-tokens 96 --threads "$THREADS" --repeat 1)
# everything, on the default export (Q8_0)
$PY -m spacy_giellm bench --backend gguf --gguf "$GGUFS/q8_0.gguf" --n "$N" "${common[@]}" \
  --step batching --step drafting --step constrained --step limits --step ginza --json "$OUT/q8_0.json"
# speed and entity F of the other exports and of the HF model
for t in f16 Q4_K_M; do
  $PY -m spacy_giellm bench --backend gguf --gguf "$GGUFS/$t.gguf" --n "$N" "${common[@]}" --step limits --json "$OUT/$t.json"
done
# the transformers backend is the GPU path: on a CPU 40 docs are enough
$PY -m spacy_giellm bench --backend hf --model "$MERGED" --n 40 "${common[@]}" --step limits --json "$OUT/hf.json"
