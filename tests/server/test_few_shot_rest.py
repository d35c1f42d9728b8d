"""Few-shot transcription and speech on a real server with the fixture pools, through OpenAI's SDK. The tiny model is
random, so it never says the end flag or "stop" of its own accord: these check that the prompts hold the pools'
prefixes (by their exact token counts), that answers come back clean, that streaming honours the same rule, and that
a bad pool stops start-up with a message naming the file. The stop rules themselves: tests/test_few_shot.py."""

import asyncio
import base64
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import soundfile

from spiritserve.audio import decode_audio
from spiritserve.checkpoints import MODEL_NAMES, open_checkpoint
from spiritserve.engine.tokenizer import SpiritTextTokenizer
from spiritserve.few_shot import (
    TRANSCRIPT_END,
    TRANSCRIPT_START,
    SpeechPrompt,
    TranscriptionPrompt,
    build_prompts,
    continuation_ids,
    read_pool,
)
from spiritserve.pipeline import PipelineLimits, SpiritPipeline
from spiritserve.tokenizers.speech import SpeechTokenizer
from spiritserve.vocoder.base import UnitVocoder
from tests.conftest import serve_process

FIXTURES = Path(__file__).parent.parent / "fixtures"
POOLS = FIXTURES / "few_shot"
CLIP = FIXTURES / "espeak_16k_mono.flac"
MODEL = MODEL_NAMES["base"]
HOP = 640


CLASSIFY_LABELS = {"01_weather": "weather", "02_train": "travel", "03_coffee": "food"}


@pytest.fixture(scope="module")
def classify_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The transcription pool's clips, each labelled with its topic."""
    folder = tmp_path_factory.mktemp("classify")
    for name, label in CLASSIFY_LABELS.items():
        shutil.copy(POOLS / "asr" / f"{name}.flac", folder)
        (folder / f"{name}.txt").write_text(label + "\n")
    return folder


@pytest.fixture(scope="module")
def few_shot_url(tiny_bundle: Path, classify_pool: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"SPIRITSERVE_ASR_EXAMPLES": str(POOLS / "asr"), "SPIRITSERVE_TTS_EXAMPLES": str(POOLS / "tts"),
           "SPIRITSERVE_CLASSIFY_EXAMPLES": str(classify_pool)}  # fmt: skip
    with serve_process(tiny_bundle, tmp_path_factory, env) as (url, _):
        yield url


@pytest.fixture(scope="module")
def sdk(few_shot_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{few_shot_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def expected(tiny_bundle: Path):
    """What the server should have built, built here with the same bundle: the prompts and the clip's units."""
    checkpoint = open_checkpoint(tiny_bundle)
    stages = (
        checkpoint,
        SpeechTokenizer.from_dirs(checkpoint.hubert_dir),
        UnitVocoder.from_dir(checkpoint.vocoder_dir),
    )

    async def build():
        pipeline = SpiritPipeline(*stages, None, PipelineLimits(10, 120, 50, 120, 4096))
        try:
            pools = [read_pool(POOLS / name, 30, 2**26) for name in ("asr", "tts")]
            prompts = await build_prompts(pipeline, *pools)
            clip = await pipeline.tokenize(decode_audio(CLIP.read_bytes(), 30))
            return prompts, clip.to_string()
        finally:
            await pipeline.close()

    prompts, clip_units = asyncio.run(build())
    return prompts, clip_units, SpiritTextTokenizer(checkpoint.language_model.tokenizer_path)


def test_transcription_prompt_is_the_pool_then_the_query(sdk: openai.OpenAI, expected):
    prompts, clip_units, tokenizer = expected
    transcription = sdk.audio.transcriptions.create(model=MODEL, file=(CLIP.name, CLIP.read_bytes()))
    query = continuation_ids(tokenizer, TranscriptionPrompt.query(clip_units))
    assert transcription.usage.input_tokens == len(prompts.transcription.prefix_ids) + len(query)
    assert 0 < transcription.usage.output_tokens <= 50
    assert TRANSCRIPT_END not in transcription.text and TRANSCRIPT_START not in transcription.text


def speech_events(sdk: openai.OpenAI, text: str, body: dict) -> list[dict]:
    with sdk.audio.speech.with_streaming_response.create(
        model=MODEL, input=text, voice="0", response_format="pcm", stream_format="sse", extra_body=body
    ) as response:
        return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]


def test_speech_prompt_is_the_pool_then_the_query_and_streams_alike(sdk: openai.OpenAI, expected):
    prompts, _, tokenizer = expected
    text, body = "Close the window.", {"max_speech_seconds": 1, "seed": 4}
    events = speech_events(sdk, text, body)
    query = continuation_ids(tokenizer, SpeechPrompt.query(text))
    assert events[-1]["type"] == "speech.audio.done"
    assert events[-1]["usage"]["input_tokens"] == len(prompts.speech.prefix_ids) + len(query)
    with sdk.audio.speech.with_streaming_response.create(
        model=MODEL, input=text, voice="0", response_format="pcm", extra_body=body
    ) as response:
        pcm = b"".join(response.iter_bytes())
    assert b"".join(base64.b64decode(event["audio"]) for event in events[:-1]) == pcm and len(pcm) % (2 * HOP) == 0
    flac = sdk.audio.speech.create(model=MODEL, input=text, voice="0", response_format="flac", extra_body=body)
    audio, rate = soundfile.read(io.BytesIO(flac.content))
    assert rate == 16000 and len(audio) % HOP == 0 and len(audio) <= 16000


def test_a_bad_pool_stops_start_up_naming_the_file(tiny_bundle: Path, tmp_path: Path):
    pool = tmp_path / "asr"
    shutil.copytree(POOLS / "asr", pool)
    (pool / "02_train.txt").unlink()
    env = {**os.environ, "SPIRITSERVE_ASR_EXAMPLES": str(pool)}
    command = [sys.executable, "-m", "spiritserve", "serve", "--checkpoints", str(tiny_bundle), "--port", "0"]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode != 0
    assert f"{pool / '02_train.flac'}: no transcript" in finished.stdout + finished.stderr


def test_classify_puts_the_pool_before_the_query(few_shot_url: str, expected):
    """Each pool clip as `[Speech]<units>[Text]<label>`, then the query: the prompt's token count says so exactly,
    and `shots` takes the first N examples; labels default to the pool's."""
    _, clip_units, tokenizer = expected
    audio = {"type": "speech", "audio_base64": base64.b64encode(CLIP.read_bytes()).decode()}
    with httpx.Client(base_url=few_shot_url, timeout=120) as client:
        clips = [POOLS / "asr" / f"{name}.flac" for name in CLASSIFY_LABELS]
        tokens = [client.post("/v1/tokenize", files={"audio": (clip.name, clip.read_bytes())}).json()["tokens"]
                  for clip in clips]  # fmt: skip
        answers = {shots: client.post("/v1/classify", json={"input": [audio], "shots": shots}).json()
                   for shots in (None, 1, 0)}  # fmt: skip
    labels = list(CLASSIFY_LABELS.values())
    for shots, count in ((None, 3), (1, 1), (0, 0)):
        answer = answers[shots]
        assert answer["shots"] == count and [entry["label"] for entry in answer["scores"]] == labels
        assert answer["label"] in labels
        prompt = "".join(f"[Speech]{units}[Text]{label}" for units, label in zip(tokens[:count], labels, strict=False))
        assert answer["prompt_tokens"] == len(tokenizer.encode_prompt(prompt + f"[Speech]{clip_units}"))
