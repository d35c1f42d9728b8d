"""The OpenAI-compatible routes, called the way clients call them: through OpenAI's own Python SDK, against the real
shared server. The tiny model is random, so these check shapes, formats and lengths, not content."""

import base64
import io
import json
from pathlib import Path

import numpy as np
import openai
import pytest
import soundfile

from spiritserve.audio import decode_pcm16
from spiritserve.checkpoints import MODEL_NAMES

FIXTURES = Path(__file__).parent.parent / "fixtures"
CLIP = FIXTURES / "espeak_16k_mono.flac"
WAV_CLIP = FIXTURES / "flite_8k_mono.wav"
MODEL = MODEL_NAMES["base"]  # the LM folder's name is the served model's id
HOP = 640  # vocoder samples per unit frame (40 ms)
SMALL = {"max_completion_tokens": 25, "seed": 3}  # about a second of speech, or 25 text tokens


@pytest.fixture(scope="module")
def sdk(server_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0, timeout=120)


def audio_part(path: Path = WAV_CLIP) -> dict:
    data = base64.b64encode(path.read_bytes()).decode()
    return {"type": "input_audio", "input_audio": {"data": data, "format": path.suffix.lstrip(".")}}


def speech_messages() -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "text", "text": "Listen:"}, audio_part()]},
        {"role": "system", "content": "A conversation."},  # goes first whatever its place
    ]


def read_audio(data: bytes) -> tuple[np.ndarray, int]:
    audio, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    return audio, rate


def test_models_list_and_retrieve(sdk: openai.OpenAI):
    models = sdk.models.list()
    assert [model.id for model in models.data] == [MODEL]
    assert models.data[0].object == "model" and models.data[0].owned_by
    assert sdk.models.retrieve("spirit-lm").id == MODEL  # an alias names the served model
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.models.retrieve("gpt-4o")
    assert caught.value.code == "model_not_found"


def test_chat_with_input_audio_answers_in_speech(sdk: openai.OpenAI):
    completion = sdk.chat.completions.create(
        model=MODEL, messages=speech_messages(), modalities=["text", "audio"], audio={"voice": "0", "format": "wav"},
        **SMALL,
    )  # fmt: skip
    assert completion.id.startswith("chatcmpl-") and completion.object == "chat.completion"
    assert completion.model == MODEL
    choice = completion.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert choice.message.content is None and choice.message.audio.transcript == ""
    audio, rate = read_audio(base64.b64decode(choice.message.audio.data))
    assert rate == 16000 and audio.ndim == 1 and 0 < len(audio) and len(audio) % HOP == 0
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0


@pytest.mark.parametrize("audio_format", ["pcm16", "flac", "mp3", "opus"])
def test_chat_audio_formats(sdk: openai.OpenAI, audio_format: str):
    completion = sdk.chat.completions.create(
        model="spiritlm", messages=[{"role": "user", "content": "Hello"}], modalities=["audio"],
        audio={"voice": 1, "format": audio_format}, max_completion_tokens=10, seed=1,
    )  # fmt: skip
    data = base64.b64decode(completion.choices[0].message.audio.data)
    if audio_format == "pcm16":
        assert len(decode_pcm16(data)) % HOP == 0 and len(data) > 0
    else:
        audio, rate = read_audio(data) if audio_format != "mp3" else (np.ones(1), 16000)
        assert rate == 16000 and len(audio) > 0 and len(data) > 0


def test_chat_text_only(sdk: openai.OpenAI):
    completion = sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "A long text prompt, far longer than 64 characters. " * 3}],
        max_tokens=8, seed=0,
    )  # fmt: skip
    choice = completion.choices[0]
    assert isinstance(choice.message.content, str) and choice.message.audio is None
    assert choice.finish_reason in ("stop", "length")
    assert 1 <= completion.usage.completion_tokens <= 8


def test_streamed_text_reassembles_and_reports_usage(sdk: openai.OpenAI):
    messages = [{"role": "user", "content": [{"type": "text", "text": "Once upon a time"}, audio_part(CLIP)]}]
    whole = sdk.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12)
    chunks = list(
        sdk.chat.completions.create(
            model=MODEL, messages=messages, temperature=0, max_tokens=12, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert all(chunk.object == "chat.completion.chunk" and chunk.id.startswith("chatcmpl-") for chunk in chunks)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content  # greedy: streamed equals whole
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage  # the engine's count, streamed or not


def test_streamed_speech_reassembles(sdk: openai.OpenAI):
    speech = {"model": MODEL, "messages": speech_messages(), "modalities": ["text", "audio"],
              "audio": {"voice": "0", "format": "pcm16"}, **SMALL}  # fmt: skip
    chunks = list(sdk.chat.completions.create(**speech, stream=True, stream_options={"include_usage": True}))
    pieces = [chunk.choices[0].delta.audio for chunk in chunks if chunk.choices and chunk.choices[0].delta.audio]
    pcm = b"".join(base64.b64decode(piece.data) for piece in pieces if piece.data)
    assert len(pcm) > 0 and len(decode_pcm16(pcm)) % HOP == 0
    assert len({piece.id for piece in pieces}) == 1 and pieces[-1].transcript == ""
    whole = sdk.chat.completions.create(**speech)  # same seed, same answer
    assert base64.b64decode(whole.choices[0].message.audio.data) == pcm
    assert chunks[-1].usage == whole.usage


def test_speech_returns_wav(sdk: openai.OpenAI):
    response = sdk.audio.speech.create(
        model=MODEL, input="Hello there.", voice="0", response_format="wav", extra_body={"max_speech_seconds": 1}
    )
    assert response.response.headers["content-type"] == "audio/wav"
    audio, rate = read_audio(response.content)
    assert rate == 16000 and 0 < len(audio) <= 16000 and len(audio) % HOP == 0


def test_openai_voice_names_pick_a_speaker(sdk: openai.OpenAI):
    body = {"max_speech_seconds": 1, "seed": 4}

    def speech(voice: str) -> bytes:
        return sdk.audio.speech.create(model=MODEL, input="Hello.", voice=voice, response_format="pcm",
                                       extra_body=body).content  # fmt: skip

    assert speech("alloy") == speech("0")  # OpenAI's first voice is the first speaker: OpenAI's examples just work


def test_speech_streamed_as_sse_and_as_pcm(sdk: openai.OpenAI):
    body = {"max_speech_seconds": 1, "seed": 2}
    with sdk.audio.speech.with_streaming_response.create(
        model=MODEL, input="Hello there.", voice="0", response_format="pcm", extra_body=body
    ) as response:
        pcm = b"".join(response.iter_bytes())
    events = []
    with sdk.audio.speech.with_streaming_response.create(
        model=MODEL, input="Hello there.", voice="0", response_format="pcm", stream_format="sse", extra_body=body
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert [event["type"] for event in events][-1] == "speech.audio.done" and events[-1]["usage"]["output_tokens"] > 0
    streamed = b"".join(base64.b64decode(event["audio"]) for event in events[:-1])
    assert len(pcm) > 0 and streamed == pcm  # same seed: same speech, however sent


@pytest.mark.parametrize("response_format", ["json", "text", "verbose_json"])
def test_transcription(sdk: openai.OpenAI, response_format: str):
    transcription = sdk.audio.transcriptions.create(
        model=MODEL, file=(CLIP.name, CLIP.read_bytes()), response_format=response_format, language="en",
        prompt="ignored",
    )  # fmt: skip
    if response_format == "text":
        assert isinstance(transcription, str)
    else:
        assert isinstance(transcription.text, str)
    if response_format == "verbose_json":
        assert transcription.duration == pytest.approx(soundfile.info(CLIP).duration, abs=0.01)


def test_bad_requests_raise_the_sdks_bad_request_error(sdk: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], temperature=5)
    assert "temperature" in caught.value.message and caught.value.param == "temperature"
    with pytest.raises(openai.BadRequestError, match="unknown voice 'nobody'"):
        sdk.audio.speech.create(model=MODEL, input="Hi", voice="nobody")
    with pytest.raises(openai.BadRequestError, match="speed"):
        sdk.audio.speech.create(model=MODEL, input="Hi", voice="0", speed=2.0)
    broken = {"type": "input_audio", "input_audio": {"data": "bm90IGF1ZGlv", "format": "wav"}}
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [broken]}])
    assert caught.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="n"):
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], n=2)


def test_unknown_model_raises_not_found(sdk: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        sdk.audio.transcriptions.create(model="whisper-1", file=(CLIP.name, CLIP.read_bytes()))


def test_native_routes_keep_their_error_shape(client):
    response = client.post("/v1/generate", json={"inputs": []})
    assert response.status_code == 422 and set(response.json()["error"]) == {"type", "message"}
