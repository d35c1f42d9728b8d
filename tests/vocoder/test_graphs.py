"""Fixed-shape generator batches (CUDA graphs on a GPU): padding rows and widths to buckets changes no sample."""

import numpy as np
import pytest
import torch

from spiritserve.tiny import write_tiny_base_vocoder
from spiritserve.vocoder.base import UnitVocoder, VocodeRequest
from spiritserve.vocoder.graphs import ROW_BUCKETS, FixedShapeGenerator
from spiritserve.vocoder.windows import max_forward_frames

RNG = np.random.default_rng(11)
LENGTHS = [1, 5, 30, 90, 0, 47, 13]


@pytest.fixture(scope="module")
def vocoder(each_vocoder: UnitVocoder) -> UnitVocoder:
    return each_vocoder


class RecordingGenerator(FixedShapeGenerator):
    """The real fixed-shape path, remembering the shapes it ran."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.shapes: list[tuple[int, int]] = []

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        self.shapes.append((inputs.shape[0], inputs.shape[2]))
        return super().__call__(inputs)


def requests_for(vocoder: UnitVocoder) -> list[VocodeRequest]:
    requests = []
    for index, length in enumerate(LENGTHS):
        units = [int(u) for u in RNG.integers(0, vocoder.num_units, length)]
        extra = [int(p) for p in RNG.integers(0, 64, length)] if vocoder.is_expressive else None
        requests.append(VocodeRequest(units, index % len(vocoder.speakers), pitch=extra, style_units=extra))
    return requests


def test_a_batch_is_padded_to_the_smallest_bucket_that_holds_it(vocoder):
    fixed = FixedShapeGenerator(vocoder.model, max_frames=8192)
    assert fixed.bucket_width(70, paddable=True) == 96 and fixed.bucket_rows(3) == 4
    assert fixed.bucket_width(64, paddable=False) == 64  # a true end: only its own width, if a bucket's
    assert fixed.bucket_width(70, paddable=False) is None
    assert fixed.bucket_width(fixed.widths[-1] + 1, paddable=True) is None
    assert fixed.rows_per_forward(256) == ROW_BUCKETS[-1]
    assert FixedShapeGenerator(vocoder.model, max_frames=320).rows_per_forward(96) == 2  # 3 would not be a bucket
    assert FixedShapeGenerator(vocoder.model, max_frames=200).rows_per_forward(256) is None


@pytest.mark.parametrize("window_frames", [16, 100])
def test_fixed_shape_batches_equal_eager_ones(vocoder, window_frames):
    requests = requests_for(vocoder)
    eager = vocoder.decode_batch(requests, window_frames=window_frames)
    fixed = RecordingGenerator(vocoder.model, max_forward_frames(vocoder.model))
    vocoder.fixed_shapes = fixed
    try:
        padded = vocoder.decode_batch(requests, window_frames=window_frames)
    finally:
        vocoder.fixed_shapes = None
    assert fixed.shapes and all(rows in ROW_BUCKETS and width in fixed.widths for rows, width in fixed.shapes)
    for expected, output in zip(eager, padded, strict=True):
        assert output.durations == expected.durations and len(output.audio) == len(expected.audio)
        if len(expected.audio):
            assert np.abs(output.audio - expected.audio).max() < 1e-5


def test_fixed_shape_streams_equal_their_offline_decode(vocoder):
    requests = [request for request in requests_for(vocoder) if request.units][:3]
    fixed = RecordingGenerator(vocoder.model, max_forward_frames(vocoder.model))
    vocoder.fixed_shapes = fixed
    try:
        decoders = [vocoder.open_stream(request.speaker) for request in requests]
        pieces: list[list[np.ndarray]] = [[] for _ in requests]
        for step in range(0, max(len(request.units) for request in requests), 4):
            for decoder, request in zip(decoders, requests, strict=True):
                if step < len(request.units):
                    last = step + 4 >= len(request.units)
                    pitch = request.pitch[step : step + 4] if request.pitch else None
                    decoder.feed(request.units[step : step + 4], pitch, pitch, final=last)
            for out, audio in zip(pieces, vocoder.emit_streams(decoders), strict=True):
                out.append(audio)
        while not all(decoder.finished for decoder in decoders):
            for out, audio in zip(pieces, vocoder.emit_streams(decoders), strict=True):
                out.append(audio)
    finally:
        vocoder.fixed_shapes = None
    assert fixed.shapes
    for request, out in zip(requests, pieces, strict=True):
        offline = vocoder.decode(request).audio
        np.testing.assert_allclose(np.concatenate(out), offline, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_captured_graphs_replay_what_the_eager_forward_computes(tmp_path):
    write_tiny_base_vocoder(tmp_path, seed=5)
    vocoder = UnitVocoder.from_dir(tmp_path, "cuda")
    requests = [VocodeRequest([int(u) for u in RNG.integers(0, vocoder.num_units, 40)], 1) for _ in range(5)]
    eager = vocoder.decode_batch(requests)
    report = vocoder.use_fixed_shapes()
    assert report.graphs > 0
    for expected, output in zip(eager, vocoder.decode_batch(requests), strict=True):
        assert np.abs(output.audio - expected.audio).max() < 1e-4
