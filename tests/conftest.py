"""Shared fixtures: tiny official-layout bundles and real servers (each with a real vLLM engine)."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from spiritserve.tiny import make_tiny_bundle

FIXTURES = Path(__file__).parent / "fixtures"
SERVER_START_TIMEOUT_S = 600
# Small on purpose, so the limit tests need only small uploads.
SERVER_MAX_AUDIO_SECONDS = 20
SERVER_MAX_UPLOAD_BYTES = 2 * 2**20
SERVER_MAX_REALTIME_SESSIONS = 3
SERVER_REALTIME_IDLE_TIMEOUT_S = 6


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("checkpoints")
    make_tiny_bundle(root)
    return root


@pytest.fixture(scope="session")
def tiny_expressive_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only for tests: copy it before changing anything."""
    root = tmp_path_factory.mktemp("expressive-checkpoints")
    make_tiny_bundle(root, variant="expressive")
    return root


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve_process(
    root: Path, tmp_path_factory: pytest.TempPathFactory, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`spiritserve serve` in a subprocess on a loopback port, ready (engine started, warmed up): (url, process).
    `env` adds to or overrides the test settings below; the server is stopped (SIGTERM) on exit."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = {
        **os.environ,
        "SPIRITSERVE_MAX_AUDIO_SECONDS": str(SERVER_MAX_AUDIO_SECONDS),
        "SPIRITSERVE_MAX_UPLOAD_BYTES": str(SERVER_MAX_UPLOAD_BYTES),
        # A wider batching window than production's 5 ms, so concurrent test requests reliably share batches.
        "SPIRITSERVE_BATCH_MAX_WAIT_MS": "30",
        "SPIRITSERVE_REALTIME_MAX_SESSIONS": str(SERVER_MAX_REALTIME_SESSIONS),
        "SPIRITSERVE_REALTIME_IDLE_TIMEOUT_S": str(SERVER_REALTIME_IDLE_TIMEOUT_S),
        **(env or {}),
    }
    command = [sys.executable, "-m", "spiritserve", "serve", "--checkpoints", str(root), "--port", str(port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    process.log_path = log_path  # what the server printed, for tests that read its logs
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
        yield url, process
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen | None) -> None:
    """SIGTERM to a process started with its own session (and its children), SIGKILL if it lingers a minute."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextlib.contextmanager
def start_server(
    root: Path, tmp_path_factory: pytest.TempPathFactory, env: dict[str, str] | None = None
) -> Iterator[httpx.Client]:
    """`serve_process`, answered through an httpx client on its URL."""
    with serve_process(root, tmp_path_factory, env) as (url, _), httpx.Client(base_url=url, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """The base-variant server, shared by the whole session (one vLLM engine)."""
    with start_server(tiny_bundle, tmp_path_factory) as client:
        yield client


@pytest.fixture(scope="session")
def server_url(server: httpx.Client) -> str:
    return str(server.base_url).rstrip("/")


@pytest.fixture()
def client(server: httpx.Client) -> httpx.Client:
    return server
