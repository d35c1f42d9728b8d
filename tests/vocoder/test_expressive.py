"""The expressive vocoder (HuBERT + pitch + style units) on a tiny bundle in the official layout."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from spiritserve.errors import CheckpointError
from spiritserve.tiny import write_tiny_base_vocoder, write_tiny_expressive_vocoder
from spiritserve.vocoder.base import UnitVocoder, VocodeRequest
from spiritserve.vocoder.hifigan import repeat_to_length

_rng = np.random.default_rng(1)
UNITS = [int(u) for u in _rng.integers(0, 500, size=30)]  # deduplicated-style LM output
PITCH = [int(p) for p in _rng.integers(0, 64, size=30)]  # pre-duplicated: one per unit
STYLE = [71] * 15 + [68] * 15
RAW_UNITS = [int(u) for u in _rng.integers(0, 500, size=100)]  # 4 s of undeduplicated 25 Hz units
RAW_PITCH = [int(p) for p in _rng.integers(0, 64, size=50)]  # 12.5 Hz
RAW_STYLE = [71, 68, 98, 3]  # 1 Hz


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    vocoder_dir = tmp_path_factory.mktemp("hifigan_spiritlm_expressive_w2v2")
    write_tiny_expressive_vocoder(vocoder_dir, seed=0)
    return vocoder_dir


def test_official_files_and_properties(bundle, vocoder):
    assert sorted(path.name for path in bundle.iterdir()) == ["config.json", "generator.pt", "speakers.txt"]
    config = json.loads((bundle / "config.json").read_text())
    assert (config["num_f0_tokens"], config["f0_hop_size"]) == (64, 1280)
    assert (config["num_style_tokens"], config["style_hop_size"], config["code_hop_size"]) == (100, 16000, 640)
    assert config["multispkr"] and not config["multistyle"]
    assert config["model_in_dim"] == 4 * config["embedding_dim"]
    state_dict = torch.load(bundle / "generator.pt", weights_only=True)["generator"]
    assert state_dict["f0_dict.weight"].shape == (64, 16) and state_dict["style_dict.weight"].shape == (100, 16)
    assert "style.weight" not in state_dict and "conv_pre.weight_g" in state_dict

    assert vocoder.is_expressive
    assert (vocoder.num_pitch_units, vocoder.num_style_units, vocoder.num_units) == (64, 100, 500)
    assert (vocoder.model.config.hubert_to_f0, vocoder.model.config.hubert_to_style) == (2, 25)
    assert vocoder.speakers == ["ex01", "ex02", "ex03", "ex04"] and vocoder.default_speaker == 2
    assert vocoder.styles == [] and vocoder.default_style is None


def test_base_vocoder_is_not_expressive(tmp_path):
    write_tiny_base_vocoder(tmp_path, seed=0)
    base = UnitVocoder.from_dir(tmp_path)
    assert not base.is_expressive and (base.num_pitch_units, base.num_style_units) == (0, 0)
    with pytest.raises(ValueError, match="pitch"):
        base.decode(VocodeRequest(UNITS, speaker=2, pitch=PITCH))
    with pytest.raises(ValueError, match="style_units"):
        base.decode(VocodeRequest(UNITS, speaker=2, style_units=STYLE))


def test_lm_output_decode_expands_all_streams_by_durations(vocoder):
    out = vocoder.decode(VocodeRequest(UNITS, speaker=2, pitch=PITCH, style_units=STYLE))
    assert len(out.durations) == len(UNITS)
    assert min(out.durations) >= 1 and max(out.durations) <= 8 and sum(out.durations) > len(UNITS)
    assert len(out.audio) == sum(out.durations) * 640
    assert out.audio.dtype == np.float32 and np.isfinite(out.audio).all() and np.abs(out.audio).max() <= 1.0
    assert np.sqrt(np.mean(out.audio**2)) > 1e-3  # not silent

    # Same as expanding pitch and style by hand and vocoding one frame per expanded unit.
    expand = lambda values: [v for v, d in zip(values, out.durations) for _ in range(d)]  # noqa: E731
    by_hand = vocoder.decode(VocodeRequest(expand(UNITS), 2, None, False, expand(PITCH), expand(STYLE)))
    np.testing.assert_allclose(by_hand.audio, out.audio, atol=1e-5)

    other_pitch = vocoder.decode(
        VocodeRequest(UNITS, speaker=2, pitch=[(p + 7) % 64 for p in PITCH], style_units=STYLE)
    )
    assert other_pitch.durations == out.durations  # durations depend on the HuBERT units only
    assert not np.allclose(other_pitch.audio, out.audio, atol=1e-3)
    other_style = vocoder.decode(VocodeRequest(UNITS, speaker=2, pitch=PITCH, style_units=[5] * 30))
    assert not np.allclose(other_style.audio, out.audio, atol=1e-3)


def test_resynthesis_upsamples_raw_pitch_and_style(vocoder):
    out = vocoder.decode(
        VocodeRequest(RAW_UNITS, speaker=1, pitch=RAW_PITCH, style_units=RAW_STYLE, predict_durations=False)
    )
    assert out.durations == [1] * 100
    assert len(out.audio) == 100 * 640

    pitch = list(np.repeat(RAW_PITCH, 2)[:100])
    style = list(np.repeat(RAW_STYLE, 25)[:100])
    explicit = vocoder.decode(
        VocodeRequest(RAW_UNITS, speaker=1, pitch=pitch, style_units=style, predict_durations=False)
    )
    np.testing.assert_array_equal(explicit.audio, out.audio)

    # The reference rule: pitch not one per unit means resynthesis, so durations are never predicted.
    forced = vocoder.decode(VocodeRequest(RAW_UNITS, speaker=1, pitch=RAW_PITCH, style_units=RAW_STYLE))
    assert forced.durations == [1] * 100
    np.testing.assert_array_equal(forced.audio, out.audio)


def test_resynthesis_pads_with_the_last_value_and_cuts(vocoder):
    short = vocoder.decode(VocodeRequest(RAW_UNITS, speaker=0, pitch=RAW_PITCH[:47], style_units=RAW_STYLE[:3]))
    padded_pitch = list(np.repeat(RAW_PITCH[:47], 2)) + [RAW_PITCH[46]] * 6
    padded_style = list(np.repeat(RAW_STYLE[:3], 25)) + [RAW_STYLE[2]] * 25
    explicit = vocoder.decode(VocodeRequest(RAW_UNITS, 0, None, False, padded_pitch, padded_style))
    np.testing.assert_array_equal(short.audio, explicit.audio)
    assert len(short.audio) == 100 * 640

    long = vocoder.decode(VocodeRequest(RAW_UNITS, speaker=0, pitch=RAW_PITCH + [1, 2], style_units=RAW_STYLE + [9]))
    assert len(long.audio) == 100 * 640


def test_repeat_to_length():
    ids = torch.tensor([[3, 4, 5], [6, 7, 8]])
    assert repeat_to_length(ids, 2, 5).tolist() == [[3, 3, 4, 4, 5], [6, 6, 7, 7, 8]]
    assert repeat_to_length(ids, 2, 8).tolist() == [[3, 3, 4, 4, 5, 5, 5, 5], [6, 6, 7, 7, 8, 8, 8, 8]]
    with pytest.raises(ValueError, match="empty"):
        repeat_to_length(torch.zeros(1, 0, dtype=torch.long), 25, 4)


def test_out_of_range_or_malformed_streams_raise_value_error(vocoder):
    for pitch in ([64] + PITCH[1:], [-1] + PITCH[1:], [1.5] + PITCH[1:]):
        with pytest.raises(ValueError, match="pitch"):
            vocoder.decode(VocodeRequest(UNITS, speaker=2, pitch=pitch, style_units=STYLE))
    for style in ([100] + STYLE[1:], [-3] + STYLE[1:]):
        with pytest.raises(ValueError, match="style_units"):
            vocoder.decode(VocodeRequest(UNITS, speaker=2, pitch=PITCH, style_units=style))
    with pytest.raises(ValueError, match="units"):
        vocoder.decode(VocodeRequest([500] + UNITS[1:], speaker=2, pitch=PITCH, style_units=STYLE))
    with pytest.raises(ValueError, match="global styles"):
        vocoder.decode(VocodeRequest(UNITS, speaker=2, style=0, pitch=PITCH, style_units=STYLE))
    # pitch one per unit marks LM output, so style must be one per unit too (the reference only warns)
    with pytest.raises(ValueError, match="style_units has 2 entries"):
        vocoder.decode(VocodeRequest(UNITS, speaker=2, pitch=PITCH, style_units=[71, 68]))
    with pytest.raises(ValueError, match="style_units is empty"):
        vocoder.decode(VocodeRequest(RAW_UNITS, speaker=2, pitch=RAW_PITCH, style_units=[]))


def test_missing_pitch_or_style_is_a_value_error(vocoder):
    """The reference crashes on expressive speech without Pi/St tokens (§16.1a); here the caller gets a clear
    ValueError and chooses the fallback."""
    with pytest.raises(ValueError, match="needs pitch"):
        vocoder.decode(VocodeRequest(UNITS, speaker=2))
    with pytest.raises(ValueError, match="needs pitch"):
        vocoder.decode(VocodeRequest(UNITS, speaker=2, style_units=STYLE))
    with pytest.raises(ValueError, match="needs style_units"):
        vocoder.decode(VocodeRequest(UNITS, speaker=2, pitch=PITCH))


def test_empty_units_give_empty_audio(vocoder):
    for pitch, style in ((None, None), ([], []), ([3], [71])):
        out = vocoder.decode(VocodeRequest([], speaker=2, pitch=pitch, style_units=style))
        assert out.audio.shape == (0,) and out.audio.dtype == np.float32 and out.durations == []


def _rewrite_generator(vocoder_dir: Path, edit) -> None:
    path = vocoder_dir / "generator.pt"
    checkpoint = torch.load(path, weights_only=True)
    edit(checkpoint["generator"])
    torch.save(checkpoint, path)


def test_wrong_pitch_table_shape_is_reported(bundle_copy):
    _rewrite_generator(bundle_copy, lambda sd: sd.__setitem__("f0_dict.weight", torch.zeros(32, 16)))
    with pytest.raises(CheckpointError, match=r"generator\.pt.*f0_dict\.weight \(file \(32, 16\), model \(64, 16\)\)"):
        UnitVocoder.from_dir(bundle_copy)


def test_missing_style_table_is_reported(bundle_copy):
    _rewrite_generator(bundle_copy, lambda sd: sd.pop("style_dict.weight"))
    with pytest.raises(CheckpointError, match=r"missing keys: style_dict\.weight"):
        UnitVocoder.from_dir(bundle_copy)


def test_base_checkpoint_under_expressive_config_is_reported(bundle_copy, tmp_path):
    write_tiny_base_vocoder(tmp_path / "base", seed=0)
    shutil.copy(tmp_path / "base" / "generator.pt", bundle_copy / "generator.pt")
    with pytest.raises(CheckpointError) as error:
        UnitVocoder.from_dir(bundle_copy)
    for key in ("f0_dict.weight", "style_dict.weight", "style.weight", "conv_pre.weight_v"):
        assert key in str(error.value)


def test_model_in_dim_must_count_the_pitch_and_style_streams(bundle_copy):
    path = bundle_copy / "config.json"
    config = json.loads(path.read_text())
    config["model_in_dim"] = 3 * config["embedding_dim"]
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"model_in_dim 48 != embedding_dim 16 × 4 streams"):
        UnitVocoder.from_dir(bundle_copy)
