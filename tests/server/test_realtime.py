"""`/v1/realtime` with a real websocket client against the real server (and its real vLLM engine).

Every server event is checked against the official SDK's pydantic types (`openai.types.realtime`)."""

import base64
import contextlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from spiritserve.resample import resample
from spiritserve.server.realtime_protocol import SERVER_EVENTS as SPIRITSERVE_EVENTS
from tests.conftest import SERVER_MAX_REALTIME_SESSIONS, SERVER_REALTIME_IDLE_TIMEOUT_S

FIXTURES = Path(__file__).parent.parent / "fixtures"
HOP = 960  # one vocoder hop (320 samples at 16 kHz) at the 24 kHz output rate
OUTPUT_RATE = 24000
SERVER_EVENTS = TypeAdapter(RealtimeServerEvent)
MANUAL_TURNS = {"input": {"turn_detection": None}}
# A spoken answer's events in GA order (deltas collapsed).
SPOKEN_ANSWER = [
    "response.created",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_audio.delta",
    "response.output_audio.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.done",
]


def pcm16(path: Path, rate: int = 16000) -> bytes:
    audio, source_rate = soundfile.read(path, dtype="float32", always_2d=True)
    audio = resample(audio.T, source_rate, rate).mean(axis=0)  # per channel, then mixed (the reference's order)
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


CLIP = pcm16(FIXTURES / "espeak_16k_mono.flac", 24000)  # the default input format: PCM16 at 24 kHz


class Session:
    """A thin test client: send events, read events until one of a type arrives."""

    def __init__(self, socket) -> None:
        self.socket = socket
        self.events: list[dict] = []

    def send(self, event: dict) -> None:
        self.socket.send(json.dumps(event))

    def receive(self, timeout: float = 60) -> dict:
        event = json.loads(self.socket.recv(timeout=timeout))
        SERVER_EVENTS.validate_python(event)  # the SDK's types, strictly: required fields and their types
        assert SPIRITSERVE_EVENTS.validate_python(event).model_dump(mode="json") == event  # our models, exactly
        self.events.append(event)
        return event

    def until(self, event_type: str, timeout: float = 120) -> list[dict]:
        """Events up to and including the first of `event_type`."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            event = self.receive(timeout=max(0.1, deadline - time.monotonic()))
            seen.append(event)
            if event["type"] == event_type:
                return seen

    def append(self, pcm: bytes, chunk: int = 16000) -> None:
        for start in range(0, len(pcm), chunk):
            self.send(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm[start : start + chunk]).decode()}
            )


def open_session(url: str):
    return connect(url.replace("http://", "ws://") + "/v1/realtime", max_size=2**24)


@pytest.fixture()
def session(server_url: str):
    with open_session(server_url) as socket:
        client = Session(socket)
        assert client.receive()["type"] == "session.created"
        yield client


def configure(session: Session, **fields) -> dict:
    fields.setdefault("type", "realtime")
    session.send({"type": "session.update", "session": fields})
    return session.until("session.updated")[-1]["session"]


def collapsed(types: list[str]) -> list[str]:
    """Event types with runs of the same type collapsed to one."""
    return [kind for index, kind in enumerate(types) if index == 0 or types[index - 1] != kind]


def commit_and_answer(session: Session) -> list[dict]:
    session.send({"type": "input_audio_buffer.commit"})
    assert session.until("input_audio_buffer.committed")[-1]["type"] == "input_audio_buffer.committed"
    session.send({"type": "response.create"})
    return session.until("response.done")


def audio_of(events: list[dict]) -> np.ndarray:
    chunks = [base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"]
    return np.frombuffer(b"".join(chunks), dtype="<i2")


def test_a_full_turn_streams_audio_bounded_by_its_budget(session):
    configure(session, max_response_seconds=1, seed=3, audio=MANUAL_TURNS)
    session.append(CLIP, chunk=24000)
    session.send({"type": "input_audio_buffer.commit"})
    committed = session.receive()
    assert committed["type"] == "input_audio_buffer.committed" and committed["previous_item_id"] is None
    session.send({"type": "response.create"})
    events = session.until("response.done")
    assert collapsed([event["type"] for event in events]) == SPOKEN_ANSWER
    done = events[-1]["response"]
    assert done["status"] == "completed" and 0 < done["usage"]["output_tokens"] <= 25  # 1 s of Hu tokens at most
    assert done["output"][0]["role"] == "assistant" and done["output"][0]["content"][0]["type"] == "output_audio"
    audio = audio_of(events)
    assert 0 < len(audio) <= OUTPUT_RATE and len(audio) % HOP == 0  # the 1 s budget bounds the audio itself
    # The answer's tokens are what the audio says: the units a budget cut are not reported (nor kept as context).
    assert done["units"].count("[Hu") == done["usage"]["output_tokens"]
    assert done["usage"]["output_audio_seconds"] == pytest.approx(len(audio) / OUTPUT_RATE)
    assert done["timings"]["first_delta_s"] <= done["timings"]["total_s"]


def test_a_second_turn_sees_the_first_in_its_prompt(session):
    configure(session, max_response_seconds=1, seed=4, audio=MANUAL_TURNS)
    session.append(CLIP, chunk=24000)
    first = commit_and_answer(session)[-1]["response"]["usage"]
    session.append(CLIP, chunk=24000)
    second = commit_and_answer(session)[-1]["response"]["usage"]
    # turn 2's prompt = turn 1's prompt + the model's answer + the new user speech
    assert second["input_tokens"] > first["input_tokens"] + first["output_tokens"]


def _running_requests(client) -> float:
    line = next(
        line for line in client.get("/metrics").text.splitlines() if line.startswith("vllm:num_requests_running{")
    )
    return float(line.rsplit(" ", 1)[1])


def test_cancel_mid_response_stops_deltas_and_frees_the_engine(session, client):
    configure(session, max_response_seconds=120, seed=5, audio=MANUAL_TURNS)  # 3000 tokens: many seconds here
    session.append(CLIP, chunk=24000)
    session.send({"type": "input_audio_buffer.commit"})
    session.send({"type": "response.create"})
    session.until("response.output_audio.delta")
    session.send({"type": "response.cancel"})
    done = session.until("response.done")[-1]["response"]
    assert done["status"] == "cancelled" and done["usage"]["output_tokens"] < 3000
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled", "error": None}
    deadline = time.monotonic() + 10
    while _running_requests(client) != 0.0:
        assert time.monotonic() < deadline, "the engine request kept running after the cancel"
        time.sleep(0.1)


def test_server_vad_ends_the_turn_and_new_speech_barges_in(session):
    vad = {"type": "server_vad", "silence_duration_ms": 300}  # create_response, interrupt_response: true by default
    configure(session, max_response_seconds=30, seed=6, audio={"input": {"turn_detection": vad}})
    silence = np.zeros(OUTPUT_RATE, dtype="<i2").tobytes()
    session.append(CLIP + silence, chunk=24000)  # speech, then a second of silence: the turn ends by itself
    events = session.until("response.output_audio.delta")
    types = [event["type"] for event in events]
    assert types.index("input_audio_buffer.speech_started") < types.index("input_audio_buffer.speech_stopped")
    assert types.index("input_audio_buffer.committed") < types.index("response.created")
    started, stopped = (
        next(e for e in events if e["type"] == f"input_audio_buffer.speech_{k}") for k in ("started", "stopped")
    )
    assert 0 <= started["audio_start_ms"] < stopped["audio_end_ms"] <= 1000 * len(CLIP + silence) // 2 // 24000
    session.append(CLIP[:48000])  # the user talks over the answer
    done = session.until("response.done")[-1]["response"]
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "turn_detected"


def test_text_output_streams_text_deltas(session):
    configure(session, output_modalities=["text"], max_output_tokens=8, seed=7, audio=MANUAL_TURNS)
    session.append(CLIP, chunk=24000)
    events = commit_and_answer(session)
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text and events[-1]["response"]["output"][0]["content"][0]["text"] == text
    assert next(e for e in events if e["type"] == "response.output_text.done")["text"] == text
    assert events[-1]["response"]["usage"]["output_tokens"] <= 8
    assert not any(e["type"] == "response.output_audio.delta" for e in events)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{not json", "invalid_json"),
        (json.dumps({"type": "conversation.explode"}), "invalid_event"),
        (json.dumps({"type": "input_audio_buffer.commit"}), "input_audio_buffer_commit_empty"),
        (json.dumps({"type": "response.cancel"}), "no_active_response"),
        (json.dumps({"type": "response.create"}), "empty_conversation"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": "!!"}), "invalid_audio"),
        (json.dumps({"type": "session.update", "session": {"temperature": 9}}), "invalid_session"),
        (
            json.dumps({"type": "session.update", "session": {"audio": {"output": {"voice": "nobody"}}}}),
            "invalid_session",
        ),
        (json.dumps({"type": "session.update", "session": {"output_modality": "text"}}), "invalid_session"),
        (
            json.dumps(
                {
                    "type": "session.update",
                    "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
                }
            ),
            "invalid_session",
        ),
        (json.dumps({"type": "session.update", "session": {"tools": [], "garbage": 1}}), "invalid_session"),
    ],
)
def test_protocol_errors_get_error_events_and_the_session_lives_on(session, message, code):
    session.socket.send(message)
    event = session.receive()
    assert event["type"] == "error" and event["error"]["code"] == code, event
    assert configure(session, seed=1)["seed"] == 1  # still serving


def test_binary_and_oversized_messages_get_error_events(session):
    session.socket.send(b"\x00\x01")
    assert session.receive()["error"]["code"] == "binary_not_supported"
    session.send({"type": "input_audio_buffer.append", "audio": "A" * (2**20 + 10)})
    assert session.receive()["error"]["code"] == "message_too_large"


def test_sessions_beyond_the_limit_are_refused_with_1013(server_url):
    with contextlib.ExitStack() as stack:
        for _ in range(SERVER_MAX_REALTIME_SESSIONS):
            assert Session(stack.enter_context(open_session(server_url))).receive()["type"] == "session.created"
        extra = Session(stack.enter_context(open_session(server_url)))
        with pytest.raises(ConnectionClosed) as closed:
            extra.receive()
        assert closed.value.rcvd.code == 1013 and "sessions" in closed.value.rcvd.reason


def test_idle_sessions_are_closed(session):
    event = session.receive(timeout=SERVER_REALTIME_IDLE_TIMEOUT_S + 10)
    assert event["type"] == "error" and event["error"]["code"] == "idle_timeout"
    with pytest.raises(ConnectionClosed) as closed:
        session.receive(timeout=5)
    assert closed.value.rcvd.code == 1000
