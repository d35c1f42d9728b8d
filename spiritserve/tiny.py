"""Tiny bundles: every file of a Spirit LM checkpoint root, in the official layout, with tiny random weights.

Tests, `spiritserve make-tiny` and the embedded default (served when no root is given) load them through the same
code as the official files. Kept apart from the models: a stage never imports this module, and the checkpoint
layout (`spiritserve.checkpoints`) only names the folders written here.
"""

import json
import logging
import math
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml
from sentencepiece import sentencepiece_model_pb2
from torch import Tensor

from spiritserve.audio import SAMPLE_RATE
from spiritserve.checkpoints import (
    HUBERT_DIR,
    LANGUAGE_MODELS_DIR,
    MODEL_NAMES,
    PITCH_DIR,
    RANDOM_WEIGHTS_MARKER,
    STYLE_DIR,
    VOCODER_DIRS,
    Variant,
)
from spiritserve.errors import CheckpointError
from spiritserve.tokenizers.hubert import HubertConfig, HubertModel
from spiritserve.tokenizers.phonetic import HUBERT_FILE, QUANTIZER_FILE
from spiritserve.tokenizers.pitch import CONFIG_FILE as PITCH_CONFIG_FILE
from spiritserve.tokenizers.pitch import MODEL_FILE as PITCH_MODEL_FILE
from spiritserve.tokenizers.pitch import VQVAE, VQVAEConfig
from spiritserve.tokenizers.quantizer import LinearQuantizer, QuantizerConfig
from spiritserve.tokenizers.style import CONFIG_FILE as STYLE_CONFIG_FILE
from spiritserve.tokenizers.style import LEGACY_WEIGHT_NORM_NAMES, POS_CONV_PREFIX, StyleConfig, StyleModel
from spiritserve.tokens import MARKERS, UNIT_KINDS, UnitKind, unit_piece
from spiritserve.vocoder.base import HOP
from spiritserve.vocoder.hifigan import CodeHiFiGAN, HifiGanConfig

logger = logging.getLogger(__name__)

# The official vocabularies: their unit pieces, and the LM's embedding rows (more than the pieces, padded).
UNIT_COUNTS: dict[Variant, dict[UnitKind, int]] = {
    "base": {"Hu": 501},
    "expressive": {"Hu": 501, "Pi": 64, "St": 100},
}
OFFICIAL_VOCAB_SIZES: dict[Variant, int] = {"base": 32512, "expressive": 32768}
# Apache-2.0 Llama-layout 32000-piece SentencePiece model shipped by mistral-common (a vLLM dependency).
_LLAMA_LAYOUT_TOKENIZER = "mistral_common/data/tokenizer.model.v1"


def make_tiny_bundle(root: Path, variant: Variant = "base", seed: int = 0) -> None:
    """Write a complete bundle of one variant with tiny random weights, file for file in the official layout."""
    write_tiny_phonetic_tokenizer(root / HUBERT_DIR, seed=seed)
    if variant == "expressive":
        write_tiny_pitch_tokenizer(root / PITCH_DIR, seed=seed)
        write_tiny_style_tokenizer(root / STYLE_DIR, seed=seed)
        write_tiny_expressive_vocoder(root / VOCODER_DIRS["expressive"], seed=seed)
    else:
        write_tiny_base_vocoder(root / VOCODER_DIRS["base"], seed=seed)
    write_tiny_language_model(
        root / LANGUAGE_MODELS_DIR / MODEL_NAMES[variant],
        base_tokenizer=llama_layout_tokenizer(),
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


def llama_layout_tokenizer() -> Path:
    """The 32000-piece model the tiny tokenizers extend, from an installed package: no download."""
    import mistral_common

    path = Path(mistral_common.__file__).parent.parent / _LLAMA_LAYOUT_TOKENIZER
    if not path.is_file():
        raise CheckpointError(f"mistral-common's Llama-layout tokenizer is missing: {path}")
    return path


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


def write_extended_tokenizer(base_model: Path, out: Path, unit_counts: dict[UnitKind, int]) -> None:
    """Append the markers and unit pieces, in the official order, to a 32000-piece Llama-layout model.

    Appended as USER_DEFINED pieces so SentencePiece never splits them; extending in order puts
    `[Text]` at 32000, `[Speech]` at 32001 and `[Hu0]` at 32002, where the official vocabulary has them.
    """
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(base_model.read_bytes())
    if len(proto.pieces) != 32000:
        raise CheckpointError(f"{base_model}: expected a 32000-piece Llama-layout model, found {len(proto.pieces)}")
    new_pieces = [*MARKERS] + [unit_piece(kind, n) for kind in UNIT_KINDS for n in range(unit_counts.get(kind, 0))]
    for piece in new_pieces:
        proto.pieces.add(piece=piece, score=0.0, type=sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(proto.SerializeToString())


def _random_encoder_weight(
    name: str, shape: torch.Size, generator: torch.Generator, residual_outputs: tuple[str, ...]
) -> Tensor:
    """A seeded weight for HuBERT or wav2vec2: unit-variance matrices and kernels, small biases, norm scales (and
    mask embeddings) near 1. The residual branches' outputs are damped: random post-LN layers would otherwise
    average all frames into one vector, and every frame would get the same unit."""
    noise = torch.randn(shape, generator=generator)
    if len(shape) >= 2:
        damping = 0.1 if name.endswith(residual_outputs) else 1.0
        return damping * noise / math.sqrt(math.prod(shape[1:]))
    if name.endswith("bias"):
        return 0.1 * noise
    return 1.0 + 0.1 * noise


def write_tiny_phonetic_tokenizer(hubert_dir: Path, seed: int = 0) -> None:
    """Write both files in the official format (same dict keys and key names) with tiny random weights.

    Same conv strides (hop 640) and 12 layers, narrow widths; the quantizer keeps vocab_size 500.
    """
    generator = torch.Generator().manual_seed(seed)
    model_cfg = {
        "_name": "hubert", "label_rate": 25.0, "extractor_mode": "default", "encoder_layers": 12,
        "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 2,
        "activation_fn": "gelu", "layer_type": "transformer", "dropout": 0.1, "attention_dropout": 0.1,
        "activation_dropout": 0.0, "encoder_layerdrop": 0.05, "dropout_input": 0.1, "dropout_features": 0.1,
        "final_dim": 16, "untie_final_proj": False, "layer_norm_first": False,
        "conv_feature_layers": "[(16,10,5)] + [(16,3,2)] * 4 + [(16,2,2)] * 3", "conv_bias": False,
        "logit_temp": 0.1, "target_glu": False, "feature_grad_mult": 0.1, "mask_length": 10, "mask_prob": 0.8,
        "mask_selection": "static", "mask_other": 0.0, "no_mask_overlap": False, "mask_min_space": 1,
        "mask_channel_length": 10, "mask_channel_prob": 0.0, "mask_channel_selection": "static",
        "mask_channel_other": 0.0, "no_mask_channel_overlap": False, "mask_channel_min_space": 1,
        "conv_pos": 16, "conv_pos_groups": 4, "latent_temp": [2.0, 0.5, 0.999995], "skip_masked": False,
        "skip_nomask": False, "checkpoint_activations": False, "required_seq_len_multiple": 2,
        "depthwise_conv_kernel_size": 31, "attn_type": "", "pos_enc_type": "abs", "fp16": False,
    }  # fmt: skip
    task_cfg = {
        "_name": "hubert_pretraining", "data": "", "fine_tuning": False, "labels": ["km500"], "label_dir": None,
        "label_rate": 25.0, "sample_rate": SAMPLE_RATE, "normalize": False, "enable_padding": False,
        "max_keep_size": None, "max_sample_size": 250000, "min_sample_size": 32000, "single_target": False,
        "random_crop": True, "pad_audio": False,
    }  # fmt: skip
    symbols = ["<s>", "<pad>", "</s>", "<unk>"] + [str(unit) for unit in range(500)]

    random_like = partial(
        _random_encoder_weight, generator=generator, residual_outputs=("out_proj.weight", "fc2.weight")
    )

    hubert = HubertModel(HubertConfig.from_model_cfg(model_cfg, hubert_dir / HUBERT_FILE))
    weights = {name: random_like(name, tensor.shape) for name, tensor in hubert.state_dict().items()}
    weights["encoder.pos_conv.0.weight_g"] = weights["encoder.pos_conv.0.weight_v"].norm(dim=(0, 1), keepdim=True)
    final_dim, embed_dim = model_cfg["final_dim"], model_cfg["encoder_embed_dim"]
    weights["label_embs_concat"] = torch.rand(len(symbols), final_dim, generator=generator)
    weights["final_proj.weight"] = random_like("final_proj.weight", torch.Size([final_dim, embed_dim]))
    weights["final_proj.bias"] = random_like("final_proj.bias", torch.Size([final_dim]))

    quantizer_cfg = {"vocab_size": 500, "dim": embed_dim, "upstream_dim": embed_dim}
    quantizer = LinearQuantizer(QuantizerConfig.from_model_cfg(quantizer_cfg, hubert_dir / QUANTIZER_FILE))
    quantizer_weights = {name: random_like(name, tensor.shape) for name, tensor in quantizer.state_dict().items()}

    hubert_dir.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"model_cfg": model_cfg, "task_cfg": task_cfg, "model_weight": weights, "dictionaries_symbols": [symbols]},
        hubert_dir / HUBERT_FILE,
    )
    torch.save({"model_cfg": quantizer_cfg, "model_weight": quantizer_weights}, hubert_dir / QUANTIZER_FILE)


def write_tiny_pitch_tokenizer(vqvae_dir: Path, seed: int = 0) -> None:
    """Write ``config.yaml`` and ``model.pt`` in the official format (same keys and key names) with tiny widths.

    Same 16x downsampling and 64 codes. Weights are seeded random; the codebook is 64 encoder outputs of
    random pitch contours, so real F0 maps onto many different codes.
    """
    generator = torch.Generator().manual_seed(seed)

    def conv_params() -> dict[str, Any]:  # a fresh dict per use, so the YAML has no anchors
        return {
            "input_emb_width": 2, "output_emb_width": 8, "levels": 1, "downs_t": [4], "strides_t": [2], "width": 8,
            "depth": 2, "m_conv": 1.0, "dilation_growth_rate": 3,
        }  # fmt: skip

    config = {
        "encoder_params": conv_params(),
        "vq_params": {"l_bins": 64, "emb_width": 8, "mu": 0.99, "levels": 1},
        "decoder_params": conv_params(),
        "features": "norm_f0_interp,vuv",
        "speaker_norm": False,
    }
    vqvae_dir.mkdir(parents=True, exist_ok=True)
    (vqvae_dir / PITCH_CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))

    vqvae = VQVAE(VQVAEConfig.from_yaml(vqvae_dir / PITCH_CONFIG_FILE))
    with torch.no_grad():
        for name, tensor in vqvae.named_parameters():
            fan_in = tensor[0].numel() if name.endswith("weight") else 1
            scale = 0.1 if name.endswith("bias") else 1.0 / fan_in**0.5
            tensor.copy_(scale * torch.randn(tensor.shape, generator=generator))
        # Random mean-removed, interpolated contours (tens of Hz around 0) with random voicing.
        frames = 64 * vqvae.config.downsampling
        f0 = 60.0 * torch.cumsum(torch.randn(16, frames, generator=generator), dim=1) / frames**0.5
        voicing = (torch.rand(16, frames, generator=generator) > 0.3).float()
        latents = vqvae.encoder(torch.stack([f0, voicing], dim=1)).transpose(1, 2).reshape(-1, 8)
        picks = torch.randperm(len(latents), generator=generator)[: vqvae.config.codebook_size]
        vqvae.vq.level_blocks[0].k.copy_(latents[picks])
    torch.save({"model": vqvae.state_dict()}, vqvae_dir / PITCH_MODEL_FILE)


def write_tiny_style_tokenizer(style_dir: Path, seed: int = 0) -> None:
    """Write ``config.json`` and ``pytorch_model.bin`` as transformers 4.x writes them, with tiny random weights.

    The standard 7-block conv extractor (20 ms frames) and 100 labels; narrow widths, 2 layers. The pos_conv
    weight norm is stored under the legacy ``weight_g``/``weight_v`` names.
    """
    generator = torch.Generator().manual_seed(seed)
    num_labels = 100
    config = {
        "_name_or_path": "facebook/wav2vec2-base", "activation_dropout": 0.0, "adapter_attn_dim": None,
        "adapter_kernel_size": 3, "adapter_stride": 2, "add_adapter": False, "apply_spec_augment": True,
        "architectures": ["Wav2Vec2ForSequenceClassification"], "attention_dropout": 0.1, "bos_token_id": 1,
        "classifier_proj_size": 16, "codevector_dim": 256, "contrastive_logits_temperature": 0.1,
        "conv_bias": False, "conv_dim": [16] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
        "conv_stride": [5, 2, 2, 2, 2, 2, 2], "ctc_loss_reduction": "sum", "ctc_zero_infinity": False,
        "diversity_loss_weight": 0.1, "do_stable_layer_norm": False, "eos_token_id": 2,
        "feat_extract_activation": "gelu", "feat_extract_dropout": 0.0, "feat_extract_norm": "group",
        "feat_proj_dropout": 0.1, "feat_quantizer_dropout": 0.0, "final_dropout": 0.0,
        "freeze_feat_extract_train": True, "hidden_act": "gelu", "hidden_dropout": 0.1, "hidden_size": 32,
        "id2label": {str(label): f"LABEL_{label}" for label in range(num_labels)}, "initializer_range": 0.02,
        "intermediate_size": 64, "label2id": {f"LABEL_{label}": label for label in range(num_labels)},
        "layer_norm_eps": 1e-05, "layerdrop": 0.0, "mask_channel_length": 10, "mask_channel_min_space": 1,
        "mask_channel_other": 0.0, "mask_channel_prob": 0.0, "mask_channel_selection": "static",
        "mask_feature_length": 10, "mask_feature_min_masks": 0, "mask_feature_prob": 0.0,
        "mask_time_length": 10, "mask_time_min_masks": 2, "mask_time_min_space": 1, "mask_time_other": 0.0,
        "mask_time_prob": 0.05, "mask_time_selection": "static", "model_type": "wav2vec2",
        "no_mask_channel_overlap": False, "no_mask_time_overlap": False, "num_adapter_layers": 3,
        "num_attention_heads": 2, "num_codevector_groups": 2, "num_codevectors_per_group": 320,
        "num_conv_pos_embedding_groups": 4, "num_conv_pos_embeddings": 16, "num_feat_extract_layers": 7,
        "num_hidden_layers": 2, "num_negatives": 100, "output_hidden_size": 32, "pad_token_id": 0,
        "proj_codevector_dim": 256, "tdnn_dilation": [1, 2, 3, 1, 1], "tdnn_dim": [512, 512, 512, 512, 1500],
        "tdnn_kernel": [5, 3, 3, 1, 1], "torch_dtype": "float32", "transformers_version": "4.45.2",
        "use_weighted_layer_sum": False, "vocab_size": 32, "xvector_output_dim": 512,
    }  # fmt: skip

    residual_outputs = ("out_proj.weight", "output_dense.weight")
    random_like = partial(_random_encoder_weight, generator=generator, residual_outputs=residual_outputs)

    model = StyleModel(StyleConfig.from_dict(config, style_dir / STYLE_CONFIG_FILE)).eval()
    weights = {name: random_like(name, tensor.shape) for name, tensor in model.state_dict().items()}
    weight_g, weight_v = (POS_CONV_PREFIX + LEGACY_WEIGHT_NORM_NAMES[name] for name in ("weight_g", "weight_v"))
    weights[weight_g] = weights[weight_v].norm(dim=(0, 1), keepdim=True)  # as weight_norm initialises it
    # Centre the projector on noise: otherwise the frames' common component decides every argmax and all
    # seconds get the same token.
    model.load_state_dict(weights)
    with torch.no_grad():
        noise = torch.randn(1, 2 * SAMPLE_RATE, generator=generator)
        weights["projector.bias"] -= model.projector(model.wav2vec2(noise).last_hidden_state[0]).mean(dim=0)
    legacy_names = {POS_CONV_PREFIX + new: POS_CONV_PREFIX + old for old, new in LEGACY_WEIGHT_NORM_NAMES.items()}

    style_dir.mkdir(parents=True, exist_ok=True)
    (style_dir / STYLE_CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    legacy_weights = {legacy_names.get(name, name): tensor for name, tensor in weights.items()}
    torch.save(legacy_weights, style_dir / "pytorch_model.bin")


TINY_SPEAKERS = ["ex01", "ex02", "ex03", "ex04"]
TINY_STYLES = [
    "read-default", "read-happy", "read-sad", "read-whisper", "read-confused", "read-enunciated",
    "read-laughing", "read-narration", "conv-default", "conv-happy", "conv-sad", "conv-whisper",
]  # fmt: skip


def _tiny_base_config() -> dict:
    """A config.json as training writes it: generator keys plus HiFi-GAN training keys we ignore."""
    embedding_dim = 16
    return {
        "resblock": "1",
        "num_gpus": 0,
        "batch_size": 16,
        "learning_rate": 0.0002,
        "adam_b1": 0.8,
        "adam_b2": 0.99,
        "lr_decay": 0.999,
        "seed": 1234,
        "upsample_rates": [8, 8, 10],
        "upsample_kernel_sizes": [16, 16, 20],
        "upsample_initial_channel": 32,
        "resblock_kernel_sizes": [3],
        "resblock_dilation_sizes": [[1, 3, 5]],
        "num_embeddings": 500,
        "embedding_dim": embedding_dim,
        "model_in_dim": 3 * embedding_dim,  # code + speaker + style
        "multispkr": True,
        "num_speakers": len(TINY_SPEAKERS),
        "multistyle": True,
        "num_styles": len(TINY_STYLES),
        "segment_size": 8960,
        "code_hop_size": HOP,
        "num_mels": 80,
        "num_freq": 1025,
        "n_fft": 1024,
        "hop_size": 256,
        "win_size": 1024,
        "dur_prediction_weight": 1.0,
        "dur_predictor_params": {
            "encoder_embed_dim": embedding_dim,
            "var_pred_hidden_dim": embedding_dim,
            "var_pred_kernel_size": 3,
            "var_pred_dropout": 0.5,
        },
        "sampling_rate": SAMPLE_RATE,
        "fmin": 0,
        "fmax": 8000,
        "fmax_for_loss": None,
        "num_workers": 4,
        "dist_config": {"dist_backend": "nccl", "dist_url": "env://"},
    }


_EMBEDDINGS = {"dict.weight", "f0_dict.weight", "style_dict.weight", "spkr.weight", "style.weight"}


def _tiny_expressive_config() -> dict:
    """The expressive vocoder's config.json: pitch and style unit tables instead of global styles."""
    config = _tiny_base_config()
    del config["num_styles"]
    config.update(
        multistyle=False,
        num_f0_tokens=64,  # VQ-VAE pitch codebook, 12.5 Hz
        f0_hop_size=1280,
        num_style_tokens=100,  # style classifier labels, 1 Hz
        style_hop_size=16000,
        model_in_dim=4 * config["embedding_dim"],  # code + f0 code + style code + speaker
    )
    return config


def _tiny_weight(name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """Random weights that keep the signal alive through the generator and durations small (mostly 1–3)."""
    if name.endswith("weight_g"):
        return torch.full(shape, 1.2)  # filter norm 1.2: output RMS ≈ 0.1–0.4 (1.0 is near silent, 1.5 clips)
    if name.startswith("dur_predictor.ln"):
        return torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
    if name == "dur_predictor.proj.weight":
        return 0.1 * torch.randn(shape, generator=generator)
    if name == "dur_predictor.proj.bias":
        return torch.full(shape, 0.7)  # log(1 + d) ≈ 0.7 ± 0.4 → d mostly 1–3
    if name.endswith("bias"):
        return 0.01 * torch.randn(shape, generator=generator)
    if name.endswith("weight_v") or name in _EMBEDDINGS:
        return torch.randn(shape, generator=generator)  # embeddings; weight_v's scale is normalised away
    fan_in = math.prod(shape[1:])  # the duration predictor's plain convs
    return fan_in**-0.5 * torch.randn(shape, generator=generator)


def _write_tiny_vocoder(vocoder_dir: Path, config: dict, seed: int) -> None:
    """config.json, a seeded generator.pt in the official format, and speakers.txt."""
    vocoder_dir = Path(vocoder_dir)
    vocoder_dir.mkdir(parents=True, exist_ok=True)
    (vocoder_dir / "config.json").write_text(json.dumps(config, indent=4) + "\n")
    with torch.device("meta"):  # shapes and names only; consumes no global RNG
        model = CodeHiFiGAN(HifiGanConfig.from_dict(config, source=vocoder_dir / "config.json"))
    generator = torch.Generator().manual_seed(seed)
    state_dict = {name: _tiny_weight(name, tensor.shape, generator) for name, tensor in model.state_dict().items()}
    torch.save({"generator": state_dict}, vocoder_dir / "generator.pt")
    (vocoder_dir / "speakers.txt").write_text("\n".join(TINY_SPEAKERS))


def write_tiny_base_vocoder(vocoder_dir: Path, seed: int = 0) -> None:
    """Write a tiny seeded vocoder in exactly the official file formats (config.json, generator.pt,
    speakers.txt, styles.txt), so tests load it through the same code as the real one."""
    _write_tiny_vocoder(vocoder_dir, _tiny_base_config(), seed)
    (Path(vocoder_dir) / "styles.txt").write_text("\n".join(TINY_STYLES))


def write_tiny_expressive_vocoder(vocoder_dir: Path, seed: int = 0) -> None:
    """Write a tiny seeded expressive vocoder (``hifigan_spiritlm_expressive_w2v2/`` layout): config.json with
    64 pitch units at f0_hop_size 1280 and 100 style units at style_hop_size 16000, generator.pt with
    ``f0_dict``/``style_dict`` tables, speakers.txt, and no styles.txt."""
    _write_tiny_vocoder(vocoder_dir, _tiny_expressive_config(), seed)
