"""Phonetic tokenizer: official-layout tiny bundle on CPU, strict loading, chunking and batching rules, and the
fixed-shape (CUDA graph) path."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.utils.parametrizations import weight_norm

from spiritserve.cuda_graphs import ROW_BUCKETS
from spiritserve.errors import BadAudioError, CheckpointError
from spiritserve.tiny import write_tiny_phonetic_tokenizer
from spiritserve.tokenizers.chunking import MAX_CHUNK_SAMPLES
from spiritserve.tokenizers.hubert import HubertConfig, HubertModel, masked_group_norm
from spiritserve.tokenizers.phonetic import (
    HUBERT_FILE,
    MAX_GRAPH_SAMPLES,
    QUANTIZER_FILE,
    PhoneticTokenizer,
    sample_buckets,
)
from spiritserve.tokenizers.quantizer import LinearQuantizer, QuantizerConfig, fill_blanks
from spiritserve.weights import fold_weight_norm, legacy_weight_norm

OFFICIAL_CONV = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 3"
SOURCE = Path("model.pt")


@pytest.fixture(scope="module")
def hubert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("hubert_25hz")
    write_tiny_phonetic_tokenizer(directory, seed=0)
    return directory


@pytest.fixture(scope="module")
def tokenizer(hubert_dir: Path) -> PhoneticTokenizer:
    return PhoneticTokenizer.from_dir(hubert_dir)


def noise(num_samples: int, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(num_samples)).astype(np.float32)


def test_official_conv_stack_gives_228_frames_for_the_golden_clip() -> None:
    config = HubertConfig.from_model_cfg(
        {"conv_feature_layers": OFFICIAL_CONV, "encoder_layers": 2, "encoder_embed_dim": 64,
         "encoder_ffn_embed_dim": 128, "encoder_attention_heads": 4},
        SOURCE,
    )  # fmt: skip
    assert config.frame_hop == 640
    assert config.num_frames(146_160) == 228
    model = HubertModel(config).eval()
    with torch.inference_mode():
        features = model.extract_features(torch.randn(1, 146_160), output_layer=2)
    assert features.shape == (1, 228, 64)


def test_official_quantizer_sizes() -> None:
    quantizer = LinearQuantizer(QuantizerConfig(vocab_size=500, dim=768, upstream_dim=768))
    assert [tuple(quantizer[i].weight.shape) for i in (0, 2, 4)] == [(702, 768), (635, 702), (501, 635)]


def test_tiny_bundle_encodes_2_seconds(tokenizer: PhoneticTokenizer) -> None:
    assert (tokenizer.frame_hop, tokenizer.vocab_size, tokenizer.device) == (640, 500, torch.device("cpu"))
    [units] = tokenizer.encode([noise(32_000, seed=1)])
    # 2 s is 50 hops, but the conv stack's 720-sample receptive field leaves 49 whole frames (as 146,160 -> 228).
    assert len(units) == 49
    assert all(0 <= unit < 500 for unit in units)
    assert len(set(units)) > 1
    [units] = tokenizer.encode([noise(32_080, seed=1)])
    assert len(units) == 50


def test_encode_is_deterministic(hubert_dir: Path, tokenizer: PhoneticTokenizer) -> None:
    waveform = noise(24_000, seed=2)
    first = tokenizer.encode([waveform])
    assert tokenizer.encode([waveform]) == first
    assert PhoneticTokenizer.from_dir(hubert_dir).encode([waveform.copy()]) == first


def test_batched_equals_per_utterance(tokenizer: PhoneticTokenizer) -> None:
    waveforms = [noise(length, seed) for seed, length in enumerate([20_000, 45_001, 1_280, 33_333, 45_001])]
    per_utterance = [tokenizer.encode([waveform])[0] for waveform in waveforms]
    assert tokenizer.encode(waveforms) == per_utterance

    # Features too, not only the argmax: valid frames of a padded row equal the unpadded run.
    lengths = [20_000, 45_001]
    batch = torch.zeros(2, max(lengths))
    for row, length in enumerate(lengths):
        batch[row, :length] = torch.from_numpy(waveforms[row])
    with torch.inference_mode():
        features = tokenizer.hubert.extract_features(batch, lengths)
        for row, (length, frames) in enumerate(zip(lengths, tokenizer.hubert.valid_frames(lengths, 45_001))):
            alone = tokenizer.hubert.extract_features(batch[row : row + 1, :length])
            assert alone.size(1) == frames
            torch.testing.assert_close(features[row, :frames], alone[0], atol=1e-5, rtol=1e-5)


def test_long_audio_is_cut_into_100_second_chunks(tokenizer: PhoneticTokenizer) -> None:
    config = tokenizer.hubert.config
    with_tail = noise(MAX_CHUNK_SAMPLES + 8_000, seed=3)
    short_tail = with_tail[: MAX_CHUNK_SAMPLES + 1_000]  # the 1,000-sample tail is under 80 ms: dropped
    [units] = tokenizer.encode([with_tail])
    assert len(units) == config.num_frames(MAX_CHUNK_SAMPLES) + config.num_frames(8_000)
    assert units[-config.num_frames(8_000) :] == tokenizer.encode([with_tail[MAX_CHUNK_SAMPLES:]])[0]
    assert tokenizer.encode([short_tail]) == [units[: config.num_frames(MAX_CHUNK_SAMPLES)]]


def test_audio_under_80_ms_gives_no_units(tokenizer: PhoneticTokenizer) -> None:
    assert tokenizer.encode([noise(1_279, seed=4), np.zeros(0, np.float32)]) == [[], []]
    assert len(tokenizer.encode([noise(1_280, seed=4)])[0]) == 1
    assert tokenizer.encode([]) == []


def test_bad_audio_is_rejected(tokenizer: PhoneticTokenizer) -> None:
    with pytest.raises(BadAudioError):
        tokenizer.encode([np.zeros((2, 16_000), np.float32)])
    with pytest.raises(BadAudioError):
        tokenizer.encode([np.full(16_000, np.nan, np.float32)])


def test_blank_takes_previous_unit_with_wraparound() -> None:
    blank = 500
    units = fill_blanks(torch.tensor([blank, 3, blank, blank, 7, blank]), blank)
    # Frame 0 wraps around to the last frame, which is itself a blank filled with 7 first.
    assert units.tolist() == [7, 3, 3, 3, 7, 7]
    assert fill_blanks(torch.tensor([4, 9, 9, blank]), blank).tolist() == [4, 9, 9, 9]
    assert fill_blanks(torch.tensor([blank] * 3), blank).tolist() == [blank] * 3


def test_renamed_key_is_reported_with_file_and_key(tmp_path: Path) -> None:
    write_tiny_phonetic_tokenizer(tmp_path)
    checkpoint = torch.load(tmp_path / HUBERT_FILE, weights_only=True)
    weights = checkpoint["model_weight"]
    weights["encoder.layers.3.fc_1.weight"] = weights.pop("encoder.layers.3.fc1.weight")
    torch.save(checkpoint, tmp_path / HUBERT_FILE)
    with pytest.raises(CheckpointError) as error:
        PhoneticTokenizer.from_dir(tmp_path)
    message = str(error.value)
    assert str(tmp_path / HUBERT_FILE) in message
    assert "encoder.layers.3.fc1.weight" in message and "encoder.layers.3.fc_1.weight" in message


def test_unexpected_key_beyond_the_pretraining_heads_is_an_error(tmp_path: Path) -> None:
    write_tiny_phonetic_tokenizer(tmp_path)
    checkpoint = torch.load(tmp_path / HUBERT_FILE, weights_only=True)
    checkpoint["model_weight"]["target_glu.0.weight"] = torch.zeros(32, 16)
    torch.save(checkpoint, tmp_path / HUBERT_FILE)
    with pytest.raises(CheckpointError, match="target_glu.0.weight"):
        PhoneticTokenizer.from_dir(tmp_path)


def test_wrong_shape_is_reported_with_file_and_key(tmp_path: Path) -> None:
    write_tiny_phonetic_tokenizer(tmp_path)
    checkpoint = torch.load(tmp_path / QUANTIZER_FILE, weights_only=True)
    checkpoint["model_weight"]["2.weight"] = torch.zeros(3, 3)
    torch.save(checkpoint, tmp_path / QUANTIZER_FILE)
    with pytest.raises(CheckpointError) as error:
        PhoneticTokenizer.from_dir(tmp_path)
    assert str(tmp_path / QUANTIZER_FILE) in str(error.value)
    assert "2.weight" in str(error.value)


def test_missing_top_level_key_is_an_error(tmp_path: Path) -> None:
    write_tiny_phonetic_tokenizer(tmp_path)
    checkpoint = torch.load(tmp_path / HUBERT_FILE, weights_only=True)
    del checkpoint["task_cfg"]
    torch.save(checkpoint, tmp_path / HUBERT_FILE)
    with pytest.raises(CheckpointError, match="task_cfg"):
        PhoneticTokenizer.from_dir(tmp_path)


@pytest.mark.parametrize(
    ("model_cfg", "complaint"),
    [
        ({"conv_feature_layers": OFFICIAL_CONV, "extractor_mode": "layer_norm"}, "extractor_mode"),
        ({"conv_feature_layers": OFFICIAL_CONV, "layer_norm_first": True}, "layer_norm_first"),
        ({"conv_feature_layers": "__import__('os').getcwd()"}, "conv_feature_layers"),
        ({"conv_feature_layers": "[(512, 10)]"}, "conv_feature_layers"),
        ({"conv_feature_layers": OFFICIAL_CONV, "encoder_layers": "12"}, "encoder_layers"),
    ],
)
def test_unsupported_model_cfg_is_rejected(model_cfg: dict, complaint: str) -> None:
    with pytest.raises(CheckpointError, match=complaint):
        HubertConfig.from_model_cfg(model_cfg, SOURCE)


def test_pos_conv_weight_norm_matches_torch_weight_norm_dim_2_and_folds_to_the_same_conv() -> None:
    reference = weight_norm(torch.nn.Conv1d(8, 8, kernel_size=4, padding=2, groups=2), dim=2)
    ours = legacy_weight_norm(torch.nn.Conv1d(8, 8, kernel_size=4, padding=2, groups=2), dim=2)
    original = reference.parametrizations.weight
    assert tuple(original.original0.shape) == tuple(ours.weight_g.shape) == (1, 1, 4)  # fairseq's weight_g shape
    with torch.no_grad():
        original.original0.mul_(torch.rand(1, 1, 4) + 0.5)
        ours.weight_g.copy_(original.original0)
        ours.weight_v.copy_(original.original1)
        ours.bias.copy_(reference.bias)
        x = torch.randn(2, 8, 10)
        torch.testing.assert_close(ours(x), reference(x))
        fold_weight_norm(ours)
        fold_weight_norm(reference)
        assert not hasattr(ours, "weight_g") and "parametrizations" not in dict(reference.named_children())
        torch.testing.assert_close(ours(x), reference(x))


def per_row_group_norm(norm: torch.nn.GroupNorm, x: torch.Tensor, frames: list[int]) -> torch.Tensor:
    """The per-row loop masked_group_norm replaced (Python ints, data-dependent shapes): the oracle."""
    out = torch.zeros_like(x)
    for row, length in enumerate(frames):
        out[row, :, :length] = norm(x[row : row + 1, :, :length])[0]
    return out


def test_masked_group_norm_equals_normalising_each_row_alone() -> None:
    generator = torch.Generator().manual_seed(7)
    norm = torch.nn.GroupNorm(16, 16).eval()
    with torch.no_grad():
        norm.weight.copy_(torch.rand(16, generator=generator) + 0.5)
        norm.bias.copy_(torch.randn(16, generator=generator))
    x = 3 * torch.randn(4, 16, 50, generator=generator) + 1
    frames = [50, 2, 17, 33]
    with torch.inference_mode():
        masked = masked_group_norm(norm, x, torch.tensor(frames))
        expected = per_row_group_norm(norm, x, frames)
        assert torch.allclose(masked, expected, rtol=1e-5, atol=1e-6)
        assert torch.equal(masked == 0, expected == 0)  # the padding is zero in both
        assert torch.equal(masked_group_norm(norm, x, None), norm(x))


def test_fixed_shape_buckets_and_batches(tokenizer: PhoneticTokenizer) -> None:
    widths = sample_buckets(640)
    assert widths[0] == 16_000 and widths[-1] == 32 * 16_000 and len(widths) == 21
    assert all(width % 640 == 0 for width in widths) and all(b / a <= 1.2 for a, b in zip(widths, widths[1:]))
    tokenizer.use_fixed_shapes()
    try:
        fixed = tokenizer.fixed_shapes
        assert fixed is not None
        assert fixed.bucket(3, 20_000) == (4, widths[2])  # 1.25 s -> 1.44 s, 3 rows -> 4
        assert fixed.bucket(1, 33 * 16_000) is None  # past the longest bucket: eager
        assert fixed.bucket(ROW_BUCKETS[-1], 2 * 16_000) is None  # more audio than a graph holds
        assert list(tokenizer.batches([16_000] * 3 + [20_000])) == [[0, 1, 2, 3]]
        assert fixed.padded_size(4, 20_000) == 4 * widths[2]  # batches are counted at their bucket's size
        # Past a graph's size a batch is compute-bound: it grows eagerly, up to max_batch_samples padded samples.
        batches = list(tokenizer.batches([16_000] * 40 + [33 * 16_000]))
        assert [len(batch) for batch in batches] == [40, 1]
    finally:
        tokenizer.fixed_shapes = None


def test_fixed_shape_batches_give_the_units_of_one_chunk_at_a_time(tokenizer: PhoneticTokenizer) -> None:
    """Rows padded to a power of two and samples to a bucket (eager on CPU, CUDA graphs on a GPU) change no unit."""
    waveforms = [noise(length, seed) for seed, length in enumerate([20_000, 45_001, 1_280, 33_333, 16_000])]
    alone = [tokenizer.encode([waveform])[0] for waveform in waveforms]
    shapes: list[tuple[int, ...]] = []
    tokenizer.use_fixed_shapes()
    assert tokenizer.fixed_shapes is not None
    forward = tokenizer.fixed_shapes.forward

    def recording(audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(audio.shape))
        return forward(audio, lengths)

    tokenizer.fixed_shapes.forward = recording
    try:
        assert tokenizer.encode(waveforms) == alone
        assert [tokenizer.encode([waveform])[0] for waveform in waveforms] == alone
    finally:
        tokenizer.fixed_shapes = None
    widths = sample_buckets(640)
    assert shapes and all(rows in ROW_BUCKETS and samples in widths for rows, samples in shapes)
    assert shapes[0] == (8, widths[6])  # all five in one forward: 45,001 samples -> 2.84 s, 5 rows -> 8


def test_the_padded_forward_reads_nothing_back_from_the_device(tokenizer: PhoneticTokenizer) -> None:
    """HuBERT + quantizer argmax with lengths, as a graph captures it, on `meta` (tensors without values): any
    host read in it (`.tolist()`, `.item()`, `bool()`, `.any()` in a branch) would raise."""
    hubert = copy.deepcopy(tokenizer.hubert).to("meta")
    quantizer = copy.deepcopy(tokenizer.quantizer).to("meta")
    lengths = [23_040, 20_000, 1_280, 16_000]
    with torch.inference_mode():
        features = hubert(torch.zeros(4, 23_040, device="meta"), torch.tensor(lengths, device="meta"), 4)
        argmax = quantizer.unit_argmax(features)
    assert argmax.shape == (4, hubert.config.num_frames(23_040)) and argmax.dtype == torch.long


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_captured_graphs_replay_what_the_eager_forward_computes(hubert_dir: Path) -> None:
    tokenizer = PhoneticTokenizer.from_dir(hubert_dir, "cuda")
    waveforms = [noise(length, seed) for seed, length in enumerate([20_000, 45_001, 1_280, 33_333, 16_000])]
    eager = tokenizer.encode(waveforms)
    report = tokenizer.use_fixed_shapes()
    assert report.graphs > 0 and report.graphs == len(tokenizer.fixed_shapes._graphs)
    assert all(rows * samples <= MAX_GRAPH_SAMPLES for rows, samples in tokenizer.fixed_shapes._graphs._graphs)
    graphed = tokenizer.encode(waveforms)
    agreement = np.mean([a == b for one, two in zip(eager, graphed, strict=True) for a, b in zip(one, two)])
    assert all(len(one) == len(two) for one, two in zip(eager, graphed, strict=True)) and agreement >= 0.999
