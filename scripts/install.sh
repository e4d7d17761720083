#!/usr/bin/env bash
# Install spacy-giellm with everything the demo and the tests use into .venv.
# The CPU build of torch comes first: an unpinned torch pulls GBs of CUDA wheels.
# llama-cpp-python compiles from source the first time (about 5 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

# About 4 GB are used: the venv (2 GB with CPU torch), llama-cpp-python's
# build, and, once the demo or the tests run, the dequantized Gemma base in
# ~/.cache/spacy-giellm (1.1 GB). Say so up front: pip's own "No space left
# on device" comes minutes in and does not say how much was needed.
free_kb=$(df -Pk . | awk 'NR == 2 {print $4}')
if [ -n "$free_kb" ] && [ "$free_kb" -lt 4000000 ]; then
    echo "install.sh: warning: $((free_kb / 1024)) MB free on the disk of $PWD; about 4 GB are needed (.venv 2 GB, the llama-cpp-python build, the base model cache 1.1 GB)" >&2
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0

# On CPUs with AMX (Sapphire Rapids and later, some EPYCs), llama.cpp's
# -march=native build uses its AMX kernels for quantized weights, and those
# crash the process (SIGSEGV in ggml_backend_amx_mul_mat, llama.cpp issue
# 20824; seen here with Gemma 3 Q8_0 / Q4_K_M). Build without them: GCC lets
# explicit -mno-* flags win over -march=native. The wheel is kept in our own
# folder, since pip's cache would hand back a build made with other flags.
if [ "$(uname -m)" = "x86_64" ] && grep -q -w amx_int8 /proc/cpuinfo 2>/dev/null; then
    wheels="${XDG_CACHE_HOME:-$HOME/.cache}/spacy-giellm/wheels/llama-cpp-no-amx"
    mkdir -p "$wheels"
    noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    CMAKE_ARGS="-DCMAKE_C_FLAGS='$noamx' -DCMAKE_CXX_FLAGS='$noamx'" \
        .venv/bin/pip wheel -q --no-deps --no-cache-dir --find-links "$wheels" -w "$wheels" "llama-cpp-python>=0.3"
    .venv/bin/pip install -q --no-deps --no-index --find-links "$wheels" llama-cpp-python
fi
.venv/bin/pip install -q -e ".[all,test]"
