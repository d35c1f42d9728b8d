"""`/v1/realtime` with OpenAI's own SDK (`client.realtime.connect`) against the real server: GA events end to end."""

import base64
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from openai import OpenAI

from spiritserve.server import g711
from tests.server.test_realtime import CLIP, SERVER_EVENTS, SPIRITSERVE_EVENTS, SPOKEN_ANSWER, collapsed, pcm16

CLIP_PATH = Path(__file__).parent.parent / "fixtures" / "espeak_16k_mono.flac"
MODEL = "spirit-lm-base-7b"
GA_SESSION = {
    "type": "realtime",
    "output_modalities": ["audio"],
    "audio": {
        "input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None},
        "output": {"format": {"type": "audio/pcm", "rate": 24000}},
    },
}


@pytest.fixture()
def connection(server_url: str):
    client = OpenAI(base_url=f"{server_url}/v1", api_key="unused")
    with client.realtime.connect(model=MODEL) as connection:
        yield connection


def events_until(connection, event_type: str, limit: int = 10_000) -> list:
    """Server events, parsed by the SDK and checked strictly against its types, up to the first of `event_type`."""
    events = []
    for _ in range(limit):
        raw = json.loads(connection.recv_bytes())
        SERVER_EVENTS.validate_python(raw)
        assert SPIRITSERVE_EVENTS.validate_python(raw).model_dump(mode="json") == raw  # our models, exactly
        events.append(connection.parse_event(json.dumps(raw)))
        if events[-1].type == event_type:
            return events
    raise AssertionError(f"no {event_type} in {limit} events")


def append(connection, data: bytes, chunk: int = 24000) -> None:
    for start in range(0, len(data), chunk):
        connection.input_audio_buffer.append(audio=base64.b64encode(data[start : start + chunk]).decode())


def test_the_sdk_configures_a_24khz_session_and_gets_the_effective_one(connection):
    created = events_until(connection, "session.created")[-1]
    assert created.session.type == "realtime" and created.session.audio.input.format.rate == 24000
    update = {**GA_SESSION, "instructions": "Answer briefly.", "max_output_tokens": 50, "max_response_seconds": 1,
              "tools": [], "tracing": "auto", "include": ["item.input_audio_transcription.logprobs"],
              "tool_choice": "auto"}  # fmt: skip
    connection.session.update(session=update)
    updated = events_until(connection, "session.updated")[-1]
    session = updated.session
    assert session.output_modalities == ["audio"] and session.instructions == "Answer briefly."
    assert session.audio.input.format.type == "audio/pcm" and session.audio.input.format.rate == 24000
    assert session.audio.input.turn_detection is None and session.max_output_tokens == 50
    assert session.audio.output.voice  # the vocoder speaker answering
    assert sorted(updated.ignored_fields) == ["include", "tool_choice", "tools", "tracing"]  # accepted, not acted on


def test_commit_then_response_create_streams_24khz_audio(connection):
    events_until(connection, "session.created")
    connection.session.update(session={**GA_SESSION, "max_response_seconds": 1, "seed": 3})
    events_until(connection, "session.updated")
    append(connection, CLIP)
    connection.input_audio_buffer.commit()
    committed = events_until(connection, "input_audio_buffer.committed")[-1]
    assert committed.item_id.startswith("item_")
    connection.response.create()  # the SDK's usual next step: no response_already_active any more
    events = events_until(connection, "response.done")
    assert collapsed([event.type for event in events]) == SPOKEN_ANSWER
    audio = np.frombuffer(
        b"".join(base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta"), "<i2"
    )
    done = events[-1].response
    assert done.status == "completed" and done.usage.output_tokens > 0
    # 24 kHz PCM: 24/16 of the model's 16 kHz answer, exactly (whole vocoder hops of 320 samples at 16 kHz).
    model_samples = round(done.usage.model_extra["output_audio_seconds"] * 16000)
    assert model_samples > 0 and model_samples % 320 == 0 and len(audio) == model_samples * 3 // 2


def test_server_vad_turn_creates_a_response_and_speech_interrupts_it(connection):
    events_until(connection, "session.created")
    vad = {"type": "server_vad", "silence_duration_ms": 300, "create_response": True, "interrupt_response": True}
    session = {**GA_SESSION, "audio": {**GA_SESSION["audio"], "input": {"turn_detection": vad}}}
    connection.session.update(session={**session, "max_response_seconds": 30, "seed": 6})
    assert events_until(connection, "session.updated")[-1].session.audio.input.turn_detection.silence_duration_ms == 300
    append(connection, CLIP + bytes(48000))  # speech, then a second of silence: the server ends the turn
    events = events_until(connection, "response.output_audio.delta")
    types = [event.type for event in events]
    assert types.index("input_audio_buffer.speech_stopped") < types.index("input_audio_buffer.committed")
    assert types.index("input_audio_buffer.committed") < types.index("response.created")
    append(connection, CLIP[:48000])  # barge-in
    done = events_until(connection, "response.done")[-1].response
    assert done.status == "cancelled" and done.status_details.reason == "turn_detected"


def test_server_vad_without_create_response_waits_for_response_create(connection):
    events_until(connection, "session.created")
    vad = {"type": "server_vad", "silence_duration_ms": 300, "create_response": False}
    connection.session.update(session={"audio": {"input": {"turn_detection": vad}}, "max_response_seconds": 1})
    events_until(connection, "session.updated")
    append(connection, CLIP + bytes(48000))
    events = events_until(connection, "input_audio_buffer.committed")
    connection.response.create()
    events += events_until(connection, "response.done")
    types = [event.type for event in events]
    assert types.count("response.created") == 1 and events[-1].response.status == "completed"


def test_mulaw_in_and_out(connection):
    events_until(connection, "session.created")
    mulaw = {"type": "audio/pcmu"}
    update = {"audio": {"input": {"format": mulaw, "turn_detection": None}, "output": {"format": mulaw}},
              "max_response_seconds": 1, "seed": 3}  # fmt: skip
    connection.session.update(session=update)
    session = events_until(connection, "session.updated")[-1].session
    assert session.audio.input.format.type == session.audio.output.format.type == "audio/pcmu"
    clip = g711.encode_mulaw(np.frombuffer(pcm16(CLIP_PATH, 8000), "<i2"))
    append(connection, clip, chunk=8000)
    connection.input_audio_buffer.commit()
    events_until(connection, "input_audio_buffer.committed")
    connection.response.create()
    events = events_until(connection, "response.done")
    data = b"".join(base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta")
    done = events[-1].response
    model_samples = round(done.usage.model_extra["output_audio_seconds"] * 16000)
    assert done.status == "completed" and len(data) == model_samples // 2 > 0  # one byte per 8 kHz sample
    assert np.abs(g711.decode_mulaw(data).astype(np.int32)).max() > 0


def test_g711_matches_known_values_and_round_trips():
    # ITU-T G.711 / Sun g711.c reference points.
    assert g711.encode_mulaw(np.array([0, -1, 32767, -32768, 1000], np.int16)) == bytes([0xFF, 0x7E, 0x80, 0x00, 0xCE])
    assert g711.decode_mulaw(bytes([0xFF, 0x7F, 0x80, 0x00, 0xCE])).tolist() == [0, 0, 32124, -32124, 988]
    assert g711.encode_alaw(np.array([0, -1, 32767, -32768, 1000], np.int16)) == bytes([0xD5, 0x55, 0xAA, 0x2A, 0xFA])
    assert g711.decode_alaw(bytes([0xD5, 0x55, 0xAA, 0x2A, 0xFA])).tolist() == [8, -8, 32256, -32256, 1008]
    every = np.arange(-32768, 32768, dtype=np.int16)
    for encode, decode in ((g711.encode_mulaw, g711.decode_mulaw), (g711.encode_alaw, g711.decode_alaw)):
        codes = bytes(range(256))
        assert decode(encode(decode(codes))).tolist() == decode(codes).tolist()  # every code's value is exact
        error = np.abs(decode(encode(every)).astype(np.int32) - every)
        assert (error <= np.maximum(16, np.abs(every.astype(np.int32)) // 16)).all()  # within its segment's step


def test_g711_equals_audioop_where_python_still_has_it():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated in 3.11, gone in 3.13
        audioop = pytest.importorskip("audioop")
    every = np.arange(-32768, 32768, dtype=np.int16)
    assert g711.encode_mulaw(every) == audioop.lin2ulaw(every.tobytes(), 2)
    assert g711.encode_alaw(every) == audioop.lin2alaw(every.tobytes(), 2)
    codes = bytes(range(256))
    assert g711.decode_mulaw(codes).tobytes() == audioop.ulaw2lin(codes, 2)
    assert g711.decode_alaw(codes).tobytes() == audioop.alaw2lin(codes, 2)


def test_conversation_items_of_text_and_audio_then_a_response(connection):
    events_until(connection, "session.created")
    connection.session.update(session={**GA_SESSION, "max_response_seconds": 1, "seed": 3})
    events_until(connection, "session.updated")
    text = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "The largest city is"}]}
    connection.conversation.item.create(item=text)
    events = events_until(connection, "conversation.item.done")
    assert [event.type for event in events][-2:] == ["conversation.item.added", "conversation.item.done"]
    first = events[-1].item
    assert first.role == "user" and first.content[0].text == "The largest city is" and first.status == "completed"
    spoken = {"type": "message", "role": "user", "content": [{"type": "input_audio",
              "audio": base64.b64encode(CLIP).decode()}]}  # fmt: skip
    connection.conversation.item.create(item=spoken)
    second = events_until(connection, "conversation.item.done")[-1]
    assert second.previous_item_id == first.id and second.item.content[0].type == "input_audio"
    connection.response.create()
    events = events_until(connection, "response.done")
    assert collapsed([event.type for event in events]) == SPOKEN_ANSWER
    assert events[-1].response.status == "completed"
    # the prompt holds both items: more than the text's few tokens
    assert events[-1].response.usage.input_tokens > 40


def test_a_malformed_item_is_an_error_and_the_session_goes_on(connection):
    events_until(connection, "session.created")
    connection.conversation.item.create(item={"type": "message", "role": "user", "content": [{"type": "input_text"}]})
    error = events_until(connection, "error")[-1]
    assert "input_text" in error.error.message
    connection.conversation.item.create(item={"type": "message", "role": "user",
                                              "content": [{"type": "input_text", "text": "Hello"}]})  # fmt: skip
    assert events_until(connection, "conversation.item.done")[-1].item.content[0].text == "Hello"


# One-token text answers out of the conversation: their `input_tokens` measure the prompt the conversation makes.
PROBE = {"conversation": "none", "output_modalities": ["text"], "max_output_tokens": 1}


def text_item(text: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def add_item(connection, text: str, **placement):
    connection.conversation.item.create(item=text_item(text), **placement)
    return events_until(connection, "conversation.item.done")[-1]


def prompt_tokens(connection, **response) -> int:
    connection.response.create(response={**PROBE, **response})
    done = events_until(connection, "response.done")[-1].response
    assert done.status == "completed"
    return done.usage.input_tokens


def test_an_out_of_band_response_stays_out_of_the_conversation(connection):
    events_until(connection, "session.created")
    connection.session.update(session={"seed": 3})
    events_until(connection, "session.updated")
    add_item(connection, "The largest city is")
    connection.response.create(response={**PROBE, "metadata": {"purpose": "probe"}})
    events = events_until(connection, "response.done")
    created, done = events[0].response, events[-1].response
    assert created.conversation_id is None and done.conversation_id is None
    assert created.metadata == done.metadata == {"purpose": "probe"} and done.output_modalities == ["text"]
    assert prompt_tokens(connection) == done.usage.input_tokens  # its answer did not join the conversation
    connection.response.create(response={"output_modalities": ["text"], "max_output_tokens": 3})
    answer = events_until(connection, "response.done")[-1].response
    assert answer.conversation_id.startswith("conv_") and answer.usage.output_tokens > 0
    assert prompt_tokens(connection) > done.usage.input_tokens  # this one did


def test_deleted_items_leave_the_prompt_and_retrieve_returns_items(connection):
    events_until(connection, "session.created")
    add_item(connection, "The largest city is")
    second = add_item(connection, "Paris, which has many museums").item
    both = prompt_tokens(connection)
    connection.conversation.item.retrieve(item_id=second.id)
    retrieved = events_until(connection, "conversation.item.retrieved")[-1].item
    assert retrieved.id == second.id and retrieved.role == "user"
    assert retrieved.content[0].text == "Paris, which has many museums"
    connection.conversation.item.delete(item_id=second.id)
    assert events_until(connection, "conversation.item.deleted")[-1].item_id == second.id
    first_only = prompt_tokens(connection)
    assert first_only < both
    connection.conversation.item.retrieve(item_id=second.id)
    assert events_until(connection, "error")[-1].error.code == "item_retrieve_invalid_item_id"
    connection.conversation.item.delete(item_id=second.id, event_id="evt_again")
    error = events_until(connection, "error")[-1].error
    assert error.code == "item_delete_invalid_item_id" and error.event_id == "evt_again"
    assert prompt_tokens(connection) == first_only  # the session goes on, its conversation unchanged


def test_items_go_after_previous_item_id_or_first_with_root(connection):
    events_until(connection, "session.created")
    one = add_item(connection, "one")
    three = add_item(connection, "three")
    assert one.previous_item_id is None and three.previous_item_id == one.item.id
    assert add_item(connection, "two", previous_item_id=one.item.id).previous_item_id == one.item.id
    assert add_item(connection, "zero", previous_item_id="root").previous_item_id is None
    four = add_item(connection, "four")
    assert four.previous_item_id == three.item.id  # the end is still "three"
    connection.conversation.item.create(item=text_item("lost"), previous_item_id="item_unknown")
    error = events_until(connection, "error")[-1].error
    assert error.code == "item_create_invalid_previous_item_id" and error.param == "previous_item_id"
    assert add_item(connection, "five").previous_item_id == four.item.id  # "lost" was not added


def test_truncating_a_spoken_answer_keeps_only_what_was_heard(connection):
    events_until(connection, "session.created")
    connection.session.update(session={**GA_SESSION, "max_response_seconds": 1, "seed": 3})
    events_until(connection, "session.updated")
    question = add_item(connection, "The largest city is").item
    connection.response.create()
    answer = events_until(connection, "response.done")[-1].response
    item_id, spoken_ms = answer.output[0].id, round(answer.usage.model_extra["output_audio_seconds"] * 1000)
    assert answer.status == "completed" and spoken_ms > 0 and answer.output[0].content[0].transcript is None
    whole = prompt_tokens(connection)
    for wrong_id, code in ((item_id + "x", "item_truncate_invalid_item_id"), (question.id, "invalid_value")):
        connection.conversation.item.truncate(item_id=wrong_id, content_index=0, audio_end_ms=0)
        assert events_until(connection, "error")[-1].error.code == code
    connection.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=spoken_ms + 20)
    error = events_until(connection, "error")[-1].error
    assert error.code == "invalid_value" and error.param == "audio_end_ms"  # past the end of the audio
    connection.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=spoken_ms)
    truncated = events_until(connection, "conversation.item.truncated")[-1]
    assert (truncated.item_id, truncated.audio_end_ms) == (item_id, spoken_ms)
    assert prompt_tokens(connection) == whole  # all of it was heard
    connection.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=0)
    events_until(connection, "conversation.item.truncated")
    # Nothing was heard: the answer's units leave the prompt.
    assert prompt_tokens(connection) <= whole - answer.usage.output_tokens


def test_response_input_replaces_the_conversation_for_one_response(connection):
    events_until(connection, "session.created")
    first = add_item(connection, "The largest city is").item
    second = add_item(connection, "Paris, which has many museums").item
    both = prompt_tokens(connection)
    references = [{"type": "item_reference", "id": first.id}, {"type": "item_reference", "id": second.id}]
    assert prompt_tokens(connection, input=references) == both  # the same items: the same prompt
    assert prompt_tokens(connection, input=[references[0], text_item("Paris, which has many museums")]) == both
    assert prompt_tokens(connection, input=references[:1]) < both
    assert prompt_tokens(connection, instructions="Answer in one word.") > both
    connection.response.create(response={**PROBE, "input": [{"type": "item_reference", "id": "item_unknown"}]})
    assert events_until(connection, "error")[-1].error.code == "response_create_invalid_item_id"
    assert prompt_tokens(connection) == both  # the conversation is as it was
