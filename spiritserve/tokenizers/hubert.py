"""HuBERT in fairseq's layout: 16 kHz waveform -> transformer features, as used by Spirit LM's phonetic tokenizer.

Only the inference path of the official ``mhubert_base_25hz.pt`` is implemented: the default conv extractor
(GroupNorm in the first block), post-LN transformer (``layer_norm_first=False``), no masking, no dropout.
Parameter names are fairseq's, so ``model_weight`` loads strictly with no mapping. Unlike fairseq, a
right-padded batch gives the same features as running each utterance alone (see ``extract_features``), and the
forward itself (``HubertModel.forward``) makes no host sync, so a padded batch of fixed shape can be captured as a
CUDA graph.
"""

import ast
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spiritserve.errors import CheckpointError
from spiritserve.transfers import to_device
from spiritserve.weights import check_unknown_keys, legacy_weight_norm

# Every field of fairseq's HubertConfig (plus the ``_name`` its dataclasses carry), in any fairseq version
# we know of. Those not read by ``HubertConfig.from_model_cfg`` only matter for training (dropout, masking,
# loss) or for conformer layers, which are rejected through ``layer_type``.
FAIRSEQ_HUBERT_KEYS = {
    "_name", "label_rate", "extractor_mode", "encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim",
    "encoder_attention_heads", "activation_fn", "layer_type", "dropout", "attention_dropout",
    "activation_dropout", "encoder_layerdrop", "dropout_input", "dropout_features", "final_dim",
    "untie_final_proj", "layer_norm_first", "conv_feature_layers", "conv_bias", "logit_temp", "target_glu",
    "feature_grad_mult", "mask_length", "mask_prob", "mask_selection", "mask_other", "no_mask_overlap",
    "mask_min_space", "mask_channel_length", "mask_channel_prob", "mask_channel_selection",
    "mask_channel_other", "no_mask_channel_overlap", "mask_channel_min_space", "conv_pos", "conv_pos_groups",
    "conv_pos_batch_norm", "latent_temp", "skip_masked", "skip_nomask", "checkpoint_activations",
    "required_seq_len_multiple", "depthwise_conv_kernel_size", "attn_type", "pos_enc_type", "fp16",
}  # fmt: skip

# Pre-training heads stored in the official file that feature extraction never uses. They are the only
# keys dropped before the strict load; anything else the model lacks is an error.
PRETRAINING_ONLY_KEYS = ("label_embs_concat", "final_proj.weight", "final_proj.bias")


def parse_conv_feature_layers(text: str, source: Path) -> tuple[tuple[int, int, int], ...]:
    """Read fairseq's ``conv_feature_layers`` string, e.g. ``"[(512,10,5)] + [(512,3,2)] * 4"``, without eval.

    ``ast.literal_eval`` accepts no list ``+`` or ``*``, so this walks the parsed expression and allows
    only list/tuple literals of ints, list + list and list * int.
    """

    def evaluate(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [evaluate(item) for item in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = evaluate(node.left), evaluate(node.right)
            if isinstance(left, list) and isinstance(right, list):
                return left + right
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            left, right = evaluate(node.left), evaluate(node.right)
            if isinstance(left, list) and type(right) is int and 0 <= right <= 1000:
                return left * right
        raise ValueError(ast.dump(node))

    try:
        layers = evaluate(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{source}: cannot parse conv_feature_layers {text!r}: {exc}") from exc
    valid = isinstance(layers, list) and len(layers) > 0
    valid = valid and all(
        isinstance(layer, (tuple, list)) and len(layer) == 3 and all(type(v) is int and v > 0 for v in layer)
        for layer in layers
    )
    if not valid:
        raise CheckpointError(
            f"{source}: conv_feature_layers {text!r} is not a non-empty list of (channels, kernel, stride) "
            "with positive ints"
        )
    return tuple((channels, kernel, stride) for channels, kernel, stride in layers)


@dataclass(frozen=True)
class HubertConfig:
    """The architecture fields of fairseq's HubertConfig that inference needs (fairseq defaults)."""

    conv_feature_layers: tuple[tuple[int, int, int], ...]  # (channels, kernel, stride) per conv block
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    conv_pos: int = 128
    conv_pos_groups: int = 16
    required_seq_len_multiple: int = 2

    @classmethod
    def from_model_cfg(cls, model_cfg: Any, source: Path) -> "HubertConfig":
        """Build from a checkpoint's ``model_cfg`` dict; unsupported variants are errors, unknown keys warnings."""
        if not isinstance(model_cfg, dict):
            raise CheckpointError(f"{source}: model_cfg must be a dict, found {type(model_cfg).__name__}")
        check_unknown_keys(model_cfg, FAIRSEQ_HUBERT_KEYS, source, "model_cfg")

        # Variants with other layers or key names; fail rather than load something we do not run.
        supported = {
            "extractor_mode": "default",
            "layer_type": "transformer",
            "layer_norm_first": False,
            "activation_fn": "gelu",
            "conv_pos_batch_norm": False,
            "target_glu": False,
        }
        for key, value in supported.items():
            if key in model_cfg and model_cfg[key] != value:
                raise CheckpointError(f"{source}: unsupported model_cfg {key}={model_cfg[key]!r} (need {value!r})")

        text = model_cfg.get("conv_feature_layers", "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2")
        if not isinstance(text, str):
            raise CheckpointError(f"{source}: conv_feature_layers must be a string, found {text!r}")

        def read(key: str, kind: type, default: Any) -> Any:
            value = model_cfg.get(key, default)
            if type(value) is not kind or (kind is int and value < 1):
                raise CheckpointError(
                    f"{source}: model_cfg {key} must be a {'positive ' * (kind is int)}{kind.__name__}, found {value!r}"
                )
            return value

        config = cls(
            conv_feature_layers=parse_conv_feature_layers(text, source),
            conv_bias=read("conv_bias", bool, cls.conv_bias),
            encoder_layers=read("encoder_layers", int, cls.encoder_layers),
            encoder_embed_dim=read("encoder_embed_dim", int, cls.encoder_embed_dim),
            encoder_ffn_embed_dim=read("encoder_ffn_embed_dim", int, cls.encoder_ffn_embed_dim),
            encoder_attention_heads=read("encoder_attention_heads", int, cls.encoder_attention_heads),
            conv_pos=read("conv_pos", int, cls.conv_pos),
            conv_pos_groups=read("conv_pos_groups", int, cls.conv_pos_groups),
            required_seq_len_multiple=read("required_seq_len_multiple", int, cls.required_seq_len_multiple),
        )
        for numerator, denominator in [
            ("encoder_embed_dim", "encoder_attention_heads"),
            ("encoder_embed_dim", "conv_pos_groups"),
        ]:
            if getattr(config, numerator) % getattr(config, denominator):
                raise CheckpointError(
                    f"{source}: {numerator}={getattr(config, numerator)} is not divisible by "
                    f"{denominator}={getattr(config, denominator)}"
                )
        return config

    @property
    def frame_hop(self) -> int:
        """Samples per output frame: the product of the conv strides (640 for the 25 Hz model)."""
        return math.prod(stride for _, _, stride in self.conv_feature_layers)

    def num_frames(self, num_samples: int) -> int:
        """Output frames for a waveform of ``num_samples`` (unpadded convs; 0 if shorter than the receptive field)."""
        length = num_samples
        for _, kernel, stride in self.conv_feature_layers:
            length = max((length - kernel) // stride + 1, 0)
        return length


class ConvFeatureExtractor(nn.Module):
    """Strided conv stack, waveform (B, samples) -> (B, C, frames); GroupNorm(C, C) after the first conv only."""

    def __init__(self, config: HubertConfig):
        super().__init__()
        self.config = config
        self.conv_layers = nn.ModuleList()
        in_channels = 1
        for index, (channels, kernel, stride) in enumerate(config.conv_feature_layers):
            # Keys "0" and "2" mirror fairseq's Sequential(conv, dropout, norm, gelu) so official names load.
            block = {"0": nn.Conv1d(in_channels, channels, kernel, stride=stride, bias=config.conv_bias)}
            if index == 0:
                block["2"] = nn.GroupNorm(channels, channels)
            self.conv_layers.append(nn.ModuleDict(block))
            in_channels = channels

    def forward(self, waveforms: Tensor, lengths: Tensor | None) -> Tensor:
        """(B, samples) with `lengths` (B,) valid samples per row (None: all valid) -> (B, C, frames)."""
        x = waveforms.unsqueeze(1)  # (B, 1, samples)
        for index, block in enumerate(self.conv_layers):
            x = block["0"](x)  # (B, C, frames)
            if index == 0:
                _, kernel, stride = self.config.conv_feature_layers[0]
                frames = None if lengths is None else (lengths - kernel) // stride + 1  # (B,)
                x = masked_group_norm(block["2"], x, frames)
            x = F.gelu(x)
        return x


def masked_group_norm(norm: nn.GroupNorm, x: Tensor, frames: Tensor | None) -> Tensor:
    """GroupNorm with one group per channel over (B, C, T), each row over its first `frames` (B,) frames only.

    Padded frames would shift the statistics of a plain GroupNorm (it normalises over time), so each row is
    normalised over its own valid frames and the rest set to zero (later convs never read past them); from tensor
    ops on the frame counts, so no host sync and no per-row loop. Computed in fp32, as autocast runs group_norm.
    """
    if frames is None:
        return norm(x)
    assert norm.num_groups == norm.num_channels, "one group per channel (fairseq's default extractor)"
    x = x.float()
    valid = (torch.arange(x.size(2), device=x.device) < frames[:, None])[:, None, :]  # (B, 1, T)
    count = frames.clamp(min=1)[:, None, None].to(x.dtype)  # (B, 1, 1)
    mean = (x * valid).sum(dim=2, keepdim=True) / count  # (B, C, 1)
    centred = (x - mean) * valid  # (B, C, T)
    normalised = centred * torch.rsqrt(centred.square().sum(dim=2, keepdim=True) / count + norm.eps)
    return (normalised * norm.weight[:, None] + norm.bias[:, None]) * valid


class SamePad(nn.Module):
    """Drop the extra last frame an even kernel with padding k // 2 produces, keeping the length unchanged."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, : x.size(2) - self.remove]


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        batch, frames, dim = x.shape
        q, k, v = (
            proj(x).view(batch, frames, self.heads, dim // self.heads).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, T, D)
        return self.out_proj(y.transpose(1, 2).reshape(batch, frames, dim))  # (B, T, C)


class EncoderLayer(nn.Module):
    """Post-LN transformer layer (fairseq TransformerSentenceEncoderLayer with layer_norm_first=False)."""

    def __init__(self, config: HubertConfig):
        super().__init__()
        dim = config.encoder_embed_dim
        self.self_attn = SelfAttention(dim, config.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, config.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        x = self.self_attn_layer_norm(x + self.self_attn(x, attn_mask))
        return self.final_layer_norm(x + self.fc2(F.gelu(self.fc1(x))))


class TransformerEncoder(nn.Module):
    def __init__(self, config: HubertConfig):
        super().__init__()
        self.config = config
        dim = config.encoder_embed_dim
        self.pos_conv = nn.Sequential(
            # fairseq's weight_norm(dim=2): weight_g (1, 1, kernel), the norm over all dims but the kernel position
            legacy_weight_norm(
                nn.Conv1d(dim, dim, config.conv_pos, padding=config.conv_pos // 2, groups=config.conv_pos_groups), dim=2
            ),
            SamePad(config.conv_pos),
            nn.GELU(),
        )
        self.layer_norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))

    def forward(self, x: Tensor, padding_mask: Tensor | None, num_layers: int) -> Tensor:
        """(B, T, C) with padding_mask (B, T) True = pad (None: no padding) -> output of layer ``num_layers``
        (B, T, C). Keys are masked whenever a mask is given (a fixed-shape batch always gives one) or the frames are
        padded to the multiple below; the caller knows which from its lengths, so nothing here reads the device."""
        if padding_mask is not None:  # zeros, as an unpadded run's positional conv sees past the end
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        x = self.layer_norm(x)

        # fairseq pads the sequence to a multiple (2) and masks the extra frames as keys; kept for parity.
        frames = x.size(1)
        extra = -frames % self.config.required_seq_len_multiple
        x = F.pad(x, (0, 0, 0, extra))  # (B, T + extra, C)
        attn_mask = None
        if padding_mask is not None or extra:
            if padding_mask is None:
                padding_mask = torch.zeros(x.size(0), frames, dtype=torch.bool, device=x.device)
            padding_mask = F.pad(padding_mask, (0, extra), value=True)
            attn_mask = ~padding_mask[:, None, None, :]  # (B, 1, 1, T) True = attend
        for layer in self.layers[:num_layers]:
            x = layer(x, attn_mask)
        return x[:, :frames]


class HubertModel(nn.Module):
    """fairseq HuBERT for feature extraction; construct from ``HubertConfig``, load the official state dict."""

    def __init__(self, config: HubertConfig):
        super().__init__()
        self.config = config
        conv_dim = config.conv_feature_layers[-1][0]
        self.feature_extractor = ConvFeatureExtractor(config)
        self.layer_norm = nn.LayerNorm(conv_dim)
        # fairseq only has the projection when the widths differ.
        self.post_extract_proj = (
            nn.Linear(conv_dim, config.encoder_embed_dim) if conv_dim != config.encoder_embed_dim else None
        )
        # Training-time mask vector; unused without masking, but part of the checkpoint so it loads strictly.
        self.mask_emb = nn.Parameter(torch.zeros(config.encoder_embed_dim))
        self.encoder = TransformerEncoder(config)

    def extract_features(self, waveforms: Tensor, lengths: list[int] | None = None, output_layer: int = 11) -> Tensor:
        """16 kHz waveforms (B, samples), row r right-padded after ``lengths[r]`` samples (None: no padding) ->
        output of transformer layer ``output_layer`` (1-based, after its post-LN) (B, frames, C).

        Row r's first ``valid_frames(lengths, samples)[r]`` frames are exactly the frames an unpadded run of that
        row produces. The checks read only ``lengths``, on the host.
        """
        if waveforms.dim() != 2:
            raise ValueError(f"waveforms must be (batch, samples), got shape {tuple(waveforms.shape)}")
        if not 1 <= output_layer <= self.config.encoder_layers:
            raise ValueError(f"output_layer must be in 1..{self.config.encoder_layers}, got {output_layer}")
        batch, samples = waveforms.shape
        if lengths is not None and len(lengths) != batch:
            raise ValueError(f"{len(lengths)} lengths for {batch} waveforms")
        self.valid_frames(lengths or [samples] * batch, samples)
        padded = lengths is not None and min(lengths) < samples
        length_tensor = to_device(torch.tensor(lengths), waveforms.device) if padded else None
        return self(waveforms, length_tensor, output_layer)

    def valid_frames(self, lengths: list[int], samples: int) -> list[int]:
        """Output frames of each row of `samples` padded samples with `lengths` valid ones; ValueError when a length
        is out of range or gives no frame."""
        if any(not 0 < length <= samples for length in lengths):
            raise ValueError(f"lengths must be in 1..{samples} (the padded length), got {lengths}")
        frames = [self.config.num_frames(length) for length in lengths]
        if min(frames, default=1) < 1:
            raise ValueError(f"waveform too short for one frame: valid lengths {lengths}")
        return frames

    def forward(self, waveforms: Tensor, lengths: Tensor | None, output_layer: int) -> Tensor:
        """``extract_features`` with unchecked ``lengths`` (B,) on the waveforms' device (None: no padding): tensor
        ops only, no host sync, so a batch of fixed shape can be captured as a CUDA graph."""
        features = self.feature_extractor(waveforms, lengths)  # (B, C, frames)
        features = self.layer_norm(features.transpose(1, 2))  # (B, frames, C)
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)  # (B, frames, encoder_embed_dim)
        frame_padding_mask = None
        if lengths is not None:
            frame_lengths = lengths
            for _, kernel, stride in self.config.conv_feature_layers:
                frame_lengths = torch.clamp((frame_lengths - kernel) // stride + 1, min=0)
            frame_positions = torch.arange(features.size(1), device=features.device)
            frame_padding_mask = frame_positions >= frame_lengths[:, None]  # (B, frames) True = pad
        return self.encoder(features, frame_padding_mask, output_layer)
