"""Cluster operations against a real server of its own: metrics on their own port, the load gauge that
autoscaling reads, JSON access logs without secrets, and liveness that fails once the LM engine dies (the
last test kills the engine, so this module's server is never shared)."""

import json
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest
from websockets.sync.client import connect

from tests.conftest import free_port, serve_process

KEY = "sk-ops-test"
AUTHORIZED = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def ops_server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    """(url, process, metrics url): keys on, JSON logs, metrics on a port of their own."""
    metrics_port = free_port()
    env = {"SPIRITSERVE_API_KEYS": KEY, "SPIRITSERVE_LOG_FORMAT": "json", "SPIRITSERVE_METRICS_PORT": str(metrics_port)}
    with serve_process(tiny_bundle, tmp_path_factory, env) as (url, process):
        yield url, process, f"http://127.0.0.1:{metrics_port}"


def gauge(metrics_url: str, name: str) -> float:
    for line in httpx.get(f"{metrics_url}/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def wait_for(condition, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def test_metrics_leave_the_api_port_for_their_own(ops_server):
    url, _, metrics_url = ops_server
    assert httpx.get(f"{url}/metrics", headers=AUTHORIZED).status_code == 404  # an Ingress cannot publish them
    body = httpx.get(f"{metrics_url}/metrics").text  # in-cluster scrapers send no key
    assert "spiritserve_requests_total" in body and "vllm:" in body  # ours and the engine's
    assert gauge(metrics_url, "spiritserve_engine_healthy") == 1


def test_the_load_gauge_counts_voice_sessions_as_well_as_requests(ops_server):
    url, _, metrics_url = ops_server
    assert gauge(metrics_url, "spiritserve_load") == 0
    with connect(f"ws{url.removeprefix('http')}/v1/realtime", additional_headers=AUTHORIZED) as socket:
        assert json.loads(socket.recv(timeout=30))["type"] == "session.created"
        assert gauge(metrics_url, "spiritserve_load") == 1  # no REST work at all, yet the pod is loaded
    wait_for(lambda: gauge(metrics_url, "spiritserve_load") == 0)


def test_access_lines_are_json_with_the_request_id_and_never_the_key(ops_server):
    url, process, _ = ops_server
    answer = httpx.get(f"{url}/v1/models", params={"api_key": KEY}, headers={"X-Request-ID": "trace-42"})
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "trace-42"
    made = httpx.get(f"{url}/v1/models", headers=AUTHORIZED).headers["x-request-id"]  # none sent: one is made
    hostile = httpx.get(f"{url}/v1/models", headers={**AUTHORIZED, "X-Request-ID": "a\tb" + "x" * 200})
    assert hostile.headers["x-request-id"] != "a\tb" + "x" * 200  # not echoed into logs as given

    def access_lines() -> dict:
        records = [json.loads(line) for line in process.log_path.read_text().splitlines() if line.startswith("{")]
        return {record.get("request_id"): record for record in records if record["name"] == "spiritserve.access"}

    wait_for(lambda: {"trace-42", made} <= access_lines().keys(), timeout_s=10)
    line = access_lines()["trace-42"]
    assert line["route"] == "/v1/models" and line["status"] == 200 and line["method"] == "GET"
    assert line["level"] == "INFO" and line["duration_ms"] >= 0
    assert KEY not in process.log_path.read_text()  # the query string (?api_key=) is never logged


def test_liveness_fails_once_the_engine_process_dies(ops_server):
    url, process, metrics_url = ops_server
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    engines = [child for child in psutil.Process(process.pid).children(recursive=True) if "EngineCore" in child.name()]
    assert engines, [child.name() for child in psutil.Process(process.pid).children(recursive=True)]
    for engine in engines:
        engine.send_signal(signal.SIGKILL)  # as the kernel's OOM killer would
    wait_for(lambda: httpx.get(f"{url}/healthz").status_code == 503)
    assert httpx.get(f"{url}/healthz").json() == {"status": "engine_failed"}  # so the kubelet restarts the pod
    assert httpx.get(f"{url}/readyz").status_code == 503
    assert gauge(metrics_url, "spiritserve_engine_healthy") == 0
