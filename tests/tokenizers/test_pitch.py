"""Pitch tokenizer: real FCPE weights (torchfcpe's bundled asset), tiny official-layout VQ-VAE, strict loading."""

import argparse
import collections
import importlib.util
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml

from spiritserve.errors import BadAudioError, CheckpointError
from spiritserve.tiny import write_tiny_pitch_tokenizer
from spiritserve.tokenizers.chunking import MAX_CHUNK_SAMPLES
from spiritserve.tokenizers.fcpe import F0Extractor, FCPEConfig, bundled_checkpoint_path
from spiritserve.tokenizers.pitch import (
    CONFIG_FILE,
    MODEL_FILE,
    PitchTokenizer,
    VQVAEConfig,
    read_vqvae_checkpoint,
    vqvae_input,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"
GOLDEN_SAMPLES = 146_160  # the reference's example clip: 1,828 F0 frames, 114 pitch units


@pytest.fixture(scope="module")
def vqvae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("vqvae_f0_quantizer")
    write_tiny_pitch_tokenizer(directory, seed=0)
    return directory


@pytest.fixture(scope="module")
def tokenizer(vqvae_dir: Path) -> PitchTokenizer:
    return PitchTokenizer.from_dir(vqvae_dir)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    waveform, rate = soundfile.read(FIXTURES / "espeak_16k_mono.flac", dtype="float32")
    assert rate == 16_000 and waveform.ndim == 1
    return waveform


def sine(frequency: float, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    time = np.arange(int(16_000 * seconds)) / 16_000
    return (amplitude * np.sin(2 * np.pi * frequency * time)).astype(np.float32)


def edit_config(directory: Path, **changes: object) -> None:
    config = yaml.safe_load((directory / CONFIG_FILE).read_text())
    config.update(changes)
    (directory / CONFIG_FILE).write_text(yaml.safe_dump(config))


def test_golden_length_gives_1828_f0_frames_and_114_units(tokenizer: PitchTokenizer, speech: np.ndarray) -> None:
    assert F0Extractor.num_frames(GOLDEN_SAMPLES) == 1_828
    [units] = tokenizer.encode([np.resize(speech, GOLDEN_SAMPLES)])
    assert len(units) == 114


def test_committed_clip_gives_varied_units_in_range(tokenizer: PitchTokenizer, speech: np.ndarray) -> None:
    [units] = tokenizer.encode([speech])
    assert len(units) == (len(speech) // 80 + 1) // 16
    assert all(0 <= unit < 64 for unit in units)
    assert len(set(units)) > 1


def test_fcpe_finds_the_pitch_of_a_sine(tokenizer: PitchTokenizer) -> None:
    frequencies = [120.0, 200.0, 330.0]
    tracks = tokenizer.f0_extractor([torch.from_numpy(sine(frequency)) for frequency in frequencies])
    for frequency, (f0, voicing) in zip(frequencies, tracks, strict=True):
        assert f0.shape == voicing.shape == (16_000 // 80 + 1,)
        voiced = voicing == 1
        assert voiced.float().mean() > 0.9
        assert torch.median(f0[voiced]).item() == pytest.approx(frequency, rel=0.02)
        assert torch.all((f0[voiced] - frequency).abs() < 0.05 * frequency)


def test_silence_is_unvoiced_with_zero_f0(tokenizer: PitchTokenizer) -> None:
    # torchfcpe itself fails here (interpolation over no voiced frame); we return zeros and voicing 0.
    [(f0, voicing)] = tokenizer.f0_extractor([torch.zeros(4_000)])
    assert not voicing.any() and not f0.any()
    [units] = tokenizer.encode([np.zeros(4_000, np.float32)])
    assert len(units) == (4_000 // 80 + 1) // 16 and all(0 <= unit < 64 for unit in units)


def test_batched_f0_equals_per_utterance(tokenizer: PitchTokenizer, speech: np.ndarray) -> None:
    waveforms = [
        torch.from_numpy(speech[:20_000]),
        torch.from_numpy(sine(180.0, 0.7)),
        torch.from_numpy(speech[:31_111]),
    ]
    batched = tokenizer.f0_extractor(waveforms)
    for waveform, (f0, voicing) in zip(waveforms, batched, strict=True):
        [(alone_f0, alone_voicing)] = tokenizer.f0_extractor([waveform])
        torch.testing.assert_close(f0, alone_f0, atol=1e-3, rtol=1e-5)
        assert torch.equal(voicing, alone_voicing)


def test_vqvae_input_normalisation() -> None:
    f0 = torch.tensor([0.0, 100.0, 200.0, 300.0])
    voicing = torch.tensor([0.0, 1.0, 1.0, 0.0])
    # Mean over voiced frames (150), subtracted from every non-zero F0; zeros stay zero.
    assert vqvae_input(f0, voicing, normalize=True).tolist() == [[0.0, -50.0, 50.0, 150.0], [0.0, 1.0, 1.0, 0.0]]
    assert vqvae_input(f0, voicing, normalize=False).tolist() == [f0.tolist(), voicing.tolist()]
    unvoiced = torch.zeros(4)
    assert vqvae_input(f0, unvoiced, normalize=True)[0].tolist() == f0.tolist()


@pytest.mark.parametrize(
    ("features", "speaker_norm", "normalize"),
    [
        ("norm_f0_interp,vuv", False, True),
        ("norm_f0,vuv", False, True),
        ("f0_interp,vuv", False, False),
        ("f0,vuv", False, False),
        ("f0_interp,vuv", True, True),
    ],
)
def test_config_picks_the_normalisation_mode(
    tmp_path: Path, features: str, speaker_norm: bool, normalize: bool
) -> None:
    write_tiny_pitch_tokenizer(tmp_path)
    edit_config(tmp_path, features=features, speaker_norm=speaker_norm)
    assert VQVAEConfig.from_yaml(tmp_path / CONFIG_FILE).normalize_f0 is normalize


def test_tokenizer_feeds_the_configured_normalisation(
    tokenizer: PitchTokenizer, vqvae_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tiny_pitch_tokenizer(tmp_path)
    edit_config(tmp_path, features="f0_interp,vuv")
    plain = PitchTokenizer(tokenizer.f0_extractor, PitchTokenizer.from_dir(tmp_path).vqvae)
    waveform = sine(200.0, seconds=0.5)
    for candidate, expected_mean in [(tokenizer, 0.0), (plain, 200.0)]:
        seen: list[torch.Tensor] = []

        def recording_encode(features: torch.Tensor, encode=candidate.vqvae.encode, seen=seen) -> torch.Tensor:
            seen.append(features)
            return encode(features)

        monkeypatch.setattr(candidate.vqvae, "encode", recording_encode)
        candidate.encode([waveform])
        assert seen[0].shape == (1, 2, 101)
        assert seen[0][0, 0].mean().item() == pytest.approx(expected_mean, abs=5.0)


def test_encode_is_deterministic(vqvae_dir: Path, tokenizer: PitchTokenizer, speech: np.ndarray) -> None:
    waveform = speech[:16_000]
    first = tokenizer.encode([waveform])
    assert tokenizer.encode([waveform.copy()]) == first
    assert PitchTokenizer(tokenizer.f0_extractor, PitchTokenizer.from_dir(vqvae_dir).vqvae).encode([waveform]) == first


def test_tiny_bundle_is_seeded(tmp_path: Path) -> None:
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        write_tiny_pitch_tokenizer(tmp_path / name, seed=seed)
    a, b, c = (torch.load(tmp_path / name / MODEL_FILE, weights_only=True)["model"] for name in "abc")
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not torch.equal(a["vq.level_blocks.0.k"], c["vq.level_blocks.0.k"])
    assert (tmp_path / "a" / CONFIG_FILE).read_text() == (tmp_path / "c" / CONFIG_FILE).read_text()


def test_official_key_names_and_decoder(tokenizer: PitchTokenizer) -> None:
    keys = set(tokenizer.vqvae.state_dict())
    assert {
        "encoder.level_blocks.0.model.0.0.weight",  # first stride-2 conv
        "encoder.level_blocks.0.model.3.1.model.1.model.1.weight",  # last Resnet1D's dilated conv
        "encoder.level_blocks.0.model.4.weight",  # final conv3 to output_emb_width
        "vq.level_blocks.0.k",
        "decoder.level_blocks.0.model.4.1.weight",  # last transposed conv
        "decoder.out.weight",
    } <= keys
    assert tokenizer.vqvae.vq.level_blocks[0].k.shape == (64, 8)
    codes = torch.randint(0, 64, (1, 7))
    assert tokenizer.vqvae.decode(codes).shape == (1, 2, 7 * 16)


def test_long_audio_is_cut_into_100_second_chunks(tokenizer: PitchTokenizer) -> None:
    def flat_f0(waveforms: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.full((len(w) // 80 + 1,), 150.0), torch.ones(len(w) // 80 + 1)) for w in waveforms]

    stub = PitchTokenizer(flat_f0, tokenizer.vqvae)  # type: ignore[arg-type]
    long = np.zeros(MAX_CHUNK_SAMPLES + 8_000, np.float32)
    [units] = stub.encode([long])
    assert len(units) == (MAX_CHUNK_SAMPLES // 80 + 1) // 16 + (8_000 // 80 + 1) // 16
    assert len(stub.encode([long[: MAX_CHUNK_SAMPLES + 1_000]])[0]) == (MAX_CHUNK_SAMPLES // 80 + 1) // 16
    assert stub.encode([np.zeros(1_279, np.float32), np.zeros(0, np.float32)]) == [[], []]
    assert len(stub.encode([np.zeros(1_280, np.float32)])[0]) == 1
    assert stub.encode([]) == []


def test_bad_audio_is_rejected(tokenizer: PitchTokenizer) -> None:
    with pytest.raises(BadAudioError):
        tokenizer.encode([np.zeros((2, 16_000), np.float32)])
    with pytest.raises(BadAudioError):
        tokenizer.encode([np.full(16_000, np.nan, np.float32)])
    with pytest.raises(BadAudioError):
        tokenizer.f0_extractor([torch.zeros(500)])


def test_renamed_key_is_reported_with_file_and_key(tmp_path: Path) -> None:
    write_tiny_pitch_tokenizer(tmp_path)
    checkpoint = torch.load(tmp_path / MODEL_FILE, weights_only=True)
    weights = checkpoint["model"]
    weights["encoder.level_blocks.0.model.4.weights"] = weights.pop("encoder.level_blocks.0.model.4.weight")
    torch.save(checkpoint, tmp_path / MODEL_FILE)
    with pytest.raises(CheckpointError) as error:
        PitchTokenizer.from_dir(tmp_path)
    message = str(error.value)
    assert str(tmp_path / MODEL_FILE) in message
    assert "missing keys: encoder.level_blocks.0.model.4.weight;" in message
    assert "unexpected keys: encoder.level_blocks.0.model.4.weights" in message


@pytest.mark.parametrize(
    ("edit", "complaint"),
    [
        (lambda weights: weights.pop("decoder.out.bias"), "decoder.out.bias"),  # the decoder is loaded strictly too
        (lambda weights: weights.__setitem__("vq.level_blocks.0.k", torch.zeros(32, 8)), "vq.level_blocks.0.k"),
        (lambda weights: weights.__setitem__("vq.level_blocks.0.k_sum", torch.zeros(64, 8)), "k_sum"),
    ],
)
def test_missing_mis_shaped_or_unexpected_key_is_an_error(tmp_path: Path, edit, complaint: str) -> None:
    write_tiny_pitch_tokenizer(tmp_path)
    checkpoint = torch.load(tmp_path / MODEL_FILE, weights_only=True)
    edit(checkpoint["model"])
    torch.save(checkpoint, tmp_path / MODEL_FILE)
    with pytest.raises(CheckpointError, match=complaint) as error:
        PitchTokenizer.from_dir(tmp_path)
    assert str(tmp_path / MODEL_FILE) in str(error.value)


def test_missing_model_entry_is_an_error(tmp_path: Path) -> None:
    write_tiny_pitch_tokenizer(tmp_path)
    checkpoint = torch.load(tmp_path / MODEL_FILE, weights_only=True)
    torch.save({"state_dict": checkpoint["model"]}, tmp_path / MODEL_FILE)
    with pytest.raises(CheckpointError, match="'model'"):
        PitchTokenizer.from_dir(tmp_path)


class TrainingState:
    """A class of the test's own: unpickling it would run this module's code, so a safe load refuses it."""

    def __init__(self) -> None:
        self.step = 3


class RunsACommand:
    """Unpickles as a call to os.system: what a malicious model.pt does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_training_pickle_with_its_arguments_loads_safely(tmp_path: Path, tokenizer: PitchTokenizer) -> None:
    write_tiny_pitch_tokenizer(tmp_path)
    checkpoint = torch.load(tmp_path / MODEL_FILE, weights_only=True)
    # A training pickle: the weights plus its arguments (not allowed by the plain weights-only unpickler).
    checkpoint.update(args=argparse.Namespace(lr=0.0002, features=["f0", "vuv"]), steps=collections.defaultdict(int))
    torch.save(checkpoint, tmp_path / MODEL_FILE)
    loaded = PitchTokenizer.from_dir(tmp_path)
    assert all(torch.equal(loaded.vqvae.state_dict()[key], value) for key, value in checkpoint["model"].items())
    assert read_vqvae_checkpoint(tmp_path / MODEL_FILE)["args"].lr == 0.0002


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (lambda marker: TrainingState(), "test_pitch.TrainingState"),
        (lambda marker: RunsACommand(marker), "system"),  # posix.system
    ],
    ids=["own-class", "os-system"],
)
def test_any_other_pickled_class_is_refused_naming_the_file_and_the_class(tmp_path: Path, extra, named: str) -> None:
    write_tiny_pitch_tokenizer(tmp_path)
    checkpoint = torch.load(tmp_path / MODEL_FILE, weights_only=True)
    marker = tmp_path / "the-command-ran"
    checkpoint["trainer"] = extra(marker)
    torch.save(checkpoint, tmp_path / MODEL_FILE)
    with pytest.raises(CheckpointError) as error:
        PitchTokenizer.from_dir(tmp_path)
    message = str(error.value)
    assert str(tmp_path / MODEL_FILE) in message and named in message and "weights_only=False" in message
    assert not marker.exists()  # nothing in the file ran

    (tmp_path / MODEL_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=MODEL_FILE):
        PitchTokenizer.from_dir(tmp_path)


def test_an_omegaconf_config_without_omegaconf_installed_is_refused_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if importlib.util.find_spec("omegaconf") is not None:
        pytest.skip("omegaconf is installed here: its config classes load")
    # A file that references omegaconf's DictConfig as the official training pickle may: written while a
    # stand-in module of that name exists, read after it is gone (as on a server without omegaconf).
    package, stand_in = types.ModuleType("omegaconf"), types.ModuleType("omegaconf.dictconfig")

    class DictConfig:
        def __init__(self, content: dict) -> None:
            self._content = content

    DictConfig.__module__, DictConfig.__qualname__ = "omegaconf.dictconfig", "DictConfig"
    package.dictconfig, stand_in.DictConfig = stand_in, DictConfig
    write_tiny_pitch_tokenizer(tmp_path)
    checkpoint = torch.load(tmp_path / MODEL_FILE, weights_only=True)
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "omegaconf", package)
        patch.setitem(sys.modules, "omegaconf.dictconfig", stand_in)
        checkpoint["cfg"] = DictConfig({"lr": 0.0002})
        torch.save(checkpoint, tmp_path / MODEL_FILE)
    with pytest.raises(CheckpointError) as error:
        PitchTokenizer.from_dir(tmp_path)
    message = str(error.value)
    assert str(tmp_path / MODEL_FILE) in message and "omegaconf.dictconfig.DictConfig" in message
    assert "omegaconf" in message and "not" in message and "re-save" in message


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"features": "log_f0,vuv"}, "log_f0"),
        ({"speaker_norm": "yes"}, "speaker_norm"),
        ({"vq_params": {"l_bins": 64, "emb_width": 8, "mu": 0.99, "levels": 2}}, "levels"),
        ({"vq_params": {"l_bins": 64, "emb_width": 16, "mu": 0.99, "levels": 1}}, "emb_width"),
    ],
)
def test_bad_config_is_rejected(tmp_path: Path, change: dict, complaint: str) -> None:
    write_tiny_pitch_tokenizer(tmp_path)
    edit_config(tmp_path, **change)
    with pytest.raises(CheckpointError, match=complaint) as error:
        PitchTokenizer.from_dir(tmp_path)
    assert str(tmp_path / CONFIG_FILE) in str(error.value)


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"strides_t": [2, 2]}, "strides_t"),
        ({"downs_t": 4}, "downs_t"),
        ({"checkpoint_res": True}, "checkpoint_res"),
        ({"width": "8"}, "width"),
    ],
)
def test_bad_encoder_params_are_rejected(tmp_path: Path, change: dict, complaint: str) -> None:
    write_tiny_pitch_tokenizer(tmp_path)
    config = yaml.safe_load((tmp_path / CONFIG_FILE).read_text())
    edit_config(tmp_path, encoder_params={**config["encoder_params"], **change})
    with pytest.raises(CheckpointError, match=complaint):
        VQVAEConfig.from_yaml(tmp_path / CONFIG_FILE)


def test_fcpe_asset_loads_strictly(tmp_path: Path) -> None:
    checkpoint = torch.load(bundled_checkpoint_path(), map_location="cpu", weights_only=True)
    weights = checkpoint["model"]
    weights["net.encoder_layers.2.conformer.net.4.conv.weights"] = weights.pop(
        "net.encoder_layers.2.conformer.net.4.conv.weight"
    )
    torch.save(checkpoint, tmp_path / "fcpe.pt")
    with pytest.raises(CheckpointError, match=r"net\.encoder_layers\.2\.conformer\.net\.4\.conv\.weights") as error:
        F0Extractor.from_file(tmp_path / "fcpe.pt")
    assert str(tmp_path / "fcpe.pt") in str(error.value)

    config = checkpoint["config_dict"]
    with pytest.raises(CheckpointError, match="center"):
        FCPEConfig.from_config_dict({**config, "mel": {**config["mel"], "center": True}}, tmp_path / "fcpe.pt")
    with pytest.raises(CheckpointError, match="conv_only"):
        FCPEConfig.from_config_dict({**config, "model": {**config["model"], "conv_only": False}}, tmp_path)


def test_torchfcpe_and_torchaudio_are_never_imported(tokenizer: PitchTokenizer) -> None:
    assert bundled_checkpoint_path().is_file()
    assert "torchfcpe" not in sys.modules and "torchaudio" not in sys.modules
