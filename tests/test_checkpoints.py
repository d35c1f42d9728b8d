"""The tiny bundle is written in the official layout and opened the way a real root is."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spiritserve.checkpoints import (
    LANGUAGE_MODELS_DIR,
    MODEL_NAMES,
    RANDOM_WEIGHTS_MARKER,
    open_checkpoint,
)
from spiritserve.errors import CheckpointError
from spiritserve.tiny import make_tiny_bundle

OFFICIAL_BASE_FILES = [
    "speech_tokenizer/hubert_25hz/mhubert_base_25hz.pt",
    "speech_tokenizer/hubert_25hz/L11_quantizer_500.pt",
    "speech_tokenizer/hifigan_spiritlm_base/config.json",
    "speech_tokenizer/hifigan_spiritlm_base/generator.pt",
    "speech_tokenizer/hifigan_spiritlm_base/speakers.txt",
    "speech_tokenizer/hifigan_spiritlm_base/styles.txt",
    "spiritlm_model/spirit-lm-base-7b/config.json",
    "spiritlm_model/spirit-lm-base-7b/generation_config.json",
    "spiritlm_model/spirit-lm-base-7b/pytorch_model.bin",
    "spiritlm_model/spirit-lm-base-7b/special_tokens_map.json",
    "spiritlm_model/spirit-lm-base-7b/tokenizer_config.json",
    "spiritlm_model/spirit-lm-base-7b/tokenizer.model",
]

BASE_MODEL = MODEL_NAMES["base"]


def test_tiny_bundle_has_every_official_file(tiny_bundle: Path):
    for relative in OFFICIAL_BASE_FILES:
        assert (tiny_bundle / relative).is_file(), relative
    config = json.loads((tiny_bundle / LANGUAGE_MODELS_DIR / BASE_MODEL / "config.json").read_text())
    assert config["vocab_size"] == 32512 and config["rope_theta"] == 100000.0
    weights = torch.load(tiny_bundle / LANGUAGE_MODELS_DIR / BASE_MODEL / "pytorch_model.bin", weights_only=True)
    assert weights["model.embed_tokens.weight"].shape[0] == 32512 and "lm_head.weight" in weights


def test_only_tiny_bundles_say_their_weights_are_random(tiny_bundle: Path, tmp_path: Path):
    assert open_checkpoint(tiny_bundle).random_weights
    official = tmp_path / "official"  # the official layout, which has no marker
    shutil.copytree(tiny_bundle, official)
    (official / RANDOM_WEIGHTS_MARKER).unlink()
    assert not open_checkpoint(official).random_weights


def test_variant_comes_from_the_tokenizer_not_the_folder_name(tiny_bundle: Path, tmp_path: Path):
    renamed = tmp_path / "root"
    shutil.copytree(tiny_bundle, renamed)
    (renamed / LANGUAGE_MODELS_DIR / BASE_MODEL).rename(renamed / LANGUAGE_MODELS_DIR / "my-model")
    checkpoint = open_checkpoint(renamed)
    assert checkpoint.variant == "base" and checkpoint.language_model.path.name == "my-model"


def test_incomplete_roots_fail_with_the_missing_path(tiny_bundle: Path, tmp_path: Path):
    with pytest.raises(CheckpointError, match="root not found"):
        open_checkpoint(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    (broken / LANGUAGE_MODELS_DIR / BASE_MODEL / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        open_checkpoint(broken)
    shutil.rmtree(broken / "speech_tokenizer" / "hifigan_spiritlm_base")
    shutil.copy(
        tiny_bundle / LANGUAGE_MODELS_DIR / BASE_MODEL / "pytorch_model.bin",
        broken / LANGUAGE_MODELS_DIR / BASE_MODEL,
    )
    with pytest.raises(CheckpointError, match="hifigan_spiritlm_base"):
        open_checkpoint(broken)


def test_variant_choice_when_a_root_holds_both(tmp_path: Path):
    root = tmp_path / "both"
    make_tiny_bundle(root, variant="base")
    make_tiny_bundle(root, variant="expressive")
    assert open_checkpoint(root).variant == "base"  # both present, none asked: base
    expressive = open_checkpoint(root, "expressive")
    assert expressive.variant == "expressive"
    assert expressive.vocoder_dir.name == "hifigan_spiritlm_expressive_w2v2"
    assert expressive.pitch_dir.name == "vqvae_f0_quantizer" and expressive.style_dir.name == "style_encoder_w2v2"
    only_expressive = tmp_path / "expressive"
    make_tiny_bundle(only_expressive, variant="expressive")
    assert open_checkpoint(only_expressive).variant == "expressive"  # the only one present
    with pytest.raises(CheckpointError, match="no base-variant language model"):
        open_checkpoint(only_expressive, "base")


def test_serving_a_bundle_with_a_wrong_key_fails_naming_file_and_key(tmp_path: Path):
    """What an operator sees: `spiritserve serve` exits with the file and the key, before any engine starts."""
    root = tmp_path / "broken"
    make_tiny_bundle(root, variant="expressive")
    generator_path = root / "speech_tokenizer" / "hifigan_spiritlm_expressive_w2v2" / "generator.pt"
    checkpoint = torch.load(generator_path, weights_only=True)
    checkpoint["generator"]["f0_dict.weight"] = checkpoint["generator"]["f0_dict.weight"][:10]
    torch.save(checkpoint, generator_path)
    result = subprocess.run(
        [sys.executable, "-m", "spiritserve", "serve", "--checkpoints", str(root), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "generator.pt" in result.stderr and "f0_dict.weight" in result.stderr
