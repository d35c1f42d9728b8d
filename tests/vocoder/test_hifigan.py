"""The unit vocoder on a tiny bundle written in the official layout (config.json, generator.pt, *.txt)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spiritserve.errors import CheckpointError
from spiritserve.tiny import write_tiny_base_vocoder
from spiritserve.vocoder.base import UnitVocoder, VocodeRequest
from spiritserve.vocoder.hifigan import CodeHiFiGAN, HifiGanConfig

UNITS = [int(u) for u in np.random.default_rng(0).integers(0, 500, size=30)]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    vocoder_dir = tmp_path_factory.mktemp("hifigan_spiritlm_base")
    write_tiny_base_vocoder(vocoder_dir, seed=0)
    return vocoder_dir


def test_official_files_and_properties(bundle, vocoder):
    checkpoint = torch.load(bundle / "generator.pt", weights_only=True)
    assert set(checkpoint) == {"generator"}
    keys = set(checkpoint["generator"])
    for key in ["dict.weight", "spkr.weight", "style.weight", "dur_predictor.conv1.0.weight", "dur_predictor.ln1.bias",
                "dur_predictor.proj.weight", "conv_pre.weight_g", "conv_pre.weight_v", "ups.2.weight_v",
                "resblocks.0.convs1.2.weight_g", "resblocks.2.convs2.0.weight_v", "conv_post.bias"]:  # fmt: skip
        assert key in keys
    assert vocoder.speakers == ["ex01", "ex02", "ex03", "ex04"]
    assert len(vocoder.styles) >= 9
    assert (vocoder.sample_rate, vocoder.hop, vocoder.num_units) == (16000, 640, 500)
    assert (vocoder.default_speaker, vocoder.default_style) == (2, 8)
    assert not any(name.endswith(("weight_g", "weight_v")) for name in vocoder.model.state_dict())  # folded


def test_decode_with_predicted_durations(vocoder):
    out = vocoder.decode(VocodeRequest(UNITS, speaker=vocoder.default_speaker))
    assert len(out.durations) == len(UNITS)
    assert min(out.durations) >= 1 and max(out.durations) <= 8
    assert len(out.audio) == sum(out.durations) * 640
    assert out.audio.dtype == np.float32 and out.audio.ndim == 1
    assert np.isfinite(out.audio).all()
    assert np.abs(out.audio).max() <= 1.0
    assert np.sqrt(np.mean(out.audio**2)) > 1e-3  # not silent


def test_decode_without_duration_prediction(vocoder):
    out = vocoder.decode(VocodeRequest(UNITS, speaker=0, style=3, predict_durations=False))
    assert out.durations == [1] * 30
    assert len(out.audio) == 30 * 640


def test_speakers_and_styles_change_the_audio(vocoder):
    audio = [vocoder.decode(VocodeRequest(UNITS, speaker=s, predict_durations=False)).audio for s in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.allclose(audio[i], audio[j], atol=1e-4)
    other_style = vocoder.decode(VocodeRequest(UNITS, speaker=0, style=0, predict_durations=False)).audio
    assert not np.allclose(audio[0], other_style, atol=1e-4)  # style None means the default, 8


@torch.inference_mode()
def test_batch_equals_single(vocoder):
    model = vocoder.model
    codes = torch.tensor([UNITS, UNITS[::-1]])  # (2, 30)
    speakers, styles = torch.tensor([1, 3]), torch.tensor([8, 2])
    batched = model(codes, speakers, styles)
    for row in range(2):
        single = model(codes[row : row + 1], speakers[row : row + 1], styles[row : row + 1])
        torch.testing.assert_close(batched[row], single[0], atol=1e-5, rtol=1e-5)

    predicted = model.predict_durations(codes)
    for row in range(2):
        assert torch.equal(predicted[row], model.predict_durations(codes[row : row + 1])[0])

    durations = torch.tensor([[2, 1] * 15, [1, 2] * 15])  # equal totals: 45 frames each
    batched = model(codes, speakers, styles, durations)
    assert batched.shape == (2, 45 * 640)
    for row in range(2):
        single = model(codes[row : row + 1], speakers[row : row + 1], styles[row : row + 1], durations[row : row + 1])
        torch.testing.assert_close(batched[row], single[0], atol=1e-5, rtol=1e-5)


def test_invalid_requests_raise_value_error(vocoder):
    for units in ([1, 2, 500], [-1, 3], [1.5]):
        with pytest.raises(ValueError, match="units"):
            vocoder.decode(VocodeRequest(units, speaker=0))
    for speaker in (4, -1):
        with pytest.raises(ValueError, match="speaker"):
            vocoder.decode(VocodeRequest(UNITS, speaker=speaker))
    with pytest.raises(ValueError, match="style"):
        vocoder.decode(VocodeRequest(UNITS, speaker=0, style=len(vocoder.styles)))


def test_empty_units_give_empty_audio(vocoder):
    out = vocoder.decode(VocodeRequest([], speaker=2))
    assert out.audio.shape == (0,) and out.audio.dtype == np.float32
    assert out.durations == []


def _rewrite_generator(vocoder_dir: Path, edit) -> None:
    path = vocoder_dir / "generator.pt"
    checkpoint = torch.load(path, weights_only=True)
    edit(checkpoint["generator"])
    torch.save(checkpoint, path)


def test_renamed_key_is_reported(bundle_copy):
    _rewrite_generator(bundle_copy, lambda sd: sd.__setitem__("ups.1.weight", sd.pop("ups.1.weight_g")))
    with pytest.raises(CheckpointError, match="generator.pt") as error:
        UnitVocoder.from_dir(bundle_copy)
    assert "ups.1.weight_g" in str(error.value) and "ups.1.weight" in str(error.value)


def test_wrong_shape_is_reported(bundle_copy):
    _rewrite_generator(bundle_copy, lambda sd: sd.__setitem__("spkr.weight", torch.zeros(5, 16)))
    with pytest.raises(CheckpointError, match=r"generator\.pt.*spkr\.weight"):
        UnitVocoder.from_dir(bundle_copy)


def test_missing_generator_entry_is_reported(bundle_copy):
    torch.save({"model": {}}, bundle_copy / "generator.pt")
    with pytest.raises(CheckpointError, match="generator"):
        UnitVocoder.from_dir(bundle_copy)


def _rewrite_config(vocoder_dir: Path, **changes) -> None:
    path = vocoder_dir / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_hop_must_match_upsampling(bundle_copy):
    _rewrite_config(bundle_copy, upsample_rates=[8, 8, 8], upsample_kernel_sizes=[16, 16, 16])
    with pytest.raises(CheckpointError, match="code_hop_size"):
        UnitVocoder.from_dir(bundle_copy)


def test_vocoder_without_global_styles(bundle_copy):
    """The expressive vocoder has no styles.txt and no ``style`` table."""
    _rewrite_config(bundle_copy, multistyle=False, model_in_dim=32)
    (bundle_copy / "styles.txt").unlink()
    config = HifiGanConfig.from_json(bundle_copy / "config.json")
    torch.save({"generator": CodeHiFiGAN(config).state_dict()}, bundle_copy / "generator.pt")
    vocoder = UnitVocoder.from_dir(bundle_copy)
    assert vocoder.styles == [] and vocoder.default_style is None
    assert len(vocoder.decode(VocodeRequest(UNITS, speaker=1)).audio) > 0
    with pytest.raises(ValueError, match="style"):
        vocoder.decode(VocodeRequest(UNITS, speaker=1, style=0))


@torch.inference_mode()
def test_pitch_and_style_unit_streams(bundle):
    raw = json.loads((bundle / "config.json").read_text())
    raw.update(multistyle=False, num_f0_tokens=64, f0_hop_size=1280, num_style_tokens=100, style_hop_size=16000,
               model_in_dim=4 * 16)  # fmt: skip
    model = CodeHiFiGAN(HifiGanConfig.from_dict(raw, source=bundle / "config.json")).eval()
    codes = torch.tensor([UNITS])
    f0_codes, style_codes = torch.full_like(codes, 7), torch.full_like(codes, 71)
    durations = model.predict_durations(codes)
    audio = model(codes, torch.tensor([2]), None, durations, f0_codes=f0_codes, style_codes=style_codes)
    assert audio.shape == (1, int(durations.sum()) * 640)
    with pytest.raises(ValueError, match="f0_codes"):
        model(codes, torch.tensor([2]))
