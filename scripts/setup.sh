#!/usr/bin/env bash
# Create .venv and install the harness with torch pinned by constraints.txt (never a CUDA torch here).
# GPU users: install your CUDA torch==2.13.0 / torchvision==0.28.0 into the venv first; the pins then match it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test]"
.venv/bin/python -c "import torch; print('torch', torch.__version__)"
