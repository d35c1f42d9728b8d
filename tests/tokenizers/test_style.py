"""Style tokenizer: official-layout tiny folder on CPU, 1 s pooling, strict loading under both weight-norm namings."""

import json
import math
import os
import socket
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: nothing here may use the hub

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import save_file
from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

from spiritserve.errors import BadAudioError, CheckpointError
from spiritserve.tiny import write_tiny_style_tokenizer
from spiritserve.tokenizers.chunking import MAX_CHUNK_SAMPLES
from spiritserve.tokenizers.style import (
    CONFIG_FILE,
    POS_CONV_PREFIX,
    StyleConfig,
    StyleTokenizer,
    normalize,
)
from spiritserve.weights import fold_weight_norm

FIXTURES = Path(__file__).parent.parent / "fixtures"
WEIGHTS_FILE = "pytorch_model.bin"
SOURCE = Path(CONFIG_FILE)
GOLDEN_CLIP_SAMPLES = 146_160  # 9.135 s: 456 wav2vec2 frames, 10 style tokens in the reference test vector


@pytest.fixture(scope="module")
def style_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("style_encoder_w2v2")
    write_tiny_style_tokenizer(directory, seed=0)
    return directory


@pytest.fixture(scope="module")
def tokenizer(style_dir: Path) -> StyleTokenizer:
    return StyleTokenizer.from_dir(style_dir)


@pytest.fixture()
def tiny_copy(style_dir: Path, tmp_path: Path) -> Path:
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        (tmp_path / name).write_bytes((style_dir / name).read_bytes())
    return tmp_path


def noise(num_samples: int, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(num_samples)).astype(np.float32)


def test_golden_clip_gives_456_frames_and_10_tokens(tokenizer: StyleTokenizer) -> None:
    config = tokenizer.model.config
    assert config.num_frames(GOLDEN_CLIP_SAMPLES) == 456
    with torch.inference_mode():
        hidden = tokenizer.model.wav2vec2(torch.zeros(1, GOLDEN_CLIP_SAMPLES)).last_hidden_state
    assert hidden.shape[1] == 456
    [tokens] = tokenizer.encode([noise(GOLDEN_CLIP_SAMPLES, seed=1)])
    assert len(tokens) == 10
    assert all(0 <= token < tokenizer.num_styles == 100 for token in tokens)


def test_last_partial_second_is_kept(tokenizer: StyleTokenizer) -> None:
    assert tokenizer.model.config.num_frames(40_000) == 124  # 2.5 s
    [tokens] = tokenizer.encode([noise(40_000, seed=2)])
    assert len(tokens) == math.ceil(124 / 50) == 3


def test_real_speech_gives_varied_tokens(tokenizer: StyleTokenizer) -> None:
    speech, sample_rate = soundfile.read(FIXTURES / "espeak_16k_mono.flac", dtype="float32")
    assert sample_rate == 16_000
    [tokens] = tokenizer.encode([speech])
    assert len(tokens) == math.ceil(tokenizer.model.config.num_frames(len(speech)) / 50)
    assert len(set(tokens)) > 1


def test_normalisation_matches_the_hf_feature_extractor() -> None:
    # The vendored facebook/wav2vec2-base preprocessor settings, built locally.
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=True, return_attention_mask=False
    )
    waveform = 0.3 * noise(20_000, seed=3) + 0.05
    expected = extractor(waveform, sampling_rate=16_000, return_tensors="np").input_values[0]
    np.testing.assert_array_equal(normalize(waveform), expected)
    silence = np.zeros(2_000, np.float32)
    np.testing.assert_array_equal(normalize(silence), extractor(silence, sampling_rate=16_000).input_values[0])


def test_pooling_matches_hf_sequence_classification(style_dir: Path, tokenizer: StyleTokenizer) -> None:
    """transformers' own class loads the tiny folder with no key left over, and our head pools its output."""
    reference, loading_info = Wav2Vec2ForSequenceClassification.from_pretrained(style_dir, output_loading_info=True)
    assert not any(loading_info.values()), loading_info
    assert set(fold_weight_norm(reference).state_dict()) == set(tokenizer.model.state_dict())  # both folded
    reference.eval()
    waveform = torch.from_numpy(normalize(noise(40_000, seed=4)))[None]
    with torch.inference_mode():
        frames = reference.projector(reference.wav2vec2(waveform).last_hidden_state)[0]
        pooled = torch.stack([frames[start : start + 50].mean(dim=0) for start in range(0, len(frames), 50)])
        expected = reference.classifier(pooled)
        torch.testing.assert_close(tokenizer.model(waveform)[0], expected, atol=1e-5, rtol=1e-5)


def test_encode_is_deterministic(style_dir: Path, tokenizer: StyleTokenizer) -> None:
    waveform = noise(30_000, seed=5)
    first = tokenizer.encode([waveform])
    assert tokenizer.encode([waveform]) == first
    assert StyleTokenizer.from_dir(style_dir).encode([waveform.copy()]) == first
    other_dir = style_dir.parent / "style_again"
    write_tiny_style_tokenizer(other_dir, seed=0)
    assert (other_dir / WEIGHTS_FILE).read_bytes() == (style_dir / WEIGHTS_FILE).read_bytes()


def test_batched_equals_per_utterance(style_dir: Path, tokenizer: StyleTokenizer) -> None:
    lengths = [20_000, 45_001, 1_280, 20_000, 45_001, 20_000]
    waveforms = [noise(length, seed) for seed, length in enumerate(lengths)]
    per_utterance = [tokenizer.encode([waveform])[0] for waveform in waveforms]
    assert tokenizer.encode(waveforms) == per_utterance
    small_batches = StyleTokenizer(tokenizer.model, max_batch_samples=40_000)  # 2 chunks of 20,000 per forward
    assert small_batches.encode(waveforms) == per_utterance


def test_long_audio_is_cut_into_100_second_chunks(tokenizer: StyleTokenizer) -> None:
    with_tail = noise(MAX_CHUNK_SAMPLES + 8_000, seed=6)
    [tokens] = tokenizer.encode([with_tail])
    assert len(tokens) == 100 + 1  # 4,999 frames -> 100 windows, then 24 frames -> 1
    assert tokens[-1:] == tokenizer.encode([with_tail[MAX_CHUNK_SAMPLES:]])[0]
    assert tokenizer.encode([with_tail[: MAX_CHUNK_SAMPLES + 1_000]]) == [tokens[:100]]  # 1,000-sample tail dropped


def test_audio_under_80_ms_gives_no_tokens(tokenizer: StyleTokenizer) -> None:
    assert tokenizer.encode([noise(1_279, seed=7), np.zeros(0, np.float32)]) == [[], []]
    assert len(tokenizer.encode([noise(1_280, seed=7)])[0]) == 1
    assert len(tokenizer.encode([noise(1_280, seed=7).astype(np.float64)])[0]) == 1
    assert tokenizer.encode([]) == []


def test_bad_audio_is_rejected(tokenizer: StyleTokenizer) -> None:
    with pytest.raises(BadAudioError):
        tokenizer.encode([np.zeros((2, 16_000), np.float32)])
    with pytest.raises(BadAudioError):
        tokenizer.encode([np.full(16_000, np.inf, np.float32)])
    with pytest.raises(BadAudioError):
        tokenizer.encode([np.zeros(16_000, np.int16)])


def test_loads_without_network(style_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert len(StyleTokenizer.from_dir(style_dir).encode([noise(16_000, seed=8)])[0]) == 1


def test_official_legacy_and_current_weight_norm_names_give_the_same_tokens(
    tiny_copy: Path, tokenizer: StyleTokenizer
) -> None:
    weights = torch.load(tiny_copy / WEIGHTS_FILE, weights_only=True)
    assert {POS_CONV_PREFIX + "weight_g", POS_CONV_PREFIX + "weight_v", "wav2vec2.masked_spec_embed"} <= set(weights)
    waveform = noise(30_000, seed=9)
    expected = tokenizer.encode([waveform])

    # transformers >= 4.36 (and 5.x) names, in a safetensors file, as save_pretrained writes them today.
    weights[POS_CONV_PREFIX + "parametrizations.weight.original0"] = weights.pop(POS_CONV_PREFIX + "weight_g")
    weights[POS_CONV_PREFIX + "parametrizations.weight.original1"] = weights.pop(POS_CONV_PREFIX + "weight_v")
    (tiny_copy / WEIGHTS_FILE).unlink()
    save_file({name: tensor.contiguous() for name, tensor in weights.items()}, tiny_copy / "model.safetensors")
    assert StyleTokenizer.from_dir(tiny_copy).encode([waveform]) == expected


def test_hf_save_pretrained_folder_loads(style_dir: Path, tokenizer: StyleTokenizer, tmp_path: Path) -> None:
    reference = Wav2Vec2ForSequenceClassification.from_pretrained(style_dir)
    reference.save_pretrained(tmp_path)
    waveform = noise(30_000, seed=10)
    assert StyleTokenizer.from_dir(tmp_path).encode([waveform]) == tokenizer.encode([waveform])


def test_renamed_key_is_reported_with_file_and_key(tiny_copy: Path) -> None:
    weights = torch.load(tiny_copy / WEIGHTS_FILE, weights_only=True)
    weights["classifier.kernel"] = weights.pop("classifier.weight")
    torch.save(weights, tiny_copy / WEIGHTS_FILE)
    with pytest.raises(CheckpointError) as error:
        StyleTokenizer.from_dir(tiny_copy)
    message = str(error.value)
    assert str(tiny_copy / WEIGHTS_FILE) in message
    assert "classifier.weight" in message and "classifier.kernel" in message


def test_wrong_shape_is_reported_with_file_and_key(tiny_copy: Path) -> None:
    weights = torch.load(tiny_copy / WEIGHTS_FILE, weights_only=True)
    weights["projector.weight"] = torch.zeros(3, 3)
    torch.save(weights, tiny_copy / WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match="projector.weight") as error:
        StyleTokenizer.from_dir(tiny_copy)
    assert str(tiny_copy / WEIGHTS_FILE) in str(error.value)


def test_both_weight_norm_namings_at_once_is_an_error(tiny_copy: Path) -> None:
    weights = torch.load(tiny_copy / WEIGHTS_FILE, weights_only=True)
    weights[POS_CONV_PREFIX + "parametrizations.weight.original0"] = weights[POS_CONV_PREFIX + "weight_g"]
    torch.save(weights, tiny_copy / WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match="weight_g"):
        StyleTokenizer.from_dir(tiny_copy)


def test_missing_files_are_errors(tiny_copy: Path) -> None:
    (tiny_copy / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        StyleTokenizer.from_dir(tiny_copy)
    (tiny_copy / CONFIG_FILE).unlink()
    with pytest.raises(CheckpointError, match=CONFIG_FILE):
        StyleTokenizer.from_dir(tiny_copy)


def test_unreadable_weights_are_an_error(tiny_copy: Path) -> None:
    (tiny_copy / WEIGHTS_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=WEIGHTS_FILE):
        StyleTokenizer.from_dir(tiny_copy)


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"model_type": "hubert"}, "model_type"),
        ({"use_weighted_layer_sum": True}, "use_weighted_layer_sum"),
        ({"add_adapter": True}, "add_adapter"),
        ({"conv_stride": [5, 2, 2, 2, 2, 2, 4]}, "conv_stride"),
        ({"hidden_size": "32"}, "hidden_size"),
        ({"conv_dim": [16, 16]}, "conv_dim"),
    ],
)
def test_unsupported_config_is_rejected(style_dir: Path, changes: dict, complaint: str) -> None:
    config = json.loads((style_dir / CONFIG_FILE).read_text())
    with pytest.raises(CheckpointError, match=complaint):
        StyleConfig.from_dict({**config, **changes}, SOURCE)


def test_config_from_4x_json_keeps_labels_and_sizes(style_dir: Path) -> None:
    config = StyleConfig.from_json_file(style_dir / CONFIG_FILE)
    assert (config.num_labels, config.classifier_proj_size, config.backbone.hidden_size) == (100, 16, 32)
    with pytest.raises(CheckpointError, match="JSON object"):
        StyleConfig.from_dict([], SOURCE)  # type: ignore[arg-type]
