#!/usr/bin/env bash
# Create .venv and install the harness with torch pinned by constraints.txt (never a CUDA torch here).
# GPU users: install your CUDA torch==2.13.0 / torchvision==0.28.0 into the venv first; the pins then match it.
# faiss: faiss-cpu comes with the project; with CUDA, HARNESS_FAISS_GPU=1 swaps in faiss-gpu (both
# install the same `faiss` module, so only one may be present), and PatchCore searches on the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test]"
if [ "${HARNESS_FAISS_GPU:-0}" = "1" ]; then
    .venv/bin/python -m pip uninstall --quiet --yes faiss-cpu
    .venv/bin/python -m pip install --quiet -c constraints.txt faiss-gpu
fi
.venv/bin/python -c "import torch; print('torch', torch.__version__)"
