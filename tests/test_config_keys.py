"""Config files carry keys from many training-code versions: an unknown key is logged (file and keys named)
and start-up goes on, unless SPIRITSERVE_STRICT_CONFIG asks for refusal; a key that selects a path we do not
implement is refused either way."""

import copy
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from spiritserve.checkpoints import PITCH_DIR, VOCODER_DIRS
from spiritserve.errors import CheckpointError
from spiritserve.tokenizers.hubert import HubertConfig
from spiritserve.tokenizers.phonetic import HUBERT_FILE, QUANTIZER_FILE
from spiritserve.tokenizers.pitch import VQVAEConfig
from spiritserve.tokenizers.quantizer import QuantizerConfig
from spiritserve.vocoder.hifigan import HifiGanConfig
from spiritserve.weights import config_key_policy

HUBERT_DIR = Path("speech_tokenizer/hubert_25hz")


def _parse_yaml(config: dict, path: Path) -> Any:
    path.write_text(yaml.safe_dump(config))
    return VQVAEConfig.from_yaml(path)


# name: (file under the bundle, how to read its config dict, how spiritserve parses it)
PARSERS: dict[str, tuple[Path, Callable[[Path], dict], Callable[[dict, Path], Any]]] = {
    "hifigan config.json": (
        VOCODER_DIRS["expressive"] / "config.json",
        lambda path: json.loads(path.read_text()),
        lambda config, path: HifiGanConfig.from_dict(config, source=path),
    ),
    "vqvae config.yaml": (
        PITCH_DIR / "config.yaml",
        lambda path: yaml.safe_load(path.read_text()),
        _parse_yaml,
    ),
    "hubert model_cfg": (
        HUBERT_DIR / HUBERT_FILE,
        lambda path: torch.load(path, weights_only=True)["model_cfg"],
        HubertConfig.from_model_cfg,
    ),
    "quantizer model_cfg": (
        HUBERT_DIR / QUANTIZER_FILE,
        lambda path: torch.load(path, weights_only=True)["model_cfg"],
        QuantizerConfig.from_model_cfg,
    ),
}
# where in each config an unknown key may turn up (None: the top level)
SECTIONS = [
    ("hifigan config.json", None),
    ("hifigan config.json", "dur_predictor_params"),
    ("vqvae config.yaml", None),
    ("vqvae config.yaml", "vq_params"),
    ("vqvae config.yaml", "encoder_params"),
    ("hubert model_cfg", None),
    ("quantizer model_cfg", None),
]


def _with_extra_key(config: dict, section: str | None) -> dict:
    changed = copy.deepcopy(config)
    (changed[section] if section else changed)["knob_from_a_newer_trainer"] = 1
    return changed


@pytest.mark.parametrize(("parser", "section"), SECTIONS)
def test_unknown_key_is_logged_and_ignored_by_default(
    parser: str, section: str | None, tiny_expressive_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    relative, read, parse = PARSERS[parser]
    original = read(tiny_expressive_bundle / relative)
    path = tmp_path / relative.name
    with caplog.at_level(logging.WARNING):
        assert parse(_with_extra_key(original, section), path) == parse(original, path)
    warnings = [record.getMessage() for record in caplog.records if "knob_from_a_newer_trainer" in record.getMessage()]
    assert len(warnings) == 1 and str(path) in warnings[0], warnings


@pytest.mark.parametrize(("parser", "section"), SECTIONS)
def test_unknown_key_is_refused_under_strict_config(
    parser: str, section: str | None, tiny_expressive_bundle: Path, tmp_path: Path
):
    relative, read, parse = PARSERS[parser]
    config = _with_extra_key(read(tiny_expressive_bundle / relative), section)
    path = tmp_path / relative.name
    with config_key_policy(strict=True), pytest.raises(CheckpointError) as refused:
        parse(config, path)
    assert str(path) in str(refused.value) and "knob_from_a_newer_trainer" in str(refused.value)


# keys we know and do not implement: (parser, section, key, value, words in the error)
UNIMPLEMENTED_PATHS = [
    ("hifigan config.json", None, "f0", True, "unsupported vocoder inputs"),
    ("hifigan config.json", None, "resblock", "2", "resblock"),
    ("hubert model_cfg", None, "layer_type", "conformer", "layer_type"),
    ("hubert model_cfg", None, "layer_norm_first", True, "layer_norm_first"),
    ("vqvae config.yaml", "decoder_params", "checkpoint_res", 1, "checkpoint_res"),
]


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize(("parser", "section", "key", "value", "words"), UNIMPLEMENTED_PATHS)
def test_keys_selecting_an_unimplemented_path_are_refused_in_both_modes(
    parser: str, section: str | None, key: str, value: Any, words: str, strict: bool, tiny_expressive_bundle: Path,
    tmp_path: Path,
):  # fmt: skip
    relative, read, parse = PARSERS[parser]
    config = read(tiny_expressive_bundle / relative)
    (config[section] if section else config)[key] = value
    path = tmp_path / relative.name
    with config_key_policy(strict=strict), pytest.raises(CheckpointError, match=words) as refused:
        parse(config, path)
    assert str(path) in str(refused.value)
