"""Shared fixtures: one tiny official-layout bundle and one real server (real vLLM engine) per session."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from spiritserve.checkpoints import make_tiny_bundle

FIXTURES = Path(__file__).parent / "fixtures"
SERVER_START_TIMEOUT_S = 600
# Small on purpose, so the limit tests need only small uploads.
SERVER_MAX_AUDIO_SECONDS = 20
SERVER_MAX_UPLOAD_BYTES = 2 * 2**20


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("checkpoints")
    make_tiny_bundle(root)
    return root


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def server_url(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """`spiritserve serve` in a subprocess on a loopback port, ready (engine started, warmed up)."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = {
        **os.environ,
        "SPIRITSERVE_MAX_AUDIO_SECONDS": str(SERVER_MAX_AUDIO_SECONDS),
        "SPIRITSERVE_MAX_UPLOAD_BYTES": str(SERVER_MAX_UPLOAD_BYTES),
    }
    command = [sys.executable, "-m", "spiritserve", "serve", "--checkpoints", str(tiny_bundle), "--port", str(port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {SERVER_START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


@pytest.fixture()
def client(server_url: str):
    with httpx.Client(base_url=server_url, timeout=120) as http:
        yield http
