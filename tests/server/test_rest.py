"""End to end: real speech clips → real server on loopback → real vLLM engine → real vocoder → WAV."""

import asyncio
import base64
import contextlib
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

from spiritserve.checkpoints import VOCODER_DIRS
from spiritserve.tokens import interleave
from spiritserve.vocoder.base import UnitVocoder, VocodeRequest

FIXTURES = Path(__file__).parent.parent / "fixtures"
CLIPS = sorted(path for path in FIXTURES.iterdir() if path.suffix in {".wav", ".flac", ".opus", ".mp3"})
HOP = 640
CLIP = FIXTURES / "espeak_16k_mono.flac"


def read_wav(data: bytes) -> tuple[np.ndarray, int, int]:
    audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return audio[:, 0], rate, audio.shape[1]


def wav_bytes(audio: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def upload(path: Path) -> dict:
    return {"audio": (path.name, path.read_bytes(), "application/octet-stream")}


@pytest.fixture(scope="module")
def vocoder(tiny_bundle: Path) -> UnitVocoder:
    return UnitVocoder.from_dir(tiny_bundle / VOCODER_DIRS["base"])


def test_clips_cover_formats_rates_and_channels():
    assert {path.suffix for path in CLIPS} == {".wav", ".flac", ".opus", ".mp3"}


@pytest.mark.parametrize("clip", CLIPS, ids=[path.name for path in CLIPS])
def test_speech_continuation_returns_a_16k_mono_wav(client, clip: Path):
    response = client.post("/v1/speech/continue", files=upload(clip), data={"max_speech_seconds": "1", "seed": "1"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    audio, rate, channels = read_wav(response.content)
    assert (rate, channels) == (16000, 1)
    assert len(audio) > 0 and len(audio) % HOP == 0
    assert np.abs(audio).max() > 0


@pytest.mark.parametrize("seconds", [2.0, 3.3])
def test_max_speech_seconds_bounds_the_audio_returned(client, vocoder: UnitVocoder, seconds: float):
    """The budget is seconds of audio, not tokens: generation stops once the vocoder's predicted durations fill
    it, so the answer lasts the budget, less at most one unit — streamed or not."""
    form = {"max_speech_seconds": str(seconds), "seed": "7", "temperature": "0.9"}
    described = client.post("/v1/speech/continue", files=upload(CLIP), data={**form, "response_format": "json"})
    assert described.status_code == 200, described.text
    body = described.json()
    units, durations = body["units"], body["durations"]
    assert body["tokens"] == "".join(f"[Hu{unit}]" for unit in units) and len(durations) == len(units)
    assert body["usage"]["generated_tokens"] < seconds * 25  # stopped before the token budget ran out
    # The durations used are the vocoder's predictions; the last two were predicted with the units that followed.
    assert durations[:-2] == vocoder.decode(VocodeRequest(units, speaker=2)).durations[:-2]
    wav = client.post("/v1/speech/continue", files=upload(CLIP), data=form)  # same seed: same generation
    audio, _, _ = read_wav(wav.content)
    assert len(audio) == sum(durations) * HOP
    assert seconds - max(durations) * HOP / 16000 < len(audio) / 16000 <= seconds
    streamed = client.post("/v1/speech/continue", files=upload(CLIP), data={**form, "stream": "true"})
    streamed_audio = np.frombuffer(streamed.content[44:], dtype="<i2").astype(np.float32) / 32767
    assert len(streamed_audio) == len(audio) and np.abs(streamed_audio - audio).max() < 2e-3


def test_speech_to_text_returns_text(client):
    audio_base64 = base64.b64encode(CLIP.read_bytes()).decode()
    response = client.post(
        "/v1/generate",
        json={
            "inputs": [{"type": "speech", "audio_base64": audio_base64}],
            "output_modality": "text",
            "max_new_tokens": 12,
            "seed": 3,
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text"].strip() and body["units"] == [] and body["audio_base64"] is None
    assert [segment["modality"] for segment in body["segments"]] == ["text"]
    assert "[Hu" not in body["text"] and "[Text]" not in body["text"]


def test_text_to_speech_returns_audio_and_units(client):
    response = client.post(
        "/v1/generate",
        json={
            "inputs": [{"type": "text", "text": "One of the most beautiful cities in the world is"}],
            "output_modality": "speech",
            "max_speech_seconds": 1,
            "seed": 5,
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert 0 < len(body["units"]) == len(body["durations"]) <= 25 and body["text"] == ""
    audio, rate, _ = read_wav(base64.b64decode(body["audio_base64"]))
    assert rate == 16000 and len(audio) == sum(body["durations"]) * HOP <= 16000  # at most the 1 s asked
    assert body["usage"]["audio_seconds"] == pytest.approx(len(audio) / 16000)


def test_mixed_inputs_and_a_wav_response(client):
    response = client.post(
        "/v1/generate",
        json={
            "inputs": [{"type": "text", "text": "Say it:"}, {"type": "speech", "tokens": "[Hu12][Hu7][Hu99]"}],
            "output_modality": "speech",
            "response_format": "wav",
            "max_new_tokens": 10,
        },
    )
    assert response.status_code == 200, response.text
    assert read_wav(response.content)[1] == 16000


def test_sampling_with_a_seed_is_reproducible(client):
    request = {
        "inputs": [{"type": "text", "text": "Once upon a time"}],
        "output_modality": "text",
        "max_new_tokens": 8,
        "seed": 11,
    }
    first, second = (client.post("/v1/generate", json=request).json() for _ in range(2))
    assert first["text"] == second["text"]


def test_tokenize_gives_the_token_string_and_raw_units(client):
    response = client.post("/v1/tokenize", files=upload(CLIP))
    assert response.status_code == 200, response.text
    body = response.json()
    samples = soundfile.info(CLIP).frames
    # The 25 Hz conv stack: 720-sample receptive field, 640-sample hop (146,160 samples → 228 frames).
    assert len(body["units"]["hubert"]) == (samples - 720) // HOP + 1
    assert body["tokens"] == interleave({"Hu": body["units"]["hubert"]})
    assert body["duration_seconds"] == pytest.approx(samples / 16000)


def test_synthesize_vocodes_a_token_string(client, vocoder: UnitVocoder):
    response = client.post("/v1/synthesize", json={"tokens": "[Hu12][Hu7][Hu99][Hu7]", "speaker": 1})
    assert response.status_code == 200, response.text
    audio, rate, _ = read_wav(response.content)
    expected = vocoder.decode(VocodeRequest([12, 7, 99, 7], speaker=1))
    assert rate == 16000 and len(audio) == len(expected.audio)
    np.testing.assert_allclose(audio, expected.audio, atol=2 / 32768)  # only 16-bit quantisation differs
    raw = client.post("/v1/synthesize", json={"tokens": "[Hu12][Hu12][Hu7]", "predict_durations": False})
    assert len(read_wav(raw.content)[0]) == 3 * HOP


def _error(response) -> str:
    return response.json()["error"]["message"]


def test_bad_audio_uploads_get_clear_4xx(client):
    not_audio = client.post("/v1/speech/continue", files={"audio": ("notes.wav", b"hello, not audio" * 50)})
    assert not_audio.status_code == 400 and "decode" in _error(not_audio)
    empty = client.post("/v1/speech/continue", files={"audio": ("empty.wav", b"")})
    assert empty.status_code == 400 and "empty" in _error(empty)
    short = client.post("/v1/tokenize", files={"audio": ("short.wav", wav_bytes(np.zeros(800, "float32"), 16000))})
    assert short.status_code == 400 and "80 ms" in _error(short)
    long_audio = wav_bytes(np.zeros(25 * 8000, "float32"), 8000)  # 25 s, over the test server's 20 s limit
    too_long = client.post("/v1/speech/continue", files={"audio": ("long.wav", long_audio)})
    assert too_long.status_code == 413 and "20 s" in _error(too_long)
    text_part = client.post("/v1/tokenize", files={"audio": ("a.txt", b"abc", "text/plain")})
    assert text_part.status_code == 415 and "text/plain" in _error(text_part)
    no_file = client.post("/v1/speech/continue", data={"seed": "1"})
    assert no_file.status_code in (415, 422)


def test_wrong_content_type_and_malformed_json(client):
    as_json = client.post("/v1/speech/continue", json={"audio": "x"})
    assert as_json.status_code == 415 and "multipart/form-data" in _error(as_json)
    as_form = client.post("/v1/generate", data={"inputs": "x"})
    assert as_form.status_code == 415 and "application/json" in _error(as_form)
    malformed = client.post("/v1/generate", content=b'{"inputs": [', headers={"content-type": "application/json"})
    assert malformed.status_code == 422 and "not valid JSON" in _error(malformed)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"output_modality": "video"}, "output_modality"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"inputs": []}, "inputs"),
        ({"inputs": [{"type": "speech"}]}, "exactly one"),
        ({"inputs": [{"type": "speech", "tokens": "[Hu1][Pi3]"}]}, "base variant"),
        ({"inputs": [{"type": "speech", "tokens": "[Hu1] hi"}]}, "unit tokens only"),
        ({"inputs": [{"type": "speech", "audio_base64": "***"}]}, "base64"),
        ({"inputs": [{"type": "image", "text": "x"}]}, "inputs"),
        ({"speaker": 9, "output_modality": "speech"}, "speaker 9"),
        ({"max_speech_seconds": 10_000, "output_modality": "speech"}, "max_speech_seconds"),
        ({"unknown_field": 1}, "unknown_field"),
    ],
)
def test_invalid_generation_requests_get_422_naming_the_problem(client, change, expected):
    request = {"inputs": [{"type": "text", "text": "hello"}], "output_modality": "text", "max_new_tokens": 2}
    response = client.post("/v1/generate", json={**request, **change})
    assert response.status_code in (400, 422), response.text
    assert expected in _error(response)


def test_synthesize_rejects_bad_tokens(client):
    for tokens, expected in [("hello", "unit tokens only"), ("[Hu600]", "600"), ("[Hu1][St2]", "base variant")]:
        response = client.post("/v1/synthesize", json={"tokens": tokens})
        assert response.status_code == 422 and expected in _error(response), response.text


def test_health_readiness_docs_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] is True and ready["variant"] == "base"
    assert client.get("/docs").status_code == 200
    assert "/v1/speech/continue" in client.get("/openapi.json").json()["paths"]
    client.post("/v1/synthesize", json={"tokens": "hello"})
    metrics = client.get("/metrics").text
    assert 'spiritserve_requests_total{route="/v1/synthesize",status="422"}' in metrics
    assert 'spiritserve_request_duration_seconds_bucket{le="0.01",route="/healthz"}' in metrics


def _running_requests(metrics_text: str, series: str = "vllm:num_requests_running{") -> float:
    line = next(line for line in metrics_text.splitlines() if line.startswith(series))
    return float(line.rsplit(" ", 1)[1])


async def _wait_for_running(http, wanted: float, timeout_s: float, series: str = "vllm:num_requests_running{") -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if _running_requests((await http.get("/metrics")).text, series) == wanted:
            return True
        await asyncio.sleep(0.1)
    return False


IN_FLIGHT = "spiritserve_in_flight_requests "


@pytest.mark.parametrize("streamed", [False, True])
def test_client_disconnect_aborts_the_engine_request(server_url, streamed):
    """A 120 s speech budget takes the tiny engine several seconds and its vocoding ~20 s more; hanging up must
    end the request at once (the gateway's work, not only the engine's), whether the client was waiting for the
    whole answer or had started reading a streamed one. The request is seen in flight at the gateway first (the
    engine's own running gauge can miss a generation this fast)."""
    form = {"max_speech_seconds": "120", "stream": str(streamed).lower()}

    async def hang_up_while_streaming(http) -> None:
        async with http.stream("POST", "/v1/speech/continue", files=upload(CLIP), data=form) as response:
            assert response.status_code == 200
            chunks = response.aiter_bytes()  # kept: dropping the iterator would already close the stream
            await anext(chunks)
            assert await _wait_for_running(http, 1.0, timeout_s=60, series=IN_FLIGHT), "never in flight"
        # the client has gone away mid-stream

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=server_url, timeout=60) as http:
            if streamed:
                await hang_up_while_streaming(http)
            else:
                long_request = asyncio.create_task(http.post("/v1/speech/continue", files=upload(CLIP), data=form))
                assert await _wait_for_running(http, 1.0, timeout_s=60, series=IN_FLIGHT), "never in flight"
                long_request.cancel()  # closes the connection mid-generation
                with contextlib.suppress(asyncio.CancelledError):
                    await long_request
            assert await _wait_for_running(http, 0.0, timeout_s=5, series=IN_FLIGHT), "the request kept going"
            assert await _wait_for_running(http, 0.0, timeout_s=10), "the engine request kept running"

    asyncio.run(scenario())


def test_huge_bodies_are_refused_with_413(client):
    huge = b"\0" * (4 * 2**20)  # the test server allows 2 MiB uploads
    declared = client.post("/v1/speech/continue", files={"audio": ("huge.wav", huge)})
    assert declared.status_code == 413 and "limit" in _error(declared)

    def chunks():  # a well-formed multipart upload without Content-Length: the limit applies while reading
        yield b'--x\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n\r\n'
        for _ in range(8):
            yield b"\0" * 2**20
        yield b"\r\n--x--\r\n"

    streamed = client.post(
        "/v1/tokenize", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert streamed.status_code == 413 and "limit" in _error(streamed)
    just_over = client.post("/v1/tokenize", files={"audio": ("big.wav", b"\0" * (2 * 2**20 + 10))})
    assert just_over.status_code == 413 and "limit" in _error(just_over)


def _histogram(metrics_text: str, name: str, stage: str) -> dict[str, float]:
    """Bucket upper bound → cumulative count for one stage of a histogram."""
    buckets = {}
    for line in metrics_text.splitlines():
        if line.startswith(f"{name}_bucket{{") and f'stage="{stage}"' in line:
            bound = line.split('le="')[1].split('"')[0]
            buckets[bound] = float(line.rsplit(" ", 1)[1])
    return buckets


def test_concurrent_requests_are_batched_without_changing_units(server_url, client):
    clips = [path for path in CLIPS for _ in range(3)]  # 15 uploads of 5 formats
    alone = {path: client.post("/v1/tokenize", files=upload(path)).json()["units"] for path in CLIPS}
    before = _histogram(client.get("/metrics").text, "spiritserve_batch_size", "speech_tokenizer")

    async def all_at_once():
        async with httpx.AsyncClient(base_url=server_url, timeout=60) as http:
            return await asyncio.gather(*(http.post("/v1/tokenize", files=upload(path)) for path in clips))

    responses = asyncio.run(all_at_once())
    assert all(response.status_code == 200 for response in responses)
    assert [response.json()["units"] for response in responses] == [alone[path] for path in clips]
    after = _histogram(client.get("/metrics").text, "spiritserve_batch_size", "speech_tokenizer")
    batches = after["+Inf"] - before["+Inf"]
    single_item_batches = after["1.0"] - before["1.0"]
    assert batches < len(clips) and single_item_batches < batches  # most requests shared a batch


def test_streamed_speech_arrives_before_the_generation_ends_and_matches_the_whole_answer(server_url, client):
    form = {"max_speech_seconds": "40", "seed": "21"}  # 1000 tokens: several seconds on the tiny engine

    async def stream_it() -> tuple[bytes, float, bytes]:
        async with httpx.AsyncClient(base_url=server_url, timeout=120) as http:
            async with http.stream(
                "POST", "/v1/speech/continue", files=upload(CLIP), data={**form, "stream": "true"}
            ) as response:
                assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
                chunks = response.aiter_bytes()
                first = b""
                while len(first) <= 44:  # header, then the first audio
                    first += await anext(chunks)
                running_when_first_audio_arrived = _running_requests((await http.get("/metrics")).text)
                rest = b"".join([chunk async for chunk in chunks])
        return first, running_when_first_audio_arrived, rest

    first, running, rest = asyncio.run(stream_it())
    assert running == 1.0  # the engine was still generating when the first audio bytes were read
    streamed = np.frombuffer((first + rest)[44:], dtype="<i2").astype(np.float32) / 32767
    whole, _, _ = read_wav(client.post("/v1/speech/continue", files=upload(CLIP), data=form).content)
    assert len(streamed) == len(whole) and len(streamed) % HOP == 0  # no samples lost or doubled
    assert np.abs(streamed - whole).max() < 2e-3  # chunked vocoding equals the one-pass decode


def test_concurrent_streams_share_vocoder_batches_and_each_matches_its_whole_answer(server_url, client):
    """Four streamed answers at once (one prompt and seed, so their chunks fall due together; four speakers, so
    each row of a shared forward is checked): the streaming vocoder batches them, and each stream is still
    exactly its own non-streamed answer."""
    speakers = ["0", "1", "2", "3"]
    form = {"max_speech_seconds": "6", "seed": "5", "response_format": "pcm"}
    before = _histogram(client.get("/metrics").text, "spiritserve_batch_size", "streaming_vocoder")

    async def all_at_once() -> list[bytes]:
        async with httpx.AsyncClient(base_url=server_url, timeout=120) as http:

            async def stream(speaker: str) -> bytes:
                data = {**form, "speaker": speaker, "stream": "true"}
                async with http.stream("POST", "/v1/speech/continue", files=upload(CLIP), data=data) as response:
                    assert response.status_code == 200
                    return b"".join([chunk async for chunk in response.aiter_bytes()])

            return await asyncio.gather(*(stream(speaker) for speaker in speakers))

    streamed = asyncio.run(all_at_once())
    after = _histogram(client.get("/metrics").text, "spiritserve_batch_size", "streaming_vocoder")
    batches = after["+Inf"] - before.get("+Inf", 0)  # no series before the first streamed chunk
    single_item_batches = after["1.0"] - before.get("1.0", 0)
    for speaker, body in zip(speakers, streamed, strict=True):
        whole = client.post("/v1/speech/continue", files=upload(CLIP), data={**form, "speaker": speaker}).content
        assert len(body) == len(whole) > 0
        difference = np.abs(np.frombuffer(body, "<i2").astype(np.int32) - np.frombuffer(whole, "<i2")).max()
        assert difference <= 64  # PCM16 steps: chunked, batched vocoding equals the one-pass decode (2e-3)
    assert batches > 0 and single_item_batches < batches  # chunks of different streams shared forwards


def test_raw_pcm_answers_and_stream_format_errors(client):
    pcm = client.post(
        "/v1/speech/continue",
        files=upload(CLIP),
        data={"max_speech_seconds": "1", "seed": "1", "response_format": "pcm"},
    )
    assert pcm.status_code == 200 and pcm.headers["content-type"].startswith("audio/pcm")
    wav = client.post("/v1/speech/continue", files=upload(CLIP), data={"max_speech_seconds": "1", "seed": "1"})
    assert len(pcm.content) == len(wav.content) - 44
    as_json = client.post("/v1/speech/continue", files=upload(CLIP), data={"stream": "true", "response_format": "json"})
    assert as_json.status_code == 422 and "stream" in _error(as_json)
    text_stream = client.post(
        "/v1/generate",
        json={
            "inputs": [{"type": "text", "text": "hi"}],
            "output_modality": "text",
            "stream": True,
            "response_format": "pcm",
        },
    )
    assert text_stream.status_code == 422 and "speech" in _error(text_stream)
