"""The official Spirit LM checkpoint root: find it, check it, and write tiny bundles in the same layout.

Layout (spiritlm-compat.md §1.3)::

    $ROOT/speech_tokenizer/hubert_25hz/{mhubert_base_25hz.pt, L11_quantizer_500.pt}
    $ROOT/speech_tokenizer/hifigan_spiritlm_base/{config.json, generator.pt, speakers.txt, styles.txt}
    $ROOT/spiritlm_model/spirit-lm-base-7b/{config.json, pytorch_model.bin, tokenizer.model, ...}

The variant is read from each LM folder's tokenizer (pitch and style pieces mean expressive), never from
the folder name: the reference's name check breaks when it is given a path (§1.4).
"""

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from spiritserve.engine.language_model import (
    OFFICIAL_VOCAB_SIZES,
    LanguageModelFolder,
    open_language_model,
    write_tiny_language_model,
)
from spiritserve.errors import CheckpointError
from spiritserve.tokenizers.phonetic import write_tiny_phonetic_tokenizer
from spiritserve.vocoder.base import write_tiny_base_vocoder

logger = logging.getLogger(__name__)

CHECKPOINTS_ENV = "SPIRITLM_CHECKPOINTS_DIR"
HUBERT_DIR = Path("speech_tokenizer/hubert_25hz")
BASE_VOCODER_DIR = Path("speech_tokenizer/hifigan_spiritlm_base")
LANGUAGE_MODELS_DIR = Path("spiritlm_model")
BASE_MODEL_NAME = "spirit-lm-base-7b"
# Apache-2.0 Llama-layout 32000-piece SentencePiece model shipped by mistral-common (a vLLM dependency).
_LLAMA_LAYOUT_TOKENIZER = "mistral_common/data/tokenizer.model.v1"
_BASE_UNIT_COUNTS = {"Hu": 501}


@dataclass(frozen=True)
class SpiritCheckpoint:
    """The files of one servable variant under a checkpoint root."""

    root: Path
    language_model: LanguageModelFolder
    hubert_dir: Path
    vocoder_dir: Path

    @property
    def variant(self) -> str:
        return self.language_model.variant


def embedded_default_root() -> Path:
    """Where the embedded tiny bundle lives when no root is given: the user's cache, created on first start."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "spiritserve" / "tiny-base"


def resolve_root(cli_root: Path | None) -> tuple[Path, bool]:
    """The root to serve and whether it is the embedded default: CLI flag, then the reference's env var."""
    if cli_root is not None:
        return cli_root, False
    if os.environ.get(CHECKPOINTS_ENV):
        return Path(os.environ[CHECKPOINTS_ENV]), False
    return embedded_default_root(), True


def open_checkpoint(root: Path) -> SpiritCheckpoint:
    """Find the base variant under `root` and check every folder it needs exists."""
    if not root.is_dir():
        raise CheckpointError(f"checkpoint root not found: {root}")
    models_dir = root / LANGUAGE_MODELS_DIR
    candidates = sorted(path for path in models_dir.glob("*") if (path / "config.json").is_file())
    if not candidates:
        raise CheckpointError(f"no language model under {models_dir} (expected e.g. {models_dir / BASE_MODEL_NAME})")
    folders = [open_language_model(path) for path in candidates]
    base = [folder for folder in folders if folder.variant == "base"]
    if not base:
        found = ", ".join(f"{folder.path.name} ({folder.variant})" for folder in folders)
        raise CheckpointError(f"no base-variant language model under {models_dir}; found {found}")
    checkpoint = SpiritCheckpoint(
        root=root, language_model=base[0], hubert_dir=root / HUBERT_DIR, vocoder_dir=root / BASE_VOCODER_DIR
    )
    for folder in (checkpoint.hubert_dir, checkpoint.vocoder_dir):
        if not folder.is_dir():
            raise CheckpointError(f"speech tokenizer folder not found: {folder}")
    return checkpoint


def _llama_layout_tokenizer() -> Path:
    import mistral_common

    path = Path(mistral_common.__file__).parent.parent / _LLAMA_LAYOUT_TOKENIZER
    if not path.is_file():
        raise CheckpointError(f"mistral-common's Llama-layout tokenizer is missing: {path}")
    return path


def make_tiny_bundle(root: Path, seed: int = 0) -> None:
    """Write a complete base bundle with tiny random weights, file for file in the official layout."""
    write_tiny_phonetic_tokenizer(root / HUBERT_DIR, seed=seed)
    write_tiny_base_vocoder(root / BASE_VOCODER_DIR, seed=seed)
    write_tiny_language_model(
        root / LANGUAGE_MODELS_DIR / BASE_MODEL_NAME,
        base_tokenizer=_llama_layout_tokenizer(),
        unit_counts=_BASE_UNIT_COUNTS,
        vocab_size=OFFICIAL_VOCAB_SIZES["base"],
        seed=seed,
    )
    logger.info("wrote a tiny base bundle to %s", root)


def ensure_embedded_default(root: Path) -> None:
    """Create the embedded tiny bundle on first start; leave an existing one untouched."""
    if root.exists():
        return
    # Written beside and renamed into place, so an interrupted first start never leaves half a bundle.
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    make_tiny_bundle(partial)
    partial.rename(root)
