"""Phonetic tokenizer: official-layout tiny bundle on CPU, strict loading, chunking and batching rules."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.utils.parametrizations import weight_norm

from spiritserve.errors import BadAudioError, CheckpointError
from spiritserve.tiny import write_tiny_phonetic_tokenizer
from spiritserve.tokenizers.chunking import MAX_CHUNK_SAMPLES
from spiritserve.tokenizers.hubert import HubertConfig, HubertModel
from spiritserve.tokenizers.phonetic import (
    HUBERT_FILE,
    QUANTIZER_FILE,
    PhoneticTokenizer,
)
from spiritserve.tokenizers.quantizer import LinearQuantizer, QuantizerConfig, units_from_logits
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
        features, frame_padding_mask = model.extract_features(torch.randn(1, 146_160), output_layer=2)
    assert features.shape == (1, 228, 64)
    assert not frame_padding_mask.any()


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
    padding_mask = torch.arange(max(lengths)) >= torch.tensor(lengths)[:, None]
    with torch.inference_mode():
        features, frame_padding_mask = tokenizer.hubert.extract_features(batch, padding_mask)
        for row, length in enumerate(lengths):
            alone, _ = tokenizer.hubert.extract_features(batch[row : row + 1, :length])
            frames = alone.size(1)
            assert int((~frame_padding_mask[row]).sum()) == frames
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


def one_hot_logits(labels: list[int], vocab_size: int) -> torch.Tensor:
    logits = torch.zeros(len(labels), vocab_size + 1)
    logits[torch.arange(len(labels)), torch.tensor(labels)] = 5.0
    return logits


def test_blank_takes_previous_unit_with_wraparound() -> None:
    blank = 500
    units = units_from_logits(one_hot_logits([blank, 3, blank, blank, 7, blank], 500), blank)
    # Frame 0 wraps around to the last frame, which is itself a blank filled with 7 first.
    assert units.tolist() == [7, 3, 3, 3, 7, 7]
    assert units_from_logits(one_hot_logits([4, 9, 9, blank], 500), blank).tolist() == [4, 9, 9, 9]
    assert units_from_logits(one_hot_logits([blank] * 3, 500), blank).tolist() == [blank] * 3


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
