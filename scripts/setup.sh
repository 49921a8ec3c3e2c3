#!/usr/bin/env bash
# Create .venv (or $HARNESS_VENV) and install the harness with torch pinned by constraints.txt.
# Where torch==2.13.0 and torchvision==0.28.0 come from is HARNESS_TORCH (default auto):
#   cpu   PyTorch's CPU index ($HARNESS_TORCH_INDEX, default https://download.pytorch.org/whl/cpu):
#         CPU builds, no NVIDIA libraries. auto takes it on Linux when nvidia-smi lists no GPU and
#         the index answers.
#   pypi  pip's configured indexes: on plain PyPI the Linux wheel is the CUDA build (with several GB
#         of NVIDIA libraries), the macOS and Windows wheels are CPU builds. auto takes it when a GPU
#         is listed, off Linux, and (with a warning) when a CPU-only Linux machine cannot reach the
#         CPU index.
# A torch already in the venv that satisfies the pins is kept, e.g. a CUDA build installed first.
# faiss: faiss-cpu comes with the project; with CUDA, HARNESS_FAISS_GPU=1 swaps in faiss-gpu (both
# install the same `faiss` module, so only one may be present), and PatchCore searches on the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${HARNESS_VENV:-.venv}"
CPU_INDEX="${HARNESS_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
PIP=("$VENV/bin/python" -m pip)

has_gpu() {
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1
}

# Exit status 0 when the URL answers; otherwise the reason on stderr.
answers() {
    python3 - "$1" <<'EOF'
import sys
import urllib.request

try:
    urllib.request.urlopen(sys.argv[1], timeout=15).close()
except Exception as error:
    sys.exit(f"{type(error).__name__}: {error}")
EOF
}

torch_source() {
    case "${HARNESS_TORCH:-auto}" in
        cpu | pypi) echo "$HARNESS_TORCH" ;;
        auto)
            if [ "$(uname -s)" != Linux ] || has_gpu; then
                echo pypi
            elif reason=$(answers "$CPU_INDEX/torch/" 2>&1); then
                echo cpu
            else
                echo "setup.sh: no GPU listed, but PyTorch's CPU index $CPU_INDEX cannot be reached ($reason)." >&2
                echo "setup.sh: torch comes from pip's configured indexes instead; from plain PyPI that is the CUDA build." >&2
                echo "setup.sh: HARNESS_TORCH=cpu HARNESS_TORCH_INDEX=<a mirror of the CPU index> avoids it." >&2
                echo pypi
            fi
            ;;
        *)
            echo "setup.sh: HARNESS_TORCH=$HARNESS_TORCH: expected auto, cpu or pypi" >&2
            exit 2
            ;;
    esac
}

torch_from=$(torch_source)
python3 -m venv "$VENV"
"${PIP[@]}" install --quiet --upgrade pip
if [ "$torch_from" = cpu ]; then
    echo "setup.sh: torch from $CPU_INDEX (CPU build)"
    "${PIP[@]}" install --quiet -c constraints.txt torch torchvision --index-url "$CPU_INDEX"
fi
"${PIP[@]}" install --quiet -c constraints.txt -e ".[test]"
if [ "${HARNESS_FAISS_GPU:-0}" = "1" ]; then
    "${PIP[@]}" uninstall --quiet --yes faiss-cpu
    "${PIP[@]}" install --quiet -c constraints.txt faiss-gpu
fi
"$VENV/bin/python" -c "import torch; print('torch', torch.__version__, '(CUDA ' + torch.version.cuda + ' build)' if torch.version.cuda else '(CPU build)')"
