"""The official Spirit LM checkpoint root: find its files and check them, before any model loads.

Layout (spiritlm-compat.md §1.3)::

    $ROOT/speech_tokenizer/hubert_25hz/{mhubert_base_25hz.pt, L11_quantizer_500.pt}
    $ROOT/speech_tokenizer/hifigan_spiritlm_base/{config.json, generator.pt, speakers.txt, styles.txt}
    $ROOT/speech_tokenizer/vqvae_f0_quantizer/{config.yaml, model.pt}                      (expressive)
    $ROOT/speech_tokenizer/style_encoder_w2v2/{config.json, pytorch_model.bin}             (expressive)
    $ROOT/speech_tokenizer/hifigan_spiritlm_expressive_w2v2/{config.json, generator.pt, speakers.txt}
    $ROOT/spiritlm_model/spirit-lm-{base,expressive}-7b/{config.json, pytorch_model.bin, tokenizer.model, ...}

The variant is read from each LM folder's tokenizer (pitch and style pieces mean expressive), never from
the folder name: the reference's name check breaks when it is given a path (§1.4). This module imports no stage:
the stages are built from the folders it names (`spiritserve.server.app.load_pipeline`), and tiny bundles in this
layout are written by `spiritserve.tiny`.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from spiritserve.errors import CheckpointError
from spiritserve.tokens import unit_piece
from spiritserve.weights import read_sentencepiece

Variant = Literal["base", "expressive"]
HUBERT_DIR = Path("speech_tokenizer/hubert_25hz")
PITCH_DIR = Path("speech_tokenizer/vqvae_f0_quantizer")
STYLE_DIR = Path("speech_tokenizer/style_encoder_w2v2")
VOCODER_DIRS: dict[Variant, Path] = {
    "base": Path("speech_tokenizer/hifigan_spiritlm_base"),
    "expressive": Path("speech_tokenizer/hifigan_spiritlm_expressive_w2v2"),
}
LANGUAGE_MODELS_DIR = Path("spiritlm_model")
MODEL_NAMES: dict[Variant, str] = {"base": "spirit-lm-base-7b", "expressive": "spirit-lm-expressive-7b"}
# Written by spiritserve.tiny in the root; official roots lack it. Servers report it (GET /v1/server) so that
# clients can say that the speech of such a bundle is noise.
RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS"
TOKENIZER_FILE = "tokenizer.model"
LANGUAGE_MODEL_WEIGHT_FILES = (
    "pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "model.safetensors.index.json",
)


@dataclass(frozen=True)
class LanguageModelFolder:
    """A Llama folder in the official layout, checked before an engine starts: a wrong folder fails in a second
    with a clear message instead of deep inside an engine process (vLLM loads the weights itself)."""

    path: Path
    vocab_size: int
    max_position_embeddings: int
    head_size: int  # what vLLM's attention kernels are compiled for (Llama-2-7B: 4096 / 32 = 128)
    variant: Variant
    parameter_count: int  # from the config, for planning GPU memory before anything loads (Llama-2-7B: 6.7 B)

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER_FILE


def open_language_model(path: Path) -> LanguageModelFolder:
    """Check a Llama folder in the official layout and read what the server needs from it."""
    config_path = path / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"language model config not found: {config_path}")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path}: not valid JSON: {exc}") from exc
    if config.get("model_type") != "llama":
        raise CheckpointError(f"{config_path}: model_type must be 'llama', found {config.get('model_type')!r}")
    if not any((path / name).is_file() for name in LANGUAGE_MODEL_WEIGHT_FILES):
        raise CheckpointError(f"{path}: no weights; expected one of {list(LANGUAGE_MODEL_WEIGHT_FILES)}")
    pieces = read_sentencepiece(path / TOKENIZER_FILE)
    vocab_size = _positive_int(config, "vocab_size", config_path)
    if vocab_size < pieces.GetPieceSize():
        raise CheckpointError(
            f"{config_path}: vocab_size {vocab_size} is smaller than the tokenizer's {pieces.GetPieceSize()} pieces"
        )
    expressive = all(pieces.PieceToId(unit_piece(kind, 0)) != pieces.unk_id() for kind in ("Pi", "St"))
    return LanguageModelFolder(
        path=path,
        vocab_size=vocab_size,
        max_position_embeddings=_positive_int(config, "max_position_embeddings", config_path, default=4096),
        head_size=_head_size(config, config_path),
        variant="expressive" if expressive else "base",
        parameter_count=_llama_parameter_count(config, config_path),
    )


def _positive_int(config: dict, key: str, config_path: Path, default: int | None = None) -> int:
    value = config.get(key, default)
    if type(value) is not int or value < 1:
        raise CheckpointError(f"{config_path}: {key} must be a positive integer, found {value!r}")
    return value


def _llama_parameter_count(config: dict, config_path: Path) -> int:
    """Embeddings, per layer attention (grouped K/V heads where the config has them), the gated MLP and two
    norms, the final norm, and the output head unless tied to the embeddings."""
    hidden = _positive_int(config, "hidden_size", config_path)
    layers = _positive_int(config, "num_hidden_layers", config_path)
    heads = _positive_int(config, "num_attention_heads", config_path)
    kv_heads = _positive_int(config, "num_key_value_heads", config_path, default=heads)
    vocab = _positive_int(config, "vocab_size", config_path)
    head_size = _head_size(config, config_path)
    attention = 2 * hidden * heads * head_size + 2 * hidden * kv_heads * head_size
    mlp = 3 * hidden * _positive_int(config, "intermediate_size", config_path)
    output = 0 if config.get("tie_word_embeddings") else vocab * hidden
    return vocab * hidden + layers * (attention + mlp + 2 * hidden) + hidden + output


def _head_size(config: dict, config_path: Path) -> int:
    """``head_dim`` where the config sets it, else hidden_size / num_attention_heads (transformers' rule)."""
    if config.get("head_dim") is not None:
        return _positive_int(config, "head_dim", config_path)
    hidden_size = _positive_int(config, "hidden_size", config_path)
    heads = _positive_int(config, "num_attention_heads", config_path)
    if hidden_size % heads:
        raise CheckpointError(
            f"{config_path}: hidden_size {hidden_size} is not a multiple of num_attention_heads {heads}"
        )
    return hidden_size // heads


@dataclass(frozen=True)
class SpiritCheckpoint:
    """The files of one servable variant under a checkpoint root."""

    root: Path
    language_model: LanguageModelFolder
    hubert_dir: Path
    vocoder_dir: Path
    pitch_dir: Path | None = None  # expressive only
    style_dir: Path | None = None  # expressive only

    @property
    def variant(self) -> Variant:
        return self.language_model.variant

    @property
    def random_weights(self) -> bool:
        """A tiny bundle of random weights (spiritserve.tiny's marker), not a trained model."""
        return (self.root / RANDOM_WEIGHTS_MARKER).is_file()


def embedded_default_root() -> Path:
    """Where the embedded tiny bundle lives when no root is given: the user's cache, created on first start."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "spiritserve" / "tiny-base"


def resolve_root(root: Path | None) -> tuple[Path, bool]:
    """The root to serve and whether it is the embedded default: `root` (the `checkpoints` setting: the CLI flag,
    SPIRITSERVE_CHECKPOINTS or the reference's SPIRITLM_CHECKPOINTS_DIR) when set, else the embedded default."""
    if root is not None:
        return root, False
    return embedded_default_root(), True


def _choose_language_model(models_dir: Path, variant: Variant | None) -> LanguageModelFolder:
    """The LM folder of the asked variant; unasked, the only one present, else base."""
    candidates = sorted(path for path in models_dir.glob("*") if (path / "config.json").is_file())
    if not candidates:
        example = models_dir / MODEL_NAMES["base"]
        raise CheckpointError(f"no language model under {models_dir} (expected e.g. {example})")
    folders = [open_language_model(path) for path in candidates]
    present = {folder.variant for folder in folders}
    wanted = variant or (folders[0].variant if len(present) == 1 else "base")
    matching = [folder for folder in folders if folder.variant == wanted]
    if not matching:
        found = ", ".join(f"{folder.path.name} ({folder.variant})" for folder in folders)
        raise CheckpointError(f"no {wanted}-variant language model under {models_dir}; found {found}")
    return matching[0]


def open_checkpoint(root: Path, variant: Variant | None = None) -> SpiritCheckpoint:
    """Find the variant's language model under `root` and check every speech folder it needs exists."""
    if not root.is_dir():
        raise CheckpointError(f"checkpoint root not found: {root}")
    language_model = _choose_language_model(root / LANGUAGE_MODELS_DIR, variant)
    expressive = language_model.variant == "expressive"
    checkpoint = SpiritCheckpoint(
        root=root,
        language_model=language_model,
        hubert_dir=root / HUBERT_DIR,
        vocoder_dir=root / VOCODER_DIRS[language_model.variant],
        pitch_dir=root / PITCH_DIR if expressive else None,
        style_dir=root / STYLE_DIR if expressive else None,
    )
    for folder in (checkpoint.hubert_dir, checkpoint.vocoder_dir, checkpoint.pitch_dir, checkpoint.style_dir):
        if folder is not None and not folder.is_dir():
            raise CheckpointError(f"speech tokenizer folder not found: {folder}")
    return checkpoint
