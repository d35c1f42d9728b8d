"""Server VAD through the official SDK against the real server: a recorded spoken turn at 24 kHz is detected,
committed and answered by itself; noise as loud as the speech never starts a turn."""

import numpy as np

from tests.server.test_realtime import pcm16
from tests.server.test_realtime_openai import GA_SESSION, append, connection, events_until  # noqa: F401 (fixture)
from tests.test_vad import RECORDED, START_TOLERANCE_MS, speech_bounds_ms, white_noise_like

RATE = 24000
SPEECH = pcm16(RECORDED, RATE)  # the room's noise floor, "go forward ten meters", the noise floor
SILENCE = bytes(2 * RATE)  # one second
VAD = {"type": "server_vad", "silence_duration_ms": 300, "create_response": True, "interrupt_response": True}


def start_vad_session(connection) -> None:  # noqa: F811 (the fixture)
    events_until(connection, "session.created")
    session = {**GA_SESSION, "audio": {**GA_SESSION["audio"], "input": {"turn_detection": VAD}}}
    connection.session.update(session={**session, "max_response_seconds": 1, "seed": 4})
    events_until(connection, "session.updated")


def test_a_spoken_turn_is_detected_committed_and_answered(connection):  # noqa: F811 (the fixture)
    start_vad_session(connection)
    append(connection, SILENCE + SPEECH + SILENCE, chunk=RATE)  # half-second messages, as a microphone sends
    events = events_until(connection, "response.done")
    types = [event.type for event in events]
    assert types.count("input_audio_buffer.speech_started") == 1 and types.count("response.created") == 1
    order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
             "input_audio_buffer.committed", "response.created"]  # fmt: skip
    assert [types.index(kind) for kind in order] == sorted(types.index(kind) for kind in order)
    samples = np.frombuffer(SILENCE + SPEECH, "<i2").astype(np.float32) / 32768
    spoken_from_ms = speech_bounds_ms(samples, RATE)[0]
    started = next(event for event in events if event.type == "input_audio_buffer.speech_started")
    assert START_TOLERANCE_MS[0] <= started.audio_start_ms - spoken_from_ms <= START_TOLERANCE_MS[1]
    assert events[-1].response.status == "completed" and events[-1].response.usage.output_tokens > 0


def test_noise_as_loud_as_speech_never_starts_a_turn(connection):  # noqa: F811 (the fixture)
    start_vad_session(connection)
    speech = np.frombuffer(SPEECH, "<i2").astype(np.float32) / 32768
    noise = np.clip(white_noise_like(speech, 3, RATE), -1, 1)
    append(connection, (noise * 32767).astype("<i2").tobytes() + SILENCE, chunk=RATE)
    connection.input_audio_buffer.commit()  # answered after every append before it: their VAD events came first
    types = [event.type for event in events_until(connection, "input_audio_buffer.committed")]
    assert "input_audio_buffer.speech_started" not in types and types.count("input_audio_buffer.committed") == 1
