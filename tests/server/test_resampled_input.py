"""Non-16 kHz input gives the units of the reference's resampling: torchaudio's, per channel, then averaged.

The expected 16 kHz WAVs were made by torchaudio itself (scripts/reference/make_resample_fixtures.py)."""

from pathlib import Path

import numpy as np
import pytest
import soundfile

from spiritserve.audio import decode_audio

FIXTURES = Path(__file__).parent.parent / "fixtures"
RESAMPLED = FIXTURES / "resample"
PAIRS = [
    (FIXTURES / "espeak_22k_mono.wav", RESAMPLED / "espeak_22k_mono_16k.wav"),
    (FIXTURES / "espeak_44k_stereo.flac", RESAMPLED / "espeak_44k_stereo_16k.wav"),
]


def tokenize(client, path: Path) -> dict:
    response = client.post("/v1/tokenize", files={"audio": (path.name, path.read_bytes(), "application/octet-stream")})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(("upload", "expected"), PAIRS, ids=[upload.name for upload, _ in PAIRS])
def test_tokenize_gives_the_units_of_torchaudio_resampled_audio(client, upload: Path, expected: Path):
    assert soundfile.info(expected).samplerate == 16000 and soundfile.info(expected).subtype == "FLOAT"
    resampled, reference = tokenize(client, upload), tokenize(client, expected)
    assert len(reference["units"]["hubert"]) > 50
    assert resampled["units"] == reference["units"]
    assert resampled["tokens"] == reference["tokens"]


def test_decoded_audio_matches_torchaudio_within_float_rounding():
    for upload, expected in PAIRS:
        reference, _ = soundfile.read(expected, dtype="float32")
        decoded = decode_audio(upload.read_bytes(), max_seconds=60)
        assert decoded.shape == reference.shape and np.abs(decoded - reference).max() <= 1e-5
