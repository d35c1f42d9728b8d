"""Phonetic tokenizer: 16 kHz mono audio -> Spirit LM's 25 Hz HuBERT units (0..499), not deduplicated.

mHuBERT base 25 Hz layer 11 -> linear quantizer, run per 100 s chunk as the reference does; chunks are
batched with padding, which gives the same units as one chunk at a time.
"""

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spiritserve.errors import CheckpointError
from spiritserve.tokenizers.chunking import (
    MAX_CHUNK_SAMPLES,
    SAMPLE_RATE,
    join_chunks,
    padded_batches,
    split_into_chunks,
)
from spiritserve.tokenizers.hubert import PRETRAINING_ONLY_KEYS, HubertConfig, HubertModel
from spiritserve.tokenizers.quantizer import LinearQuantizer, QuantizerConfig
from spiritserve.weights import fold_weight_norm, load_state_dict_strict, read_checkpoint, require_keys

HUBERT_FILE = "mhubert_base_25hz.pt"
QUANTIZER_FILE = "L11_quantizer_500.pt"
OUTPUT_LAYER = 11  # 1-based transformer layer the quantizer was trained on


class PhoneticTokenizer:
    """HuBERT + quantizer in fp32 on one device. ``encode`` is synchronous; call it from a worker thread."""

    def __init__(
        self,
        hubert: HubertModel,
        quantizer: LinearQuantizer,
        normalize: bool,
        device: str = "cpu",
        max_batch_samples: int = MAX_CHUNK_SAMPLES,
    ):
        self.hubert = fold_weight_norm(hubert).to(device=device, dtype=torch.float32).eval()
        self.quantizer = quantizer.to(device=device, dtype=torch.float32).eval()
        self.normalize = normalize
        self.max_batch_samples = max_batch_samples  # padded samples per forward, bounds activation memory
        self._device = torch.device(device)

    @classmethod
    def from_dir(cls, hubert_dir: Path, device: str = "cpu") -> "PhoneticTokenizer":
        """Load ``mhubert_base_25hz.pt`` and ``L11_quantizer_500.pt`` (``speech_tokenizer/hubert_25hz``) strictly."""
        hubert_path = hubert_dir / HUBERT_FILE
        checkpoint = read_checkpoint(hubert_path)
        require_keys(checkpoint, ["model_cfg", "task_cfg", "model_weight", "dictionaries_symbols"], hubert_path)
        task_cfg = checkpoint["task_cfg"]
        if not isinstance(task_cfg, dict):
            raise CheckpointError(f"{hubert_path}: task_cfg must be a dict, found {type(task_cfg).__name__}")
        if task_cfg.get("sample_rate", SAMPLE_RATE) != SAMPLE_RATE:
            raise CheckpointError(f"{hubert_path}: task_cfg sample_rate {task_cfg['sample_rate']} != {SAMPLE_RATE}")
        normalize = task_cfg.get("normalize", False)
        if not isinstance(normalize, bool):
            raise CheckpointError(f"{hubert_path}: task_cfg normalize must be a bool, found {normalize!r}")
        if not isinstance(checkpoint["model_weight"], dict):
            raise CheckpointError(f"{hubert_path}: model_weight must be a state dict")
        hubert = HubertModel(HubertConfig.from_model_cfg(checkpoint["model_cfg"], hubert_path))
        weights = {key: value for key, value in checkpoint["model_weight"].items() if key not in PRETRAINING_ONLY_KEYS}
        load_state_dict_strict(hubert, weights, hubert_path)

        quantizer_path = hubert_dir / QUANTIZER_FILE
        quantizer_config, quantizer_weights = read_quantizer(hubert_dir)
        if quantizer_config.dim != hubert.config.encoder_embed_dim:
            raise CheckpointError(
                f"{quantizer_path}: quantizer dim {quantizer_config.dim} does not match "
                f"encoder_embed_dim {hubert.config.encoder_embed_dim} of {hubert_path}"
            )
        quantizer = LinearQuantizer(quantizer_config)
        load_state_dict_strict(quantizer, quantizer_weights, quantizer_path)
        return cls(hubert, quantizer, normalize=normalize, device=device)

    @property
    def frame_hop(self) -> int:
        """Samples per unit at 16 kHz (640: 25 Hz)."""
        return self.hubert.config.frame_hop

    @property
    def vocab_size(self) -> int:
        return self.quantizer.config.vocab_size

    @property
    def device(self) -> torch.device:
        return self._device

    def encode(self, waveforms: list[np.ndarray]) -> list[list[int]]:
        """16 kHz mono float waveforms -> one list of units per waveform (25 Hz, undeduplicated)."""
        chunks = split_into_chunks(waveforms)
        chunk_units: list[list[int]] = [[] for _ in chunks]
        with torch.inference_mode():
            for batch in padded_batches([len(chunk) for _, chunk in chunks], self.max_batch_samples):
                for done, units in zip(batch, self._encode_batch([chunks[i][1] for i in batch]), strict=True):
                    chunk_units[done] = units
        return join_chunks(chunks, chunk_units, len(waveforms))

    def _encode_batch(self, chunks: list[np.ndarray]) -> list[list[int]]:
        """Chunks (each MIN..MAX_CHUNK_SAMPLES long) -> units per chunk, in one padded forward."""
        lengths = [len(chunk) for chunk in chunks]
        waveforms = torch.zeros(len(chunks), max(lengths))  # (B, samples), right-padded
        for row, chunk in enumerate(chunks):
            waveform = torch.tensor(chunk)  # copies; the caller's array may be read-only
            if self.normalize:  # zero mean, unit variance over the chunk, before padding
                waveform = F.layer_norm(waveform, waveform.shape)
            waveforms[row, : len(chunk)] = waveform
        waveforms = waveforms.to(self._device)
        padding_mask = None
        if min(lengths) != max(lengths):
            padding_mask = torch.arange(max(lengths)) >= torch.tensor(lengths)[:, None]  # (B, samples)
            padding_mask = padding_mask.to(self._device)

        features, frame_padding_mask = self.hubert.extract_features(waveforms, padding_mask, OUTPUT_LAYER)
        frame_counts = (~frame_padding_mask).sum(dim=1).tolist()
        return [self.quantizer.units(features[row, :count]).tolist() for row, count in enumerate(frame_counts)]


def read_quantizer(hubert_dir: Path) -> tuple[QuantizerConfig, dict]:
    """``L11_quantizer_500.pt``'s config and state dict (a small file: the start-up checks read it first)."""
    quantizer_path = hubert_dir / QUANTIZER_FILE
    checkpoint = read_checkpoint(quantizer_path)
    require_keys(checkpoint, ["model_cfg", "model_weight"], quantizer_path)
    config = QuantizerConfig.from_model_cfg(checkpoint["model_cfg"], quantizer_path)
    if not isinstance(checkpoint["model_weight"], dict):
        raise CheckpointError(f"{quantizer_path}: model_weight must be a state dict")
    return config, checkpoint["model_weight"]


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

    def random_like(name: str, shape: torch.Size) -> torch.Tensor:
        noise = torch.randn(shape, generator=generator)
        if len(shape) >= 2:  # matrices and conv kernels: unit-variance outputs
            # Damped residual branches: 12 random post-LN layers would otherwise average all frames into
            # one vector and every frame would get the same unit.
            damping = 0.1 if name.endswith(("out_proj.weight", "fc2.weight")) else 1.0
            return damping * noise / math.sqrt(math.prod(shape[1:]))
        if name.endswith("bias"):
            return 0.1 * noise
        return 1.0 + 0.1 * noise  # norm scales, mask_emb

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
