"""The Spirit LM language-model folder (`spiritlm_model/<variant>/`): validate it, and write tiny ones.

vLLM loads the weights itself; this module only checks, before an engine is started, that the folder
holds what the official release ships and that the tokenizer and the model agree, so a wrong folder
fails in a second with a clear message instead of deep inside an engine process.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from spiritserve.errors import CheckpointError
from spiritserve.tokenizers.text import SpiritTextTokenizer, write_extended_tokenizer
from spiritserve.tokens import UnitKind

WEIGHT_FILES = (
    "pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "model.safetensors.index.json",
)
OFFICIAL_VOCAB_SIZES = {"base": 32512, "expressive": 32768}


@dataclass(frozen=True)
class LanguageModelFolder:
    path: Path
    vocab_size: int
    max_position_embeddings: int
    head_size: int  # what vLLM's attention kernels are compiled for (Llama-2-7B: 4096 / 32 = 128)
    tokenizer: SpiritTextTokenizer

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def variant(self) -> str:
        return "expressive" if self.tokenizer.is_expressive else "base"


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
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise CheckpointError(f"{path}: no weights; expected one of {list(WEIGHT_FILES)}")
    tokenizer = SpiritTextTokenizer(path / "tokenizer.model")
    vocab_size = _positive_int(config, "vocab_size", config_path)
    if vocab_size < tokenizer.vocab_size:
        raise CheckpointError(
            f"{config_path}: vocab_size {vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size} pieces"
        )
    return LanguageModelFolder(
        path=path,
        vocab_size=vocab_size,
        max_position_embeddings=_positive_int(config, "max_position_embeddings", config_path, default=4096),
        head_size=_head_size(config, config_path),
        tokenizer=tokenizer,
    )


def _positive_int(config: dict, key: str, config_path: Path, default: int | None = None) -> int:
    value = config.get(key, default)
    if type(value) is not int or value < 1:
        raise CheckpointError(f"{config_path}: {key} must be a positive integer, found {value!r}")
    return value


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


def _tiny_llama_config(vocab_size: int) -> dict:
    """Llama-2 `config.json` keys as the official (transformers 4.x) files spell them, tiny sizes.

    head_dim 64: vLLM's CPU attention kernels do not support smaller heads.
    """
    return {
        "architectures": ["LlamaForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 128,
        "initializer_range": 0.02,
        "intermediate_size": 256,
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 100000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.46.0",
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def _tiny_llama_weights(config: dict, seed: int) -> dict[str, torch.Tensor]:
    """Random weights under Hugging Face `LlamaForCausalLM` key names (what `pytorch_model.bin` holds)."""
    generator = torch.Generator().manual_seed(seed)
    hidden, ffn, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]

    def normal(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * config["initializer_range"]).to(torch.bfloat16)

    weights = {"model.embed_tokens.weight": normal(vocab, hidden), "lm_head.weight": normal(vocab, hidden)}
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}"
        for projection in ("q_proj", "k_proj", "v_proj", "o_proj"):
            weights[f"{prefix}.self_attn.{projection}.weight"] = normal(hidden, hidden)
        weights[f"{prefix}.mlp.gate_proj.weight"] = normal(ffn, hidden)
        weights[f"{prefix}.mlp.up_proj.weight"] = normal(ffn, hidden)
        weights[f"{prefix}.mlp.down_proj.weight"] = normal(hidden, ffn)
        weights[f"{prefix}.input_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
        weights[f"{prefix}.post_attention_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    weights["model.norm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    return weights


def write_tiny_language_model(
    path: Path, base_tokenizer: Path, unit_counts: dict[UnitKind, int], vocab_size: int, seed: int = 0
) -> None:
    """A tiny random Llama in the official folder layout, with the extended SentencePiece tokenizer."""
    path.mkdir(parents=True, exist_ok=True)
    config = _tiny_llama_config(vocab_size)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}, indent=2))
    (path / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2)
    )
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": True},
            indent=2,
        )
    )
    write_extended_tokenizer(base_tokenizer, path / "tokenizer.model", unit_counts)
    torch.save(_tiny_llama_weights(config, seed), path / "pytorch_model.bin")
