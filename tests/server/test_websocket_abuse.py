"""Hostile websocket frames (issue #11): whatever a client sends on `/v1/realtime`, a frame the server cannot
parse or use gets an `error` event and the session lives on (the protocol's promise). Real client, real server.
"""

import base64
import json

import pytest
from websockets.sync.client import connect


@pytest.fixture()
def websocket(server_url: str):
    with connect(server_url.replace("http://", "ws://") + "/v1/realtime", max_size=2**24) as socket:
        assert json.loads(socket.recv(timeout=30))["type"] == "session.created"
        yield socket


def receive(websocket) -> dict:
    return json.loads(websocket.recv(timeout=30))


def assert_session_lives_on(websocket) -> None:
    websocket.send(json.dumps({"type": "input_audio_buffer.clear"}))
    assert receive(websocket)["type"] == "input_audio_buffer.cleared"


@pytest.mark.parametrize(
    ("frame", "code", "names"),
    [
        ("[" * 200_000, "invalid_json", "nested too deeply"),  # the JSON parser's recursion limit
        ("{" * 1000 + "}" * 1000, "invalid_json", "not valid JSON"),
        ("1" * 5000, "invalid_json", "digits"),  # Python refuses integers of more than 4300 digits
        ('{"type": "input_audio_buffer.append", "audio": "é"}', "invalid_audio", "base64"),
        ('{"type": "input_audio_buffer.append", "audio": "AAAAé="}', "invalid_audio", "base64"),
        ('{"type": "session.update", "session": {"seed": 1180591620717411303424}}', "invalid_session", "seed"),
        ('{"type": "session.update", "session": ' + "[" * 900 + "]" * 900 + "}", "invalid_event", "session"),
        ('{"type": "response.create", "event_id": "' + "x" * 200 + '"}', "invalid_event", "event_id"),
        ("null", "invalid_event", "object"),
    ],
    ids=[
        "nested-200k",
        "nested-objects",
        "huge-integer",
        "non-ascii-base64",
        "non-ascii-in-base64",
        "seed-beyond-64-bits",
        "nested-session",
        "long-event-id",
        "null",
    ],
)
def test_frames_the_server_cannot_use_get_an_error_event_and_the_session_lives_on(websocket, frame, code, names):
    websocket.send(frame)
    event = receive(websocket)
    assert event["type"] == "error" and event["error"]["code"] == code, event
    assert names in event["error"]["message"], event
    assert_session_lives_on(websocket)


def test_a_session_survives_a_burst_of_hostile_frames_and_still_answers(websocket):
    hostile = ["[" * 200_000, "1" * 5000, '{"type": "input_audio_buffer.append", "audio": "é"}', "]", ""] * 3
    for frame in hostile:
        websocket.send(frame)
    assert [receive(websocket)["type"] for _ in hostile] == ["error"] * len(hostile)
    silence = base64.b64encode(b"\0" * 3200).decode()  # 100 ms of PCM16 still goes into the buffer
    websocket.send(json.dumps({"type": "input_audio_buffer.append", "audio": silence}))
    assert_session_lives_on(websocket)
