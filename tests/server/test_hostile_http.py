"""Hostile HTTP traffic (issue #11): what a probing client sends gets a 4xx in the one error shape naming the
problem, a failure inside the server a JSON 500, and the OpenAPI document describes what the routes really
answer. Also the websocket handshake's `Origin` policy, `/metrics` behind keys and the body read timeout.

Default settings run against the shared server; the rest against one dedicated server with API keys, a short
body read timeout and an explicit origin list.
"""

import logging
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import pytest
import uvicorn
from fastapi import FastAPI
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from spiritserve.server.app import install_error_handlers
from tests.conftest import free_port, serve_process

FIXTURES = Path(__file__).parent.parent / "fixtures"
CLIP = FIXTURES / "espeak_16k_mono.flac"
KEY = "sk-hostile-test"
BODY_READ_TIMEOUT_S = 1.5
ALLOWED_ORIGIN = "https://app.example.com"
# The OpenAI-compatible routes (spiritserve/server/openai_routes.py) document OpenAI's error shape instead.
OPENAI_ROUTES = {"/v1/chat/completions", "/v1/audio/speech", "/v1/audio/transcriptions", "/v1/models",
                 "/v1/models/{model_id}"}  # fmt: skip
TEXT_REQUEST = {"inputs": [{"type": "text", "text": "hello"}], "output_modality": "text", "max_new_tokens": 2}


def error_of(response: httpx.Response) -> dict:
    """The one error shape, checked: {"error": {"type", "message"}} as JSON."""
    assert response.headers["content-type"] == "application/json", response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}, body
    return body["error"]


# --- client mistakes get a 4xx saying what is wrong ------------------------------------------------------------


def test_non_ascii_base64_audio_is_a_400_naming_the_field(client):
    for audio in ("é", "UklGRg==é"):
        inputs = [{"type": "speech", "audio_base64": audio}]
        response = client.post("/v1/generate", json={**TEXT_REQUEST, "inputs": inputs})
        assert response.status_code == 400, response.text
        assert "audio_base64" in error_of(response)["message"]


def test_a_seed_beyond_64_bits_is_a_422_naming_the_field(client):
    response = client.post("/v1/generate", json={**TEXT_REQUEST, "seed": 2**70})
    assert response.status_code == 422 and "seed" in error_of(response)["message"]
    form = {"seed": str(2**70), "response_format": "json"}
    upload = {"audio": (CLIP.name, CLIP.read_bytes(), "audio/flac")}
    response = client.post("/v1/speech/continue", files=upload, data=form)
    assert response.status_code == 422 and "seed" in error_of(response)["message"]
    assert client.post("/v1/generate", json={**TEXT_REQUEST, "seed": 2**63 - 1}).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 200_000,  # nested deeper than any parser recurses
        b'{"inputs": [{"type": "text", "text": "a"}], "seed": ' + b"1" * 5000 + b"}",  # int beyond 4300 digits
        b'{"inputs": [{"type": "text", "text": "\xe9"}]}',  # not UTF-8
    ],
    ids=["deeply-nested", "huge-integer", "latin-1"],
)
def test_bodies_that_cannot_be_parsed_get_a_4xx(client, body):
    response = client.post("/v1/generate", content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    error_of(response)


def test_a_wrong_method_gets_405_with_allow(client):
    for method, path, allowed in (("GET", "/v1/generate", "POST"), ("DELETE", "/healthz", "GET")):
        response = client.request(method, path)
        assert response.status_code == 405 and response.headers["allow"] == allowed
        error_of(response)


# --- a failure inside the server is a JSON 500 -----------------------------------------------------------------


@pytest.fixture()
def failing_app_url() -> Iterator[str]:
    """The service's error handlers on a real uvicorn on loopback, with one route that fails as a bug would."""
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/fails")
    async def fails() -> dict:
        raise RuntimeError("a bug with internal detail /srv/secret")

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_a_failure_inside_the_server_is_a_json_500_and_its_traceback_is_logged(failing_app_url, caplog):
    with caplog.at_level(logging.ERROR):
        response = httpx.get(f"{failing_app_url}/fails")
        assert response.status_code == 500
        error = error_of(response)
        assert error["type"] == "InternalServerError" and "/srv/secret" not in error["message"]
        assert any("GET /fails failed" in record.getMessage() for record in caplog.records)
        deadline = time.monotonic() + 10  # the server logs the traceback after the answer has left
        while not any(
            record.exc_info and "a bug with internal detail" in str(record.exc_info[1]) for record in caplog.records
        ):
            assert time.monotonic() < deadline, "no traceback was logged"
            time.sleep(0.05)


# --- the OpenAPI document -------------------------------------------------------------------------------------


def _refs(node) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _resolve(document: dict, reference: str):
    assert reference.startswith("#/"), reference
    target = document
    for part in reference[2:].split("/"):
        assert isinstance(target, dict) and part in target, f"{reference} does not resolve"
        target = target[part]
    return target


def _check_against_document(document: dict, path: str, method: str, response: httpx.Response) -> None:
    """What a schema-checking fuzzer does: the status is documented, and the body matches its schema."""
    documented = document["paths"][path][method.lower()]["responses"]
    assert str(response.status_code) in documented, f"{method} {path}: {response.status_code} is not documented"
    media_type = response.headers["content-type"].split(";")[0]
    content = documented[str(response.status_code)]["content"]
    assert media_type in content, f"{method} {path}: {media_type} is not documented for {response.status_code}"
    schema = {**content[media_type]["schema"], "components": document["components"]}
    jsonschema.validate(response.json(), schema, cls=jsonschema.Draft202012Validator)


def test_the_openapi_document_resolves_and_documents_audio_answers_and_errors(client):
    document = client.get("/openapi.json").json()
    references = set(_refs(document))
    assert references, "no $ref at all"
    for reference in references:
        _resolve(document, reference)
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)

    paths = document["paths"]
    error_schema = {"$ref": "#/components/schemas/ErrorResponse"}
    for route in ("/v1/generate", "/v1/speech/continue"):
        answer = paths[route]["post"]["responses"]["200"]["content"]
        assert answer["application/json"]["schema"] == {"$ref": "#/components/schemas/GenerationResponse"}, route
        assert answer["audio/wav"]["schema"]["format"] == "binary", route
        assert any(media.startswith("audio/pcm") for media in answer), route
    assert "audio/wav" in paths["/v1/synthesize"]["post"]["responses"]["200"]["content"]
    for route, operations in paths.items():
        for method, operation in operations.items():
            errors = {code: entry for code, entry in operation["responses"].items() if code[0] in "45"}
            assert {"401", "429", "500"} <= set(errors), (route, method)
            openai_route = route in OPENAI_ROUTES  # OpenAI's error shape, 400 for invalid values (no 422)
            for code, entry in errors.items():
                probes = {"/readyz": "Readiness", "/healthz": "Liveness"}  # a failing probe answers its own body
                probe = route in probes and code == "503"
                expected = {"$ref": f"#/components/schemas/{probes[route]}"} if probe else error_schema
                expected = {"$ref": "#/components/schemas/OpenAIErrorResponse"} if openai_route else expected
                assert entry["content"]["application/json"]["schema"] == expected, (route, method, code)
            if openai_route and method == "post":
                assert {"400", "404", "408", "413", "415", "503"} <= set(errors), (route, method)
            elif route.startswith("/v1/") and not openai_route:
                if method == "post":
                    assert {"400", "408", "413", "415", "422", "503"} <= set(errors), (route, method)
                assert "retry-after" in {name.lower() for name in errors["503"]["headers"]}
    assert "503" in paths["/readyz"]["get"]["responses"]

    # Real answers, checked against what the document says of them.
    upload = {"audio": ("notes.wav", b"hello, not audio" * 50, "audio/wav")}
    answers = [
        ("/v1/generate", "POST", client.post("/v1/generate", json={**TEXT_REQUEST, "top_p": 7})),
        ("/v1/generate", "POST", client.post("/v1/generate", content=b"[" * 100_000)),
        ("/v1/generate", "POST", client.post("/v1/generate", json=TEXT_REQUEST)),
        ("/v1/speech/continue", "POST", client.post("/v1/speech/continue", files=upload)),
        ("/v1/synthesize", "POST", client.post("/v1/synthesize", json={"tokens": "[Hu1] x"})),
        ("/readyz", "GET", client.get("/readyz")),
    ]
    for path, method, response in answers:
        _check_against_document(document, path, method, response)


# --- /metrics -------------------------------------------------------------------------------------------------


def test_metric_labels_hold_no_filesystem_paths(client, tiny_bundle):
    metrics = client.get("/metrics").text
    assert str(tiny_bundle) not in metrics
    assert set(re.findall(r'model_name="([^"]*)"', metrics)) == {"spirit-lm-base-7b"}  # the LM folder's name


# --- the websocket handshake's Origin (default policy, shared server) ----------------------------------------


def _realtime(url: str) -> str:
    return url.replace("http://", "ws://") + "/v1/realtime"


def _opens(url: str, origin: str | None, **options) -> bool:
    """Whether a websocket with this Origin gets a session; a refusal must be 403 with the error body."""
    try:
        with connect(url, origin=origin, open_timeout=30, **options) as websocket:
            assert '"session.created"' in websocket.recv(timeout=30)
            return True
    except InvalidStatus as refused:
        assert refused.response.status_code == 403
        body = refused.response.body.decode()
        assert "ForbiddenOriginError" in body and "SPIRITSERVE_ALLOWED_ORIGINS" in body, body
        return False


def test_pages_of_other_sites_cannot_open_the_websocket(server_url):
    realtime = _realtime(server_url)
    for origin in ("http://evil.example", "https://evil.example:8000", "null", "http://[bad"):
        assert not _opens(realtime, origin), origin


def test_own_pages_loopback_pages_and_non_browsers_can_open_the_websocket(server_url):
    realtime = _realtime(server_url)
    for origin in (None, server_url, "http://localhost:5173", "https://127.0.0.1", "http://[::1]:8080"):
        assert _opens(realtime, origin), origin
    # Served under a public name (Host: spiritserve.example:PORT): its own pages pass, other sites' do not.
    port = int(server_url.rsplit(":", 1)[1])
    public = f"ws://spiritserve.example:{port}/v1/realtime"
    for origin, opens in ((f"http://spiritserve.example:{port}", True), (f"http://other.example:{port}", False)):
        with socket.create_connection(("127.0.0.1", port)) as raw:
            assert _opens(public, origin, sock=raw) is opens, origin


# --- one dedicated server: API keys, a short body read timeout, an origin list ------------------------------


@pytest.fixture(scope="module")
def hardened_url(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        "SPIRITSERVE_API_KEYS": KEY,
        "SPIRITSERVE_BODY_READ_TIMEOUT_S": str(BODY_READ_TIMEOUT_S),
        "SPIRITSERVE_ALLOWED_ORIGINS": f"{ALLOWED_ORIGIN}, http://tools.example:9000",
    }
    with serve_process(tiny_bundle, tmp_path_factory, env) as (url, _):
        yield url


def authorized() -> dict:
    return {"Authorization": f"Bearer {KEY}"}


def test_metrics_need_the_key_when_keys_are_on(hardened_url):
    refused = httpx.get(f"{hardened_url}/metrics")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    error_of(refused)
    metrics = httpx.get(f"{hardened_url}/metrics", headers=authorized())
    assert metrics.status_code == 200 and "spiritserve_in_flight_requests" in metrics.text
    assert httpx.get(f"{hardened_url}/healthz").status_code == 200  # the probes stay public


def _raw_request(url: str, path: str, content_type: str, length: int, parts: list[bytes], pause_s: float):
    """Send the headers, then the body parts with a pause after each (a trickle or a stall) until the server
    answers, then read the answer until the server closes. Returns (raw answer, seconds from the headers to
    the answer)."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=BODY_READ_TIMEOUT_S + 20) as raw:
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {KEY}\r\n"
        raw.sendall(f"{head}Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n".encode())
        started = time.monotonic()
        for part in parts:
            raw.sendall(part)
            if select.select([raw], [], [], pause_s)[0]:  # the server answered
                break
        select.select([raw], [], [], BODY_READ_TIMEOUT_S + 20)
        elapsed = time.monotonic() - started
        answer = b""
        while chunk := raw.recv(65536):  # until the server closes the connection (a timeout here fails the test)
            answer += chunk
        return answer, elapsed


def _status_and_error(answer: bytes) -> tuple[int, dict, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, httpx.Response(status, content=body).json()["error"], head.decode().lower()


def test_a_stalled_body_gets_408_and_the_connection_is_closed(hardened_url):
    answer, elapsed = _raw_request(hardened_url, "/v1/generate", "application/json", 1000, [b'{"inputs": ['], 0)
    status, error, head = _status_and_error(answer)
    assert status == 408 and error["type"] == "RequestTimeoutError" and "1.5 s" in error["message"]
    assert "connection: close" in head
    assert BODY_READ_TIMEOUT_S - 0.1 <= elapsed <= BODY_READ_TIMEOUT_S + 5


def test_a_trickled_multipart_upload_gets_408(hardened_url):
    part = b'--x\r\nContent-Disposition: form-data; name="audio"; filename="a.flac"\r\nContent-Type: audio/flac\r\n\r\n'
    trickle = [part] + [b"\0" * 10] * 40  # 10 bytes every 0.1 s: it would take far longer than 1.5 s
    multipart = "multipart/form-data; boundary=x"
    answer, elapsed = _raw_request(hardened_url, "/v1/tokenize", multipart, 10**6, trickle, 0.1)
    status, error, _ = _status_and_error(answer)
    assert status == 408 and "did not arrive" in error["message"]
    assert BODY_READ_TIMEOUT_S - 0.1 <= elapsed <= BODY_READ_TIMEOUT_S + 2


def test_the_body_deadline_does_not_cut_a_long_generation(hardened_url):
    form = {"max_speech_seconds": "40", "seed": "1", "response_format": "json"}  # up to 1000 tokens: seconds
    upload = {"audio": (CLIP.name, CLIP.read_bytes(), "audio/flac")}
    started = time.monotonic()
    answered = httpx.post(
        f"{hardened_url}/v1/speech/continue", files=upload, data=form, headers=authorized(), timeout=120
    )
    assert answered.status_code == 200 and answered.json()["usage"]["audio_seconds"] > 20
    assert time.monotonic() - started > BODY_READ_TIMEOUT_S  # it did outlast the body deadline


def test_listed_origins_replace_the_loopback_default(hardened_url):
    realtime = _realtime(hardened_url)
    key = {"additional_headers": authorized()}
    for origin, opens in (
        (ALLOWED_ORIGIN, True),
        ("http://tools.example:9000", True),
        (None, True),
        (hardened_url, True),  # its own page
        ("http://localhost:5173", False),  # not listed
        ("https://app.example.com:8443", False),  # another port is another origin
        ("https://evil.example", False),
    ):
        assert _opens(realtime, origin, **key) is opens, origin
