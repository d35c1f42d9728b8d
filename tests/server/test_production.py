"""Operator features against a real server of their own: API keys, admission control, metrics, and the
graceful drain on SIGTERM (which ends this module's server, so it runs last)."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.conftest import serve_process

FIXTURES = Path(__file__).parent.parent / "fixtures"
CLIP = FIXTURES / "espeak_16k_mono.flac"
KEY, OTHER_KEY, ROTATED_KEY = "sk-test-one", "sk-test-two", "sk-test-three"
MAX_IN_FLIGHT = 2
RATE_PER_MINUTE = 120


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keys_file = tmp_path_factory.mktemp("secrets") / "keys"
    keys_file.write_text(f"\n{OTHER_KEY}\n")
    return keys_file


@pytest.fixture(scope="module")
def production_server(tiny_bundle: Path, keys_file: Path, tmp_path_factory: pytest.TempPathFactory):
    """(url, process): `spiritserve serve` with keys (one inline, one from a file), 2 requests in flight,
    a per-key rate limit and a 60 s drain."""
    env = {
        "SPIRITSERVE_API_KEYS": KEY,
        "SPIRITSERVE_API_KEYS_FILE": str(keys_file),
        "SPIRITSERVE_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
        "SPIRITSERVE_RATE_LIMIT_PER_MINUTE": str(RATE_PER_MINUTE),
        "SPIRITSERVE_DRAIN_TIMEOUT_S": "60",
        # Sessions here wait through other work (the drain test's idle one until SIGTERM): production's timeout.
        "SPIRITSERVE_REALTIME_IDLE_TIMEOUT_S": "300",
    }
    with serve_process(tiny_bundle, tmp_path_factory, env) as (url, process):
        yield url, process


def authorized(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def upload() -> dict:
    return {"audio": (CLIP.name, CLIP.read_bytes(), "application/octet-stream")}


def test_keys_are_required_except_on_public_paths(production_server):
    url, _ = production_server
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert httpx.get(f"{url}/readyz").status_code == 200
    assert httpx.get(f"{url}/metrics").status_code == 401  # metrics need the key unless listed as public
    assert "spiritserve_in_flight_requests" in httpx.get(f"{url}/metrics", headers=authorized()).text
    missing = httpx.post(f"{url}/v1/tokenize", files=upload())
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(f"{url}/v1/tokenize", files=upload(), headers=authorized("sk-test-wrong"))
    assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]["message"]
    for key in (KEY, OTHER_KEY):  # inline and from the file
        assert httpx.post(f"{url}/v1/tokenize", files=upload(), headers=authorized(key)).status_code == 200


def test_a_rewritten_key_file_takes_effect_without_a_restart(production_server, keys_file):
    url, _ = production_server

    def wait_for_status(key: str, expected: int) -> None:
        deadline = time.monotonic() + 10  # the file is checked once a second
        while httpx.get(f"{url}/v1/models", headers=authorized(key)).status_code != expected:
            assert time.monotonic() < deadline, f"{key}: still not {expected}"
            time.sleep(0.3)

    assert httpx.get(f"{url}/v1/models", headers=authorized(ROTATED_KEY)).status_code == 401
    keys_file.write_text(f"{ROTATED_KEY}\n{OTHER_KEY}\n")  # a key added, as a Secret update does
    wait_for_status(ROTATED_KEY, 200)
    keys_file.write_text(f"{ROTATED_KEY}\n")  # and one revoked
    wait_for_status(OTHER_KEY, 401)
    assert httpx.get(f"{url}/v1/models", headers=authorized(KEY)).status_code == 200  # inline keys stay
    keys_file.write_text(f"\n{OTHER_KEY}\n")  # back to what the other tests expect
    wait_for_status(OTHER_KEY, 200)


def test_websocket_takes_the_key_as_a_subprotocol_or_in_the_query_for_browsers(production_server):
    ws = production_server[0].replace("http://", "ws://") + "/v1/realtime"
    for refused_attempt in ({}, {"subprotocols": ["spiritserve.realtime.v1", "spiritserve.key.sk-test-wrong"]}):
        with pytest.raises(InvalidStatus) as refused:
            connect(ws, **refused_attempt)
        assert refused.value.response.status_code == 403
    with connect(ws, subprotocols=["spiritserve.realtime.v1", f"spiritserve.key.{KEY}"]) as socket:
        assert socket.subprotocol == "spiritserve.realtime.v1"  # what a browser needs to keep the socket
        assert '"session.created"' in socket.recv(timeout=30)
    with connect(f"{ws}?api_key={KEY}") as socket:
        assert '"session.created"' in socket.recv(timeout=30)
    with connect(ws, additional_headers=authorized(OTHER_KEY)) as socket:
        assert '"session.created"' in socket.recv(timeout=30)


def test_the_page_sends_its_key_as_a_subprotocol_not_in_the_socket_url(production_server, browser):
    """Opened as /?api_key=KEY, the voice-chat page in Chromium gets a session; with a wrong key it shows why."""
    url, _ = production_server
    server = url.removeprefix("http://")
    for key, connects in ((KEY, True), ("sk-test-wrong", False)):
        page = browser.new_page()
        sockets = []
        page.on("websocket", lambda socket, opened=sockets: opened.append(socket.url))
        page.goto(f"{url}/?api_key={key}")
        page.click("#start")
        condition = "window.spiritserve.sessionId !== null" if connects else "window.spiritserve.lastError !== null"
        page.wait_for_function(f"() => {condition}", timeout=30_000)
        assert sockets == [f"ws://{server}/v1/realtime"]  # the key is not in the URL that access logs keep
        if connects:
            assert page.evaluate("() => window.spiritserve.lastError") is None
        page.close()


def test_the_chat_client_sends_its_key(production_server, tmp_path):
    ws = production_server[0].replace("http://", "ws://") + "/v1/realtime"
    command = [sys.executable, "-m", "spiritserve", "chat", str(CLIP), "--url", ws, "--text", "--out", str(tmp_path)]
    environment = {key: value for key, value in os.environ.items() if key != "SPIRITSERVE_API_KEY"}
    refused = subprocess.run(command, capture_output=True, text=True, timeout=180, env=environment)
    assert refused.returncode != 0 and "HTTP 403" in refused.stderr and "api-key" in refused.stderr
    answered = subprocess.run(
        command, capture_output=True, text=True, timeout=180, env={**environment, "SPIRITSERVE_API_KEY": KEY}
    )
    assert answered.returncode == 0 and "turn 1: completed" in answered.stdout, answered.stderr[-2000:]


def test_over_capacity_requests_get_503_and_nothing_in_flight_is_lost(production_server):
    url, _ = production_server
    long_form = {"max_speech_seconds": "20", "seed": "1", "response_format": "json"}

    async def scenario():
        async with httpx.AsyncClient(base_url=url, headers=authorized(), timeout=120) as http:
            running = [
                asyncio.create_task(http.post("/v1/speech/continue", files=upload(), data=long_form))
                for _ in range(MAX_IN_FLIGHT)
            ]
            deadline = time.monotonic() + 60
            while "spiritserve_in_flight_requests 2.0" not in (await http.get("/metrics")).text:
                assert time.monotonic() < deadline, "the long requests never got in flight"
                await asyncio.sleep(0.05)
            refused = await http.post("/v1/speech/continue", files=upload(), data=long_form)
            return refused, await asyncio.gather(*running)

    refused, completed = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "in flight" in refused.json()["error"]["message"]
    for response in completed:  # the requests already in flight finished whole
        assert response.status_code == 200 and response.json()["finish_reason"] == "length"
        assert response.json()["usage"]["audio_seconds"] > 19  # the whole 20 s budget (less at most one unit)


def test_requests_beyond_the_per_key_rate_get_429(production_server):
    url, _ = production_server
    statuses = []
    with httpx.Client(base_url=url, headers=authorized(OTHER_KEY), timeout=30) as http:
        for _ in range(RATE_PER_MINUTE * 10):  # the bucket refills 2 per second: a slow machine needs more tries
            response = http.post("/v1/synthesize", json={"tokens": "[Hu1]", "predict_durations": False})
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert int(response.headers["retry-after"]) >= 1
                break
    # the first ones passed (not all RATE_PER_MINUTE: the bucket may be partly drained by earlier tests' requests)
    assert statuses[-1] == 429 and statuses.count(200) >= RATE_PER_MINUTE // 2


def test_operator_metrics_are_exported(production_server):
    url, _ = production_server
    metrics = httpx.get(f"{url}/metrics", headers=authorized()).text
    for series in (
        "spiritserve_time_to_first_audio_seconds_bucket",
        "spiritserve_real_time_factor_bucket",
        'spiritserve_generated_tokens_total{modality="speech"}',
        'spiritserve_queue_depth{stage="speech_tokenizer"}',
        'spiritserve_queue_depth{stage="vocoder"}',
        "spiritserve_in_flight_requests",
        "spiritserve_batch_size_bucket",
        "spiritserve_queue_wait_seconds_bucket",
        "spiritserve_realtime_sessions",
        "vllm:kv_cache_usage_perc",
        "vllm:num_requests_waiting",
    ):
        assert series in metrics, series
    refused = [line for line in metrics.splitlines() if line.startswith("spiritserve_requests_total{")]
    assert any('status="401"' in line for line in refused)  # refused before routing: route "unmatched"


def test_sigterm_lets_running_work_finish_moves_sessions_away_then_exits_0(production_server):
    """The drain: a long REST generation and a voice answer already running both finish; an idle voice session
    is closed at once with 1012 (reconnect elsewhere); a new turn on the busy session is refused; exit 0."""
    url, process = production_server
    # 3000 tokens, and 1500 for the voice answer: each still running at SIGTERM, the REST one the longer, so the
    # server is still up when the voice session has moved away
    form = {"max_speech_seconds": "120", "seed": "2", "response_format": "json"}
    socket_url = f"ws{url.removeprefix('http')}/v1/realtime"

    async def next_event(socket, event_type: str) -> dict:
        while (event := json.loads(await asyncio.wait_for(socket.recv(), 60)))["type"] != event_type:
            pass
        return event

    async def scenario():
        async with (
            httpx.AsyncClient(base_url=url, headers=authorized(), timeout=120) as http,
            ws_connect(socket_url, additional_headers=authorized(), max_size=None) as idle,
            ws_connect(socket_url, additional_headers=authorized(), max_size=None) as busy,
        ):
            await busy.send(json.dumps({"type": "session.update", "session": {
                "audio": {"input": {"turn_detection": None}}, "max_response_seconds": 60, "seed": 5}}))  # fmt: skip
            await busy.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello"}]}}))  # fmt: skip
            await busy.send(json.dumps({"type": "response.create"}))
            await next_event(busy, "response.output_audio.delta")  # the answer is running
            long_request = asyncio.create_task(http.post("/v1/speech/continue", files=upload(), data=form))
            deadline = time.monotonic() + 60
            while "spiritserve_in_flight_requests 1.0" not in (await http.get("/metrics")).text:
                assert time.monotonic() < deadline, "the long request never got in flight"
                await asyncio.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as idle_closed:
                await next_event(idle, "never")
            await busy.send(json.dumps({"type": "response.create", "event_id": "late-turn"}))
            refusal = await next_event(busy, "error")
            answer = await next_event(busy, "response.done")
            with pytest.raises(ConnectionClosed) as busy_closed:
                await next_event(busy, "never")
            ready = await http.get("/readyz")
            refused = await http.post("/v1/tokenize", files=upload())
            return idle_closed.value, refusal, answer, busy_closed.value, ready, refused, await long_request

    idle_closed, refusal, answer, busy_closed, ready, refused, finished = asyncio.run(scenario())
    assert idle_closed.rcvd.code == 1012  # service restart: the client reconnects, to another replica
    assert refusal["error"]["code"] == "server_shutting_down" and refusal["error"]["event_id"] == "late-turn"
    assert answer["response"]["status"] == "completed"  # the running answer was not cut
    assert answer["response"]["usage"]["output_audio_seconds"] > 59
    assert busy_closed.rcvd.code == 1012  # and then that session moves on too
    assert ready.status_code == 503 and ready.json()["draining"] is True
    assert refused.status_code == 503 and "shutting down" in refused.json()["error"]["message"]
    assert finished.status_code == 200 and finished.json()["finish_reason"] == "length"
    assert finished.json()["usage"]["audio_seconds"] > 119  # the whole 120 s budget (less at most one unit)
    assert process.wait(timeout=60) == 0
