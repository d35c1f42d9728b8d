"""Streaming vocoding equals offline vocoding: same samples (within float rounding), same length, same durations."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from spiritserve.tiny import write_tiny_base_vocoder, write_tiny_expressive_vocoder
from spiritserve.vocoder.base import UnitVocoder, VocodeRequest
from spiritserve.vocoder.streaming import StreamFeed, StreamingDecoder, vocode_in_lockstep
from spiritserve.vocoder.windows import GeneratorWindow, generate_windows, receptive_field_frames

_rng = np.random.default_rng(7)
UNITS = [int(u) for u in _rng.integers(0, 500, size=64)]
PITCH = [int(p) for p in _rng.integers(0, 64, size=64)]  # one per unit, as parsed from LM output
STYLE = [71] * 20 + [68] * 30 + [98] * 14
EXACT = 1e-5  # full lookahead: only float rounding differs (measured ≈ 3e-7 base, 7e-7 expressive)
SPEAKER = 1


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> UnitVocoder:
    vocoder_dir: Path = tmp_path_factory.mktemp("hifigan_spiritlm_base")
    write_tiny_base_vocoder(vocoder_dir, seed=0)
    return UnitVocoder.from_dir(vocoder_dir)


@pytest.fixture(scope="module")
def expressive(tmp_path_factory) -> UnitVocoder:
    vocoder_dir: Path = tmp_path_factory.mktemp("hifigan_spiritlm_expressive_w2v2")
    write_tiny_expressive_vocoder(vocoder_dir, seed=0)
    return UnitVocoder.from_dir(vocoder_dir)


def _stream(decoder: StreamingDecoder, step: int, units=UNITS, pitch=None, style_units=None) -> list[np.ndarray]:
    """Push ``step`` units at a time, then finish; the list of returned pieces (the last one from finish)."""
    pieces = []
    for start in range(0, len(units), step):
        streams = {}
        if pitch is not None:
            streams = {"pitch": pitch[start : start + step], "style_units": style_units[start : start + step]}
        pieces.append(decoder.push(units[start : start + step], **streams))
    pieces.append(decoder.finish())
    for piece in pieces:
        assert piece.dtype == np.float32 and piece.ndim == 1
    return pieces


def _seams(pieces: list[np.ndarray]) -> np.ndarray:
    return np.cumsum([len(piece) for piece in pieces if len(piece)])[:-1]


def test_receptive_field_matches_the_generator(base):
    """The computed reach is exact: perturbing the input frame just inside it changes frame f, just outside not."""
    left, right = receptive_field_frames(base.model.config)
    assert (left, right) == (6, 6)  # rates 8·8·10, kernels 16·16·20, one k3 ResBlock1 with dilations 1·3·5
    model, hop, frame = base.model, base.hop, 20
    features = torch.randn(1, model.config.model_in_dim, 41, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = model.generate(features)[0, frame * hop : (frame + 1) * hop]
        for offset, reaches in ((-left, True), (-left - 1, False), (right, True), (right + 1, False)):
            perturbed = features.clone()
            perturbed[0, :, frame + offset] += 1.0
            changed = model.generate(perturbed)[0, frame * hop : (frame + 1) * hop]
            assert bool((changed != reference).any()) == reaches, offset


@pytest.mark.parametrize("step", [1, 7, len(UNITS)])
def test_base_stream_equals_offline(base, step):
    offline = base.decode(VocodeRequest(UNITS, speaker=SPEAKER))
    decoder = base.open_stream(SPEAKER)
    pieces = _stream(decoder, step)
    streamed = np.concatenate(pieces)
    assert decoder.durations == offline.durations
    assert len(streamed) == sum(decoder.durations) * base.hop == len(offline.audio)
    assert decoder.samples_emitted == len(streamed)
    np.testing.assert_allclose(streamed, offline.audio, rtol=0, atol=EXACT)
    if step < len(UNITS):
        assert len(_seams(pieces)) >= 2  # really chunked


@pytest.mark.parametrize("step", [1, 7, len(UNITS)])
def test_expressive_stream_equals_offline(expressive, step):
    offline = expressive.decode(VocodeRequest(UNITS, speaker=SPEAKER, pitch=PITCH, style_units=STYLE))
    decoder = expressive.open_stream(SPEAKER, chunk_units=12)
    streamed = np.concatenate(_stream(decoder, step, pitch=PITCH, style_units=STYLE))
    assert decoder.durations == offline.durations
    assert len(streamed) == sum(offline.durations) * expressive.hop
    np.testing.assert_allclose(streamed, offline.audio, rtol=0, atol=EXACT)


def test_global_style_and_raw_units(base):
    """A non-default global style, and predict_durations=False (raw 25 Hz units, one frame each)."""
    offline = base.decode(VocodeRequest(UNITS, speaker=3, style=4, predict_durations=False))
    decoder = base.open_stream(3, style=4, predict_durations=False, first_chunk_units=5, chunk_units=9)
    pieces = _stream(decoder, 3)
    assert decoder.durations == [1] * len(UNITS)
    np.testing.assert_allclose(np.concatenate(pieces), offline.audio, rtol=0, atol=EXACT)
    # without duration context, the first chunk needs only its 5 units plus the lookahead frames
    first = next(index for index, piece in enumerate(pieces) if len(piece))
    assert 3 * first < 5 + decoder.lookahead_frames <= 3 * (first + 1)


@pytest.mark.parametrize("lookahead_frames", [4, 5])
def test_shorter_lookahead_is_close_and_seams_stay_smooth(base, lookahead_frames):
    """Below the full receptive field the chunk edges are approximate, the crossfade hides the seam, and the
    length is still exact."""
    offline = base.decode(VocodeRequest(UNITS, speaker=SPEAKER)).audio
    decoder = base.open_stream(SPEAKER, lookahead_frames=lookahead_frames, chunk_units=10)
    pieces = _stream(decoder, 1)
    streamed = np.concatenate(pieces)
    assert len(streamed) == len(offline)
    error = np.abs(streamed - offline).max()
    assert error <= {4: 0.1, 5: 1e-3}[lookahead_frames]  # measured ≈ 0.05 and 4e-4
    seams = _seams(pieces)
    assert len(seams) >= 3
    for seam in seams:
        around = slice(seam - 2 * decoder.crossfade_samples, seam + 2 * decoder.crossfade_samples)
        jump = np.abs(np.diff(streamed[around])).max()
        assert jump <= np.abs(np.diff(offline[around])).max() + 0.02, seam


def test_seams_do_not_click(base):
    offline = base.decode(VocodeRequest(UNITS, speaker=SPEAKER)).audio
    pieces = _stream(base.open_stream(SPEAKER, chunk_units=10), 1)
    streamed = np.concatenate(pieces)
    for seam in _seams(pieces):
        assert abs(streamed[seam] - streamed[seam - 1]) <= abs(offline[seam] - offline[seam - 1]) + 1e-5
        around = slice(seam - 200, seam + 200)
        assert np.abs(np.diff(streamed[around])).max() <= np.abs(np.diff(offline[around])).max() + 1e-5


def test_first_audio_after_the_first_chunk(base):
    """Audio starts once the first chunk's units have their durations (2 units of right context) and the
    lookahead frames after them; later chunks come every chunk_units units."""
    durations = base.decode(VocodeRequest(UNITS, speaker=SPEAKER)).durations
    for lookahead in (0, None):
        decoder = base.open_stream(SPEAKER, first_chunk_units=10, chunk_units=25, lookahead_frames=lookahead)
        pushed_when_audio = [n for n, unit in enumerate(UNITS, 1) if len(decoder.push([unit]))]
        frames = np.cumsum(durations)
        # smallest n whose n - 2 committed units leave 10 units' frames before the lookahead
        expected = next(n for n in range(3, len(UNITS)) if frames[n - 3] - decoder.lookahead_frames >= frames[9])
        assert pushed_when_audio[0] == expected
        if lookahead == 0:
            assert pushed_when_audio[:2] == [12, 37]  # 10 + 2, then 25 more
        assert decoder.durations == durations[: len(decoder.durations)]
        assert len(decoder.durations) == len(UNITS) - 2
        decoder.finish()
        assert decoder.durations == durations


def test_later_chunks_double_up_to_the_maximum_and_still_equal_offline(base):
    units = UNITS * 5  # 320 units
    decoder = base.open_stream(SPEAKER, lookahead_frames=0)  # default sizes: 10, 25, then doubling to 100
    pieces = [decoder.push([unit]) for unit in units]
    pushed_when_audio = [n for n, piece in enumerate(pieces, 1) if len(piece)]
    assert pushed_when_audio == [12, 37, 87, 187, 287]  # 2 units of duration context, then 10, 25, 50, 100, 100
    pieces.append(decoder.finish())
    offline = base.decode(VocodeRequest(units, speaker=SPEAKER)).audio
    assert len(np.concatenate(pieces)) == len(offline)
    full_context = base.open_stream(SPEAKER)
    streamed = np.concatenate([full_context.push([unit]) for unit in units] + [full_context.finish()])
    np.testing.assert_allclose(streamed, offline, rtol=0, atol=EXACT)


def test_empty_input_gives_empty_audio(base, expressive):
    decoder = base.open_stream(SPEAKER)
    assert decoder.push([]).shape == (0,)
    audio = decoder.finish()
    assert audio.shape == (0,) and audio.dtype == np.float32 and decoder.durations == []
    assert expressive.open_stream(SPEAKER).finish().shape == (0,)


def test_short_stream_is_exact(base):
    """Fewer units than one chunk: everything comes out at finish, equal to offline."""
    decoder = base.open_stream(SPEAKER)
    assert len(decoder.push(UNITS[:3])) == 0
    np.testing.assert_allclose(
        decoder.finish(), base.decode(VocodeRequest(UNITS[:3], speaker=SPEAKER)).audio, atol=EXACT
    )


def test_invalid_use_is_rejected(base, expressive):
    with pytest.raises(ValueError, match="speaker"):
        base.open_stream(9)
    with pytest.raises(ValueError, match="style"):
        expressive.open_stream(SPEAKER, style=0)
    with pytest.raises(ValueError, match="crossfade"):
        base.open_stream(SPEAKER, crossfade_samples=base.hop + 1)
    with pytest.raises(ValueError, match="max_chunk_units"):
        base.open_stream(SPEAKER, chunk_units=30, max_chunk_units=20)
    decoder = base.open_stream(SPEAKER)
    with pytest.raises(ValueError, match="units"):
        decoder.push([1, 500])
    with pytest.raises(ValueError, match="pitch"):
        decoder.push([1, 2], pitch=[3, 4])  # base vocoder has no pitch table
    assert decoder.push([1, 2]).shape == (0,)  # a rejected push left the stream as it was
    decoder.finish()
    with pytest.raises(RuntimeError, match="closed"):
        decoder.push([1])
    with pytest.raises(RuntimeError, match="closed"):
        decoder.finish()
    expressive_decoder = expressive.open_stream(SPEAKER)
    with pytest.raises(ValueError, match="pitch"):
        expressive_decoder.push([1, 2])
    with pytest.raises(ValueError, match="style_units"):
        expressive_decoder.push([1, 2], pitch=[3, 4], style_units=[71])


def _count_forwards(monkeypatch, vocoder: UnitVocoder) -> list[int]:
    """Record the batch size of every generator forward (the forward itself runs unchanged)."""
    sizes: list[int] = []
    generate = vocoder.model.generate

    def counted(features):
        sizes.append(features.shape[0])
        return generate(features)

    monkeypatch.setattr(vocoder.model, "generate", counted)
    return sizes


@pytest.mark.parametrize("name", ["base", "expressive"])
def test_concurrent_streams_share_forwards_and_each_equals_its_offline_decode(name, request, monkeypatch):
    """Streams of different lengths, speakers and push sizes, emitted together round by round (one finishing
    while others are mid-stream), give exactly what each gives offline, with fewer generator forwards."""
    vocoder: UnitVocoder = request.getfixturevalue(name)
    expressive = name == "expressive"
    # (units, speaker, step); the first and last have the same durations, so their chunks are due together
    specs = [(UNITS, 1, 1), (UNITS[5:45], 0, 3), (UNITS[::-1][:23], 2, 7), (UNITS, 3, 1)]
    feeds = [StreamFeed(units, step_units=step) for units, _, step in specs]
    if expressive:  # one pitch and one style unit per unit
        feeds = [replace(feed, pitch=PITCH[: len(feed.units)], style_units=STYLE[: len(feed.units)]) for feed in feeds]
    decoders = [vocoder.open_stream(speaker, chunk_units=12) for _, speaker, _ in specs]
    offline = [
        vocoder.decode(VocodeRequest(feed.units, speaker=speaker, pitch=feed.pitch, style_units=feed.style_units))
        for feed, (_, speaker, _) in zip(feeds, specs, strict=True)
    ]
    sizes = _count_forwards(monkeypatch, vocoder)
    pieces = vocode_in_lockstep(decoders, feeds)

    for decoder, stream_pieces, reference in zip(decoders, pieces, offline, strict=True):
        assert decoder.durations == reference.durations
        streamed = np.concatenate(stream_pieces)
        assert len(streamed) == len(reference.audio) == sum(reference.durations) * vocoder.hop
        np.testing.assert_allclose(streamed, reference.audio, rtol=0, atol=EXACT)
    assert max(sizes) > 1  # windows of different streams (and widths) shared forwards
    emitted_chunks = sum(len(_seams(stream_pieces)) + 1 for stream_pieces in pieces)
    assert len(sizes) < emitted_chunks


def test_padding_a_window_leaves_its_kept_audio_unchanged_and_a_true_end_is_never_padded(base):
    """A narrower window shares a wider one's forward with zero frames appended only when its kept samples
    cannot see them; a window kept to its own end (a sequence's true end) runs alone."""
    hop, (left, right) = base.hop, receptive_field_frames(base.model.config)
    features = torch.randn(base.model.config.model_in_dim, 60, generator=torch.Generator().manual_seed(1))
    wide = GeneratorWindow(features, left * hop, (60 - right) * hop)
    paddable = GeneratorWindow(features[:, :45], left * hop, (45 - right) * hop)
    true_end = GeneratorWindow(features[:, :45], left * hop, 45 * hop)
    assert paddable.can_pad(hop, right) and not true_end.can_pad(hop, right)
    alone = [generate_windows(base.model, [window])[0] for window in (wide, paddable, true_end)]
    together = generate_windows(base.model, [wide, paddable, true_end])
    for single, shared in zip(alone, together, strict=True):
        np.testing.assert_allclose(shared, single, rtol=0, atol=EXACT)
    with torch.inference_mode():
        padded_true_end = base.model.generate(torch.nn.functional.pad(features[:, :45], (0, 15))[None])[0]
    assert np.abs(padded_true_end[left * hop : 45 * hop].numpy() - alone[2]).max() > 1e-3  # why it runs alone


def test_opening_a_stream_makes_no_tensor_so_the_event_loop_never_touches_the_device(base):
    """The server opens streams and cuts them to the speech budget on its event loop; tensors (device copies on a
    GPU) are made at the first feed, on the speech worker. A stream with a global style still uses it."""
    made: list[str] = []

    class RecordTorchCalls(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            made.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    with RecordTorchCalls():
        decoder = base.open_stream(speaker=1, style=3)
    assert made == []
    styled = base.decode(VocodeRequest(UNITS, speaker=1, style=3)).audio
    np.testing.assert_allclose(np.concatenate(_stream(decoder, step=7)), styled, atol=1e-5)

    budgeted = base.open_stream(speaker=1, style=3)
    budgeted.feed(UNITS[:40])
    with RecordTorchCalls():  # the speech budget's cut, also on the event loop
        kept = budgeted.end_within(30)
    assert made == []
    cut = base.decode(VocodeRequest(UNITS[:kept], speaker=1, style=3, durations=budgeted.durations)).audio
    np.testing.assert_allclose(budgeted.emit(), cut, atol=1e-5)  # the next emit flushes the rest


@pytest.mark.parametrize("name", ["base", "expressive"])
def test_host_durations_and_ids_equal_the_models_own_device_path(name, request):
    """Durations predicted on the host copy, and ids expanded to frames on the host, give exactly the numbers the
    model computes on its own device (both are the CPU here, so bit for bit)."""
    vocoder: UnitVocoder = request.getfixturevalue(name)
    codes = torch.tensor([UNITS])
    with torch.inference_mode():
        device_durations = vocoder.model.predict_durations(codes)  # (1, T)
        assert vocoder.predict_durations(UNITS) == device_durations[0].tolist()
        extra = (
            {"f0_codes": torch.tensor([PITCH]), "style_codes": torch.tensor([STYLE])} if name == "expressive" else {}
        )
        style = None if name == "expressive" else torch.tensor([4])
        expected = vocoder.model.frame_features(codes, torch.tensor([SPEAKER]), style, device_durations, **extra)[0]
        pitch, style_units = (PITCH, STYLE) if name == "expressive" else (None, None)
        host = vocoder.generator_input(UNITS, device_durations[0].tolist(), SPEAKER, None if style is None else 4,
                                       pitch, style_units)  # fmt: skip
    assert torch.equal(host, expected)


def test_a_feed_reads_nothing_back_from_the_device(tmp_path):
    """A streaming feed (durations, generator input) never waits for the device: here the vocoder's device is
    `meta`, whose tensors hold no values, so any read (`.tolist()`, `.item()`, `bool()`, a copy to the host) in
    the feed would raise. Only the host's duration predictor holds real weights."""
    write_tiny_base_vocoder(tmp_path, seed=0)
    vocoder = UnitVocoder.from_dir(tmp_path)
    expected = vocoder.decode(VocodeRequest(UNITS, SPEAKER, 3)).durations
    vocoder.model.to("meta")
    vocoder.device = torch.device("meta")
    decoder = vocoder.open_stream(SPEAKER, 3)
    for start in range(0, len(UNITS), 5):
        decoder.feed(UNITS[start : start + 5])
    decoder.feed([], final=True)
    assert decoder.durations == expected and decoder.ready
    window = decoder.next_window()
    assert window is not None and window.features.device.type == "meta"
