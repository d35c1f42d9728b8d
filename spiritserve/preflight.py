"""Start-up checks across checkpoint files, from their configs alone, before weights load or vLLM starts.

Each stage's loader checks its own file strictly; what no single loader sees is whether the files agree
with each other and with the engine. A unit the quantizer emits but the tokenizer has no piece for becomes
text in the prompt; one the vocoder has no row for fails the request that resynthesises it; a head size
vLLM's attention kernels lack kills the engine during warm-up, 25 s in, as a bare ``EngineDeadError``.
These checks read a few small files and name the file and the field at fault.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from spiritserve.checkpoints import SpiritCheckpoint, open_checkpoint, resolve_root
from spiritserve.engine.tokenizer import SpiritTextTokenizer
from spiritserve.errors import CheckpointError
from spiritserve.settings import Settings
from spiritserve.tokenizers.phonetic import QUANTIZER_FILE, read_quantizer
from spiritserve.tokenizers.pitch import CONFIG_FILE as PITCH_CONFIG_FILE
from spiritserve.tokenizers.pitch import VQVAEConfig
from spiritserve.tokens import UnitKind
from spiritserve.vocoder.hifigan import HifiGanConfig
from spiritserve.weights import config_key_policy

# Head sizes vLLM 0.32's CPU attention backend has kernels for (CPUAttentionBackend.get_supported_head_sizes;
# tests/test_preflight.py checks this copy against vLLM, whose import alone takes seconds: docs/measurements.md).
CPU_ATTENTION_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
# On CUDA vLLM falls back to its Triton backend, which takes any head size from 32 up.
CUDA_MIN_HEAD_SIZE = 32


@dataclass(frozen=True)
class UnitTable:
    """How many ids of one unit stream a file produces or consumes, and where that number comes from."""

    size: int
    source: str  # "<file>: <field>"


def check_attention_head_size(checkpoint: SpiritCheckpoint, on_cpu: bool) -> None:
    language_model = checkpoint.language_model
    head_size = language_model.head_size
    if on_cpu and head_size not in CPU_ATTENTION_HEAD_SIZES:
        raise CheckpointError(
            f"{language_model.config_path}: head size {head_size} (hidden_size / num_attention_heads) is not "
            f"supported by vLLM's CPU attention backend; supported: {list(CPU_ATTENTION_HEAD_SIZES)}"
        )
    if not on_cpu and head_size < CUDA_MIN_HEAD_SIZE:
        raise CheckpointError(
            f"{language_model.config_path}: head size {head_size} (hidden_size / num_attention_heads) is below "
            f"{CUDA_MIN_HEAD_SIZE}, the smallest vLLM's GPU attention backends support"
        )


def check_context_length(checkpoint: SpiritCheckpoint, max_model_len: int) -> None:
    language_model = checkpoint.language_model
    if max_model_len > language_model.max_position_embeddings:
        raise CheckpointError(
            f"{language_model.config_path}: max_position_embeddings is {language_model.max_position_embeddings}, "
            f"smaller than the configured context of {max_model_len} tokens (SPIRITSERVE_ENGINE_MAX_MODEL_LEN)"
        )


def _style_label_count(path: Path) -> int:
    """The style classifier's classes as transformers counts them (``id2label`` if present, else
    ``num_labels``), read without importing transformers (seconds); the full parse comes with the weights."""
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read config {path}: {exc}") from exc
    count = len(config["id2label"]) if isinstance(config.get("id2label"), dict) else config.get("num_labels", 2)
    if type(count) is not int or count < 1:
        raise CheckpointError(f"{path}: num_labels must be a positive integer, found {count!r}")
    return count


def unit_tables(checkpoint: SpiritCheckpoint) -> tuple[dict[UnitKind, UnitTable], dict[UnitKind, UnitTable]]:
    """Per unit stream: how many units the speech tokenizer emits, and how many the vocoder has rows for."""
    quantizer, _ = read_quantizer(checkpoint.hubert_dir)
    emitted = {"Hu": UnitTable(quantizer.vocab_size, f"{checkpoint.hubert_dir / QUANTIZER_FILE}: model_cfg.vocab_size")}
    if checkpoint.pitch_dir is not None and checkpoint.style_dir is not None:
        pitch_config = checkpoint.pitch_dir / PITCH_CONFIG_FILE
        style_config = checkpoint.style_dir / "config.json"
        codebook_size = VQVAEConfig.from_yaml(pitch_config).codebook_size
        emitted["Pi"] = UnitTable(codebook_size, f"{pitch_config}: vq_params.l_bins")
        emitted["St"] = UnitTable(_style_label_count(style_config), f"{style_config}: num_labels")
    vocoder_config_path = checkpoint.vocoder_dir / "config.json"
    vocoder = HifiGanConfig.from_json(vocoder_config_path)
    vocoded = {"Hu": UnitTable(vocoder.num_embeddings, f"{vocoder_config_path}: num_embeddings")}
    if vocoder.num_f0_tokens:
        vocoded["Pi"] = UnitTable(vocoder.num_f0_tokens, f"{vocoder_config_path}: num_f0_tokens")
    if vocoder.num_style_tokens:
        vocoded["St"] = UnitTable(vocoder.num_style_tokens, f"{vocoder_config_path}: num_style_tokens")
    return emitted, vocoded


def check_unit_tables(checkpoint: SpiritCheckpoint) -> None:
    """Every unit the speech tokenizer can emit needs a tokenizer piece and a vocoder row; the vocoder must
    read exactly the streams the variant's tokenizer writes."""
    tokenizer = SpiritTextTokenizer(checkpoint.language_model.tokenizer_path)  # its own checks: markers, Hu pieces
    emitted, vocoded = unit_tables(checkpoint)
    for kind, table in emitted.items():
        pieces = len(tokenizer.unit_ids[kind])
        if pieces < table.size:
            raise CheckpointError(
                f"{tokenizer.model_path}: {pieces} [{kind}*] pieces, but {table.source} is {table.size}; "
                f"units {pieces}..{table.size - 1} would have no token"
            )
        if kind not in vocoded:
            raise CheckpointError(
                f"{checkpoint.vocoder_dir / 'config.json'}: the vocoder has no {kind} unit table, but the "
                f"{checkpoint.variant} tokenizer emits {kind} units ({table.source})"
            )
        if vocoded[kind].size < table.size:
            raise CheckpointError(
                f"{vocoded[kind].source} is {vocoded[kind].size}, but {table.source} is {table.size}; "
                f"those units could not be vocoded"
            )
    unexpected = sorted(vocoded.keys() - emitted.keys())
    if unexpected:
        raise CheckpointError(
            f"{vocoded[unexpected[0]].source}: the vocoder reads {unexpected} units, which the "
            f"{checkpoint.variant} variant never produces (is this the other variant's vocoder?)"
        )


def check_checkpoint(checkpoint: SpiritCheckpoint, max_model_len: int, on_cpu: bool | None) -> None:
    """All start-up checks; raises CheckpointError naming the file and the field. ``on_cpu`` None: the engine
    runs elsewhere (remote mode), on a platform only it knows, and checks the head size itself."""
    if on_cpu is not None:
        check_attention_head_size(checkpoint, on_cpu)
    check_context_length(checkpoint, max_model_len)
    check_unit_tables(checkpoint)


def prepare_checkpoint(settings: Settings) -> SpiritCheckpoint:
    """Resolve the root (writing the embedded default on first start), open it and run every check."""
    root, is_embedded_default = resolve_root(settings.checkpoints)
    if is_embedded_default:
        from spiritserve.tiny import ensure_embedded_default  # only here: it imports every stage (transformers)

        ensure_embedded_default(root)
    checkpoint = open_checkpoint(root, settings.variant)
    with config_key_policy(strict=settings.strict_config):
        engine_on_cpu = None if settings.engine_url else not torch.cuda.is_available()
        check_checkpoint(checkpoint, settings.engine_max_model_len, on_cpu=engine_on_cpu)
    return checkpoint
