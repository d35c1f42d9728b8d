"""Batched vocoding (windows cut at receptive-field boundaries) equals vocoding each sequence alone."""

import numpy as np
import pytest

from spiritserve.vocoder.base import UnitVocoder, VocodeRequest

RNG = np.random.default_rng(7)
LENGTHS = [1, 5, 30, 90, 0, 47]


@pytest.fixture(scope="module")
def vocoder(each_vocoder: UnitVocoder) -> UnitVocoder:
    return each_vocoder


def make_requests(vocoder: UnitVocoder) -> list[VocodeRequest]:
    requests = []
    for speaker, length in enumerate(LENGTHS):
        units = [int(u) for u in RNG.integers(0, vocoder.num_units, length)]
        pitch = [int(p) for p in RNG.integers(0, 64, length)] if vocoder.is_expressive else None
        style_units = [int(s) for s in RNG.integers(0, 100, length)] if vocoder.is_expressive else None
        requests.append(VocodeRequest(units, speaker % len(vocoder.speakers), pitch=pitch, style_units=style_units))
    return requests


@pytest.mark.parametrize("window_frames", [4, 16, 1000])
def test_batched_equals_one_by_one(vocoder, window_frames):
    requests = make_requests(vocoder)
    batched = vocoder.decode_batch(requests, window_frames=window_frames)
    for request, output in zip(requests, batched, strict=True):
        alone = vocoder.decode(request)
        assert output.durations == alone.durations
        assert len(output.audio) == len(alone.audio) == sum(alone.durations) * vocoder.hop
        if len(alone.audio):
            assert np.abs(output.audio - alone.audio).max() < 1e-5


def test_an_invalid_request_fails_the_batch_call(vocoder):
    requests = make_requests(vocoder) + [VocodeRequest([1, 2], speaker=99)]
    with pytest.raises(ValueError, match="speaker 99"):
        vocoder.decode_batch(requests)
