"""End to end with the expressive tiny bundle: pitch and style tokens in, out, and through the vocoder."""

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import soundfile

from spiritserve.checkpoints import VOCODER_DIRS
from spiritserve.tiny import make_tiny_bundle
from spiritserve.tokens import parse_unit_string
from spiritserve.vocoder.base import UnitVocoder, VocodeRequest
from tests.conftest import start_server

FIXTURES = Path(__file__).parent.parent / "fixtures"
CLIP = FIXTURES / "espeak_16k_mono.flac"
HOP = 640


@pytest.fixture(scope="module")
def expressive_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("expressive")
    make_tiny_bundle(root, variant="expressive")
    return root


@pytest.fixture(scope="module")
def expressive(expressive_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    """A second real server (its own vLLM engine) serving the expressive variant; the variant is chosen
    from the root's only language model, so no --variant flag is passed."""
    with start_server(expressive_bundle, tmp_path_factory) as client:
        yield client


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    audio, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    return audio, rate


def test_server_reports_the_expressive_variant(expressive):
    assert expressive.get("/readyz").json()["variant"] == "expressive"


def test_prompt_string_has_style_pitch_and_hubert_at_their_rates(expressive):
    response = expressive.post("/v1/tokenize", files={"audio": (CLIP.name, CLIP.read_bytes())})
    assert response.status_code == 200, response.text
    body = response.json()
    seconds = body["duration_seconds"]
    tokens = parse_unit_string(body["tokens"])
    assert tokens["St"] and tokens["Pi"] and tokens["Hu"]
    assert (
        len(tokens["St"]) == len(body["units"]["style"]) == int(np.ceil(seconds - 1e-9))
    )  # ≈1 St/s, never deduplicated
    assert len(tokens["Pi"]) <= 12.5 * seconds + 1 and len(tokens["Hu"]) <= 25 * seconds + 1
    assert body["tokens"].startswith("[St")  # style, then pitch, then hubert at t = 0
    assert body["tokens"].index("[Pi") < body["tokens"].index("[Hu")


def test_speech_to_speech_length_matches_predicted_durations(expressive, expressive_bundle: Path):
    form = {"max_speech_seconds": "2", "seed": "4", "response_format": "json"}
    response = expressive.post("/v1/speech/continue", files={"audio": (CLIP.name, CLIP.read_bytes())}, data=form)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["usage"]["generated_tokens"] <= 77  # 2 s × (24.99 + 12.5 + 1) tokens/s at most
    assert len(body["pitch"]) == len(body["style"]) == len(body["units"]) == len(body["durations"])
    vocoder = UnitVocoder.from_dir(expressive_bundle / VOCODER_DIRS["expressive"])
    expected = vocoder.decode(VocodeRequest(body["units"], 2, None, True, body["pitch"], body["style"]))
    # the vocoder's predictions; the last two were predicted with the units a 2 s budget then cut
    assert body["durations"][:-2] == expected.durations[:-2]
    audio, rate = read_wav(base64.b64decode(body["audio_base64"]))
    assert rate == 16000 and len(audio) == sum(body["durations"]) * HOP
    assert 2 - max(body["durations"]) * HOP / 16000 < len(audio) / 16000 <= 2  # the budget bounds the audio


def test_speech_to_text_and_text_to_speech(expressive):
    audio_base64 = base64.b64encode(CLIP.read_bytes()).decode()
    to_text = expressive.post(
        "/v1/generate",
        json={
            "inputs": [{"type": "speech", "audio_base64": audio_base64}],
            "output_modality": "text",
            "max_new_tokens": 8,
            "seed": 1,
        },
    )
    assert to_text.status_code == 200 and to_text.json()["text"].strip() and to_text.json()["units"] == []
    to_speech = expressive.post(
        "/v1/generate",
        json={
            "inputs": [{"type": "text", "text": "Hello there"}],
            "output_modality": "speech",
            "max_new_tokens": 20,
            "seed": 2,
            "response_format": "wav",
        },
    )
    assert to_speech.status_code == 200, to_speech.text
    assert read_wav(to_speech.content)[1] == 16000


def test_resynthesis_of_raw_streams(expressive):
    tokenized = expressive.post("/v1/tokenize", files={"audio": (CLIP.name, CLIP.read_bytes())}).json()
    units = tokenized["units"]
    response = expressive.post("/v1/synthesize", json={"units": units})
    assert response.status_code == 200, response.text
    audio, _ = read_wav(response.content)
    assert len(audio) == len(units["hubert"]) * HOP  # resynthesis: one 40 ms frame per raw unit


def test_synthesize_tokens_without_style_uses_the_seeded_fallback(expressive):
    first = expressive.post("/v1/synthesize", json={"tokens": "[Pi5][Hu1][Hu2][Hu3]", "seed": 1})
    again = expressive.post("/v1/synthesize", json={"tokens": "[Pi5][Hu1][Hu2][Hu3]", "seed": 1})
    assert first.status_code == 200 and first.content == again.content
    no_pitch = expressive.post("/v1/synthesize", json={"tokens": "[Hu1][Hu2]"})
    assert no_pitch.status_code == 200  # the fallback pitch, not a crash (compat §16.1a)
    bad = expressive.post("/v1/synthesize", json={"tokens": "[Pi99][Hu1]"})
    assert bad.status_code == 422 and "99" in bad.json()["error"]["message"]
