#!/usr/bin/env bash
# Install spacy-giellm with everything the demo and the tests use into .venv.
# The CPU build of torch comes first: an unpinned torch pulls GBs of CUDA wheels.
# llama-cpp-python compiles from source the first time (about 5 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[all,test]"
