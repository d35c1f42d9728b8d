"""`spiritserve.resample` against torchaudio's own outputs (tests/fixtures/resample/, made in the reference venv)."""

import re
from pathlib import Path

import numpy as np
import pytest

from spiritserve.resample import resample

FIXTURES = Path(__file__).parent / "fixtures" / "resample"
EXPECTED = dict(np.load(FIXTURES / "resample.npz"))
CASES = sorted(re.fullmatch(r"(.+)_(\d+)_input", key).groups() for key in EXPECTED if key.endswith("_input"))
TOLERANCE = 1e-5


def test_fixtures_cover_every_signal_at_every_rate():
    rates = {int(rate) for _, rate in CASES}
    assert rates == {8000, 11025, 22050, 24000, 32000, 44100, 44101, 48000, 96000}
    for signal in ("speech", "chirp", "noise", "square"):
        assert {int(rate) for name, rate in CASES if name == signal} == rates
    assert {int(rate) for name, rate in CASES if name == "stereo"} == {22050, 44100, 48000}


@pytest.mark.parametrize(("signal", "rate"), CASES, ids=[f"{signal}-{rate}" for signal, rate in CASES])
def test_matches_torchaudio(signal: str, rate: str):
    """Each channel resampled, then the channels averaged, as the reference does."""
    waveform = EXPECTED[f"{signal}_{rate}_input"].astype(np.float32) / 32768  # (channels, samples)
    expected = EXPECTED[f"{signal}_{rate}_expected"]
    resampled = resample(waveform, int(rate))
    assert resampled.dtype == np.float32 and resampled.shape == (waveform.shape[0], len(expected))
    assert np.abs(resampled.mean(axis=0) - expected).max() <= TOLERANCE


def test_output_length_follows_torchaudio_rounding():
    """torchaudio's ceil(new·length/orig) goes through float32, which sometimes keeps one sample less."""
    for rate, length, expected_length in EXPECTED["lengths"]:
        assert resample(np.zeros((1, length), dtype=np.float32), int(rate)).shape == (1, expected_length)


def test_stereo_is_resampled_per_channel_then_averaged():
    waveform = EXPECTED["stereo_44100_input"].astype(np.float32) / 32768
    both = resample(waveform, 44100)
    for channel in range(2):
        assert np.array_equal(both[channel], resample(waveform[channel], 44100))  # rows are independent
    assert np.abs(both.mean(axis=0) - EXPECTED["stereo_44100_expected"]).max() <= TOLERANCE
    assert not np.allclose(both[0], both[1], atol=1e-3)  # the channels differ, so the mix is not trivial


def test_16k_input_is_returned_untouched():
    waveform = np.random.default_rng(0).normal(size=(2, 1000)).astype(np.float32)
    assert resample(waveform, 16000) is waveform


def test_any_leading_shape_and_empty_input():
    waveform = EXPECTED["speech_22050_input"].astype(np.float32) / 32768
    assert np.array_equal(resample(waveform[0], 22050), resample(waveform, 22050)[0])
    assert resample(np.zeros(0, dtype=np.float32), 22050).shape == (0,)
    with pytest.raises(ValueError, match="positive"):
        resample(waveform, 0)


@pytest.mark.parametrize("rate", ["8000", "44100", "44101"])
def test_small_chunks_and_per_chunk_weights_give_the_same_numbers(monkeypatch, rate: str):
    """The memory bound: chunks of a few outputs, each computing its own weights (no per-phase table)."""
    monkeypatch.setattr("spiritserve.resample._CHUNK_ELEMENTS", 500)
    waveform = EXPECTED[f"chirp_{rate}_input"].astype(np.float32) / 32768
    assert np.abs(resample(waveform, int(rate))[0] - EXPECTED[f"chirp_{rate}_expected"]).max() <= TOLERANCE
