"""The official Spirit LM checkpoint root: find it, check it, and write tiny bundles in the same layout.

Layout (spiritlm-compat.md §1.3)::

    $ROOT/speech_tokenizer/hubert_25hz/{mhubert_base_25hz.pt, L11_quantizer_500.pt}
    $ROOT/speech_tokenizer/hifigan_spiritlm_base/{config.json, generator.pt, speakers.txt, styles.txt}
    $ROOT/speech_tokenizer/vqvae_f0_quantizer/{config.yaml, model.pt}                      (expressive)
    $ROOT/speech_tokenizer/style_encoder_w2v2/{config.json, pytorch_model.bin}             (expressive)
    $ROOT/speech_tokenizer/hifigan_spiritlm_expressive_w2v2/{config.json, generator.pt, speakers.txt}
    $ROOT/spiritlm_model/spirit-lm-{base,expressive}-7b/{config.json, pytorch_model.bin, tokenizer.model, ...}

The variant is read from each LM folder's tokenizer (pitch and style pieces mean expressive), never from
the folder name: the reference's name check breaks when it is given a path (§1.4).
"""

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from spiritserve.engine.language_model import (
    OFFICIAL_VOCAB_SIZES,
    LanguageModelFolder,
    open_language_model,
    write_tiny_language_model,
)
from spiritserve.errors import CheckpointError
from spiritserve.tokens import UnitKind

logger = logging.getLogger(__name__)

Variant = Literal["base", "expressive"]
VARIANTS: tuple[Variant, ...] = ("base", "expressive")
CHECKPOINTS_ENV = "SPIRITLM_CHECKPOINTS_DIR"
HUBERT_DIR = Path("speech_tokenizer/hubert_25hz")
PITCH_DIR = Path("speech_tokenizer/vqvae_f0_quantizer")
STYLE_DIR = Path("speech_tokenizer/style_encoder_w2v2")
VOCODER_DIRS: dict[Variant, Path] = {
    "base": Path("speech_tokenizer/hifigan_spiritlm_base"),
    "expressive": Path("speech_tokenizer/hifigan_spiritlm_expressive_w2v2"),
}
BASE_VOCODER_DIR = VOCODER_DIRS["base"]
LANGUAGE_MODELS_DIR = Path("spiritlm_model")
MODEL_NAMES: dict[Variant, str] = {"base": "spirit-lm-base-7b", "expressive": "spirit-lm-expressive-7b"}
BASE_MODEL_NAME = MODEL_NAMES["base"]
# Written by make_tiny_bundle in the root; official roots lack it. Servers report it (GET /v1/server) so that
# clients can say that the speech of such a bundle is noise.
RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS"
UNIT_COUNTS: dict[Variant, dict[UnitKind, int]] = {
    "base": {"Hu": 501},
    "expressive": {"Hu": 501, "Pi": 64, "St": 100},
}
# Apache-2.0 Llama-layout 32000-piece SentencePiece model shipped by mistral-common (a vLLM dependency).
_LLAMA_LAYOUT_TOKENIZER = "mistral_common/data/tokenizer.model.v1"


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
        """A tiny bundle of random weights (make_tiny_bundle's marker), not a trained model."""
        return (self.root / RANDOM_WEIGHTS_MARKER).is_file()


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


def _llama_layout_tokenizer() -> Path:
    import mistral_common

    path = Path(mistral_common.__file__).parent.parent / _LLAMA_LAYOUT_TOKENIZER
    if not path.is_file():
        raise CheckpointError(f"mistral-common's Llama-layout tokenizer is missing: {path}")
    return path


def make_tiny_bundle(root: Path, variant: Variant = "base", seed: int = 0) -> None:
    """Write a complete bundle of one variant with tiny random weights, file for file in the official layout."""
    # Imported here: the stage modules pull in transformers, and opening a root must stay fast (start-up checks).
    from spiritserve.tokenizers.phonetic import write_tiny_phonetic_tokenizer
    from spiritserve.tokenizers.pitch import write_tiny_pitch_tokenizer
    from spiritserve.tokenizers.style import write_tiny_style_tokenizer
    from spiritserve.vocoder.base import write_tiny_base_vocoder, write_tiny_expressive_vocoder

    write_tiny_phonetic_tokenizer(root / HUBERT_DIR, seed=seed)
    if variant == "expressive":
        write_tiny_pitch_tokenizer(root / PITCH_DIR, seed=seed)
        write_tiny_style_tokenizer(root / STYLE_DIR, seed=seed)
        write_tiny_expressive_vocoder(root / VOCODER_DIRS["expressive"], seed=seed)
    else:
        write_tiny_base_vocoder(root / VOCODER_DIRS["base"], seed=seed)
    write_tiny_language_model(
        root / LANGUAGE_MODELS_DIR / MODEL_NAMES[variant],
        base_tokenizer=_llama_layout_tokenizer(),
        unit_counts=UNIT_COUNTS[variant],
        vocab_size=OFFICIAL_VOCAB_SIZES[variant],
        seed=seed,
    )
    (root / RANDOM_WEIGHTS_MARKER).write_text("tiny random weights written by spiritserve: the speech is noise\n")
    logger.info("wrote a tiny %s bundle to %s", variant, root)


def ensure_embedded_default(root: Path) -> None:
    """Create the embedded tiny bundle on first start; leave an existing one untouched but for the random-weights
    marker, which bundles written before it existed lack (the embedded bundle is random by construction)."""
    if root.exists():
        (root / RANDOM_WEIGHTS_MARKER).touch()
        return
    # Written beside and renamed into place, so an interrupted first start never leaves half a bundle.
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    make_tiny_bundle(partial)
    partial.rename(root)
