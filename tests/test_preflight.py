"""Checkpoint mistakes that only show across files are refused at start-up, before any engine starts, with
the file and the field named — not 25 s later as an engine crash or at the first request that meets them."""

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from spiritserve.checkpoints import (
    LANGUAGE_MODELS_DIR,
    MODEL_NAMES,
    PITCH_DIR,
    STYLE_DIR,
    VOCODER_DIRS,
)
from spiritserve.preflight import CPU_ATTENTION_HEAD_SIZES, CUDA_MIN_HEAD_SIZE
from spiritserve.tiny import llama_layout_tokenizer, write_extended_tokenizer


@pytest.fixture()
def pristine(tiny_bundle: Path, tiny_expressive_bundle: Path) -> dict[str, Path]:
    return {"base": tiny_bundle, "expressive": tiny_expressive_bundle}


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def _serve(root: Path, **env: str) -> subprocess.CompletedProcess:
    """`spiritserve serve` as an operator runs it; a broken bundle must make it exit on its own."""
    return subprocess.run(
        [sys.executable, "-m", "spiritserve", "serve", "--checkpoints", str(root), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def _lm_config(root: Path, variant: str) -> Path:
    return root / LANGUAGE_MODELS_DIR / MODEL_NAMES[variant] / "config.json"


def _head_size_16(root: Path) -> None:
    _edit_json(_lm_config(root, "base"), lambda config: config.update(num_attention_heads=8, num_key_value_heads=8))


def _context_beyond_positions(root: Path) -> None:
    _edit_json(_lm_config(root, "base"), lambda config: config.update(max_position_embeddings=1024))


def _tokenizer_with_fewer_hubert_pieces(root: Path) -> None:
    tokenizer = root / LANGUAGE_MODELS_DIR / MODEL_NAMES["base"] / "tokenizer.model"
    write_extended_tokenizer(llama_layout_tokenizer(), tokenizer, {"Hu": 300})


def _vocoder_with_fewer_unit_rows(root: Path) -> None:
    _edit_json(root / VOCODER_DIRS["base"] / "config.json", lambda config: config.update(num_embeddings=300))


def _pitch_codebook_beyond_pieces(root: Path) -> None:
    path = root / PITCH_DIR / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["vq_params"]["l_bins"] = 128
    path.write_text(yaml.safe_dump(config))


def _style_classes_beyond_pieces(root: Path) -> None:
    def more_labels(config: dict) -> None:
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(120)}
        config["label2id"] = {f"LABEL_{i}": i for i in range(120)}

    _edit_json(root / STYLE_DIR / "config.json", more_labels)


def _vocoder_with_fewer_pitch_rows(root: Path) -> None:
    _edit_json(root / VOCODER_DIRS["expressive"] / "config.json", lambda config: config.update(num_f0_tokens=32))


# (variant, how the bundle is broken, what the message must name: the file and the field)
BROKEN_BUNDLES = {
    "head size vLLM cannot run": ("base", _head_size_16, ["spirit-lm-base-7b/config.json", "head size 16"]),
    "context beyond positions": ("base", _context_beyond_positions, ["config.json", "max_position_embeddings"]),
    "tokenizer lacks Hu pieces": (
        "base",
        _tokenizer_with_fewer_hubert_pieces,
        ["tokenizer.model", "[Hu*]", "L11_quantizer_500.pt: model_cfg.vocab_size"],
    ),
    "vocoder lacks Hu rows": (
        "base",
        _vocoder_with_fewer_unit_rows,
        ["hifigan_spiritlm_base/config.json: num_embeddings", "L11_quantizer_500.pt: model_cfg.vocab_size"],
    ),
    "pitch codebook beyond Pi pieces": (
        "expressive",
        _pitch_codebook_beyond_pieces,
        ["tokenizer.model", "[Pi*]", "vqvae_f0_quantizer/config.yaml: vq_params.l_bins"],
    ),
    "style classes beyond St pieces": (
        "expressive",
        _style_classes_beyond_pieces,
        ["tokenizer.model", "[St*]", "style_encoder_w2v2/config.json: num_labels"],
    ),
    "vocoder lacks Pi rows": (
        "expressive",
        _vocoder_with_fewer_pitch_rows,
        ["hifigan_spiritlm_expressive_w2v2/config.json: num_f0_tokens", "config.yaml: vq_params.l_bins"],
    ),
}


@pytest.mark.parametrize("case", BROKEN_BUNDLES)
def test_broken_bundle_stops_serve_before_the_engine_naming_file_and_field(
    case: str, pristine: dict[str, Path], tmp_path: Path
):
    variant, breaks, named = BROKEN_BUNDLES[case]
    root = tmp_path / "root"
    shutil.copytree(pristine[variant], root)
    breaks(root)
    result = _serve(root)
    assert result.returncode != 0
    for words in named:
        assert words in result.stderr, f"{words!r} not in:\n{result.stderr[-3000:]}"
    assert "vllm.triton_utils" not in result.stderr, "vLLM was imported (its engine started) before the check"


def test_head_size_table_is_what_the_installed_vllm_supports():
    """The copy the start-up check uses (vLLM's import alone takes ~10 s) must not drift from vLLM."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    from vllm.v1.attention.backends.triton_attn import TritonAttentionBackend

    assert list(CPU_ATTENTION_HEAD_SIZES) == CPUAttentionBackend.get_supported_head_sizes()
    assert not TritonAttentionBackend.supports_head_size(CUDA_MIN_HEAD_SIZE - 1)
    assert TritonAttentionBackend.supports_head_size(CUDA_MIN_HEAD_SIZE)


def test_unknown_config_key_is_refused_only_under_strict_config(pristine: dict[str, Path], tmp_path: Path):
    root = tmp_path / "root"
    shutil.copytree(pristine["base"], root)
    _edit_json(root / VOCODER_DIRS["base"] / "config.json", lambda config: config.update(new_training_knob=3))
    result = _serve(root, SPIRITSERVE_STRICT_CONFIG="1")
    assert result.returncode != 0
    assert "hifigan_spiritlm_base/config.json" in result.stderr and "new_training_knob" in result.stderr
