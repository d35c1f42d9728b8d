#!/usr/bin/env bash
# Installs (if needed) and runs the whole test suite: lint, unit tests, and end-to-end tests against a real
# server with a real vLLM engine on a tiny official-layout bundle; plus, without arguments, the Python 3.12 job.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
# The browser test (tests/server/test_web.py) drives Debian's Chromium through Playwright.
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "scripts/test.sh: Chromium is missing and only root can install it: sudo apt-get install -y chromium" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq chromium
fi
export HF_HUB_OFFLINE=1  # nothing may reach a model hub, in tests as in production
.venv/bin/ruff check spiritserve tests
.venv/bin/python -m mypy  # strict on the modules pyproject.toml's [tool.mypy] lists
# Python 3.12, the CUDA image's: module imports and the vLLM-free unit tests (its own cached venv). With the whole
# suite only, not when arguments pick tests.
[ "$#" -gt 0 ] || scripts/test-py312.sh
.venv/bin/python -m pytest -q "$@"
