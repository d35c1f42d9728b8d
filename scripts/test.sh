#!/usr/bin/env bash
# Installs (if needed) and runs the whole test suite: lint, unit tests, and end-to-end tests against a real
# server with a real vLLM engine on a tiny official-layout bundle.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
export HF_HUB_OFFLINE=1  # nothing may reach a model hub, in tests as in production
.venv/bin/ruff check spiritserve tests
.venv/bin/python -m pytest -q "$@"
