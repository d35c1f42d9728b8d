"""Style tokenizer: 16 kHz mono audio -> Spirit LM's expressive style tokens, one per second.

wav2vec2 last hidden state (50 Hz) -> ``projector`` -> mean over 1 s windows of 50 frames (a last partial
window is kept) -> ``classifier`` -> argmax, run per 100 s chunk as the reference does. The official
folder (``speech_tokenizer/style_encoder_w2v2``) is a Hugging Face ``Wav2Vec2ForSequenceClassification``
folder; the backbone is transformers' own ``Wav2Vec2Model`` and the head keeps that class's parameter
names, so the official state dict loads strictly.
"""

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers.models.wav2vec2.configuration_wav2vec2 import Wav2Vec2Config
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2Model

from spiritserve.errors import CheckpointError
from spiritserve.tokenizers.chunking import MAX_CHUNK_SAMPLES, ChunkedEncoder, same_length_batches
from spiritserve.weights import fold_weight_norm, load_state_dict_strict, read_checkpoint

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # in order of preference, as from_pretrained
FRAME_HOP = 320  # samples per wav2vec2 frame: 20 ms, 50 Hz
POOL_FRAMES = 50  # frames per style token: 1 s

# The reference normalises with Wav2Vec2FeatureExtractor.from_pretrained("facebook/wav2vec2-base"), which
# needs the hub. Its settings are vendored here: 16 kHz, feature_size 1, padding_value 0.0,
# return_attention_mask false, do_normalize true. Only do_normalize changes the input (one chunk at a time
# is never padded); this is its per-utterance formula, epsilon included.
NORMALIZE_EPSILON = 1e-7

# transformers before ~4.36 saved the pos_conv weight norm under torch's old ``weight_norm`` names; the
# backbone here (and transformers since) uses the parametrization names. Same tensors, same shapes.
POS_CONV_PREFIX = "wav2vec2.encoder.pos_conv_embed.conv."
LEGACY_WEIGHT_NORM_NAMES = {
    "weight_g": "parametrizations.weight.original0",
    "weight_v": "parametrizations.weight.original1",
}


@dataclass(frozen=True)
class StyleConfig:
    """The checkpoint's ``config.json`` as transformers reads it, plus the head sizes we rely on.

    Unknown keys are not rejected here: HF configs carry many training-only and version-specific keys,
    and ``Wav2Vec2Config`` defines which ones shape the backbone. The settings that would change what
    this module computes (frame rate, weighted layer sum, adapter) are checked instead.
    """

    backbone: Wav2Vec2Config
    num_labels: int
    classifier_proj_size: int

    @classmethod
    def from_dict(cls, config: dict[str, Any], source: Path) -> "StyleConfig":
        if not isinstance(config, dict):
            raise CheckpointError(f"{source}: expected a JSON object, found {type(config).__name__}")
        if config.get("model_type") != "wav2vec2":
            raise CheckpointError(f"{source}: model_type must be 'wav2vec2', found {config.get('model_type')!r}")
        try:
            backbone = Wav2Vec2Config.from_dict(config)
        except (StrictDataclassError, TypeError, ValueError) as exc:  # transformers validates fields on init
            raise CheckpointError(f"{source}: invalid wav2vec2 config: {exc}") from exc
        if backbone.use_weighted_layer_sum:
            # The reference reads the last hidden state; a weighted layer sum is a format we have not seen.
            raise CheckpointError(f"{source}: use_weighted_layer_sum true is not supported (last hidden state only)")
        if backbone.add_adapter:
            raise CheckpointError(f"{source}: add_adapter true is not supported (it changes the frame rate)")
        frame_hop = math.prod(backbone.conv_stride)
        if frame_hop != FRAME_HOP:
            raise CheckpointError(
                f"{source}: conv_stride {list(backbone.conv_stride)} gives a hop of {frame_hop} samples, "
                f"not {FRAME_HOP} (50 Hz frames, pooled {POOL_FRAMES} per second)"
            )
        if backbone.num_labels < 1 or backbone.classifier_proj_size < 1:
            raise CheckpointError(
                f"{source}: num_labels {backbone.num_labels} and classifier_proj_size "
                f"{backbone.classifier_proj_size} must be positive"
            )
        return cls(backbone, backbone.num_labels, backbone.classifier_proj_size)

    @classmethod
    def from_json_file(cls, path: Path) -> "StyleConfig":
        if not path.is_file():
            raise CheckpointError(f"config file not found: {path}")
        try:
            config = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"cannot read config {path}: {exc}") from exc
        return cls.from_dict(config, path)

    def num_frames(self, num_samples: int) -> int:
        """wav2vec2 frames for a waveform of ``num_samples`` (valid convolutions, no padding)."""
        for kernel, stride in zip(self.backbone.conv_kernel, self.backbone.conv_stride, strict=True):
            num_samples = (num_samples - kernel) // stride + 1
        return max(num_samples, 0)


class StyleModel(nn.Module):
    """``Wav2Vec2ForSequenceClassification``'s parameters under its names, with the reference's 1 s pooling."""

    def __init__(self, config: StyleConfig):
        super().__init__()
        self.config = config
        self.wav2vec2 = Wav2Vec2Model(config.backbone)
        self.projector = nn.Linear(config.backbone.hidden_size, config.classifier_proj_size)
        self.classifier = nn.Linear(config.classifier_proj_size, config.num_labels)

    def forward(self, waveforms: Tensor) -> Tensor:
        """Normalised 16 kHz waveforms (B, samples), unpadded -> logits (B, ceil(frames / 50), num_labels)."""
        hidden = self.wav2vec2(waveforms).last_hidden_state  # (B, frames, hidden), 50 Hz
        projected = self.projector(hidden)  # (B, frames, proj)
        windows = projected.split(POOL_FRAMES, dim=1)  # 1 s windows; the last may be shorter
        pooled = torch.stack([window.mean(dim=1) for window in windows], dim=1)  # (B, windows, proj)
        return self.classifier(pooled)


def rename_legacy_weight_norm(state_dict: dict[str, Tensor], source: Path) -> dict[str, Tensor]:
    """Load hook: map pos_conv ``weight_g``/``weight_v`` (transformers 4.x before the parametrization) to
    ``parametrizations.weight.original0``/``original1``; every other key is left to the strict load."""
    renamed = dict(state_dict)
    for old, new in LEGACY_WEIGHT_NORM_NAMES.items():
        old_key, new_key = POS_CONV_PREFIX + old, POS_CONV_PREFIX + new
        if old_key in renamed:
            if new_key in renamed:
                raise CheckpointError(f"{source}: both {old_key} and {new_key} are present")
            renamed[new_key] = renamed.pop(old_key)
    return renamed


def read_weights(style_dir: Path) -> tuple[dict[str, Tensor], Path]:
    """The state dict from ``model.safetensors`` or ``pytorch_model.bin``, and the file it came from."""
    for name in WEIGHT_FILES:
        path = style_dir / name
        if not path.is_file():
            continue
        if path.suffix == ".safetensors":
            try:
                return load_file(path), path
            except Exception as exc:  # safetensors raises its own and OS errors for bad files
                raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
        state_dict = read_checkpoint(path)
        if not isinstance(state_dict, dict):
            raise CheckpointError(f"{path}: expected a state dict, found {type(state_dict).__name__}")
        return state_dict, path
    raise CheckpointError(f"{style_dir}: no weights file, expected one of {list(WEIGHT_FILES)}")


def normalize(waveform: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over one float32 chunk, exactly as ``Wav2Vec2FeatureExtractor`` does it."""
    return (waveform - waveform.mean()) / np.sqrt(waveform.var() + NORMALIZE_EPSILON)


class StyleTokenizer(ChunkedEncoder):
    """wav2vec2 style encoder in fp32 on one device: 1 Hz tokens. ``encode`` is synchronous; call it from a worker
    thread."""

    def __init__(self, model: StyleModel, device: str = "cpu", max_batch_samples: int = MAX_CHUNK_SAMPLES):
        super().__init__(device, max_batch_samples)
        self.model = fold_weight_norm(model).to(device=device, dtype=torch.float32).eval()

    @classmethod
    def from_dir(cls, style_dir: Path, device: str = "cpu") -> "StyleTokenizer":
        """Load ``config.json`` and the weights (``speech_tokenizer/style_encoder_w2v2``) strictly."""
        config = StyleConfig.from_json_file(style_dir / CONFIG_FILE)
        state_dict, weights_path = read_weights(style_dir)
        model = StyleModel(config)
        load_state_dict_strict(model, rename_legacy_weight_norm(state_dict, weights_path), weights_path)
        return cls(model, device=device)

    @property
    def num_styles(self) -> int:
        """Style vocabulary size: the classifier's labels (100 expected for the official model)."""
        return self.model.config.num_labels

    def batches(self, lengths: list[int]) -> Iterator[list[int]]:
        """Only chunks of equal length share a forward: the first conv block's GroupNorm normalises over time, so
        zero padding would change every frame of a shorter chunk (wav2vec2-base style models take no attention
        mask there)."""
        return same_length_batches(lengths, self.max_batch_samples)

    def encode_batch(self, chunks: list[np.ndarray]) -> list[list[int]]:
        """Chunks of one length -> style tokens per chunk, each chunk normalised, in one forward."""
        normalised = np.stack([normalize(chunk) for chunk in chunks])  # (B, samples)
        logits = self.model(torch.from_numpy(normalised).to(self.device))  # (B, windows, num_labels)
        return logits.argmax(dim=-1).tolist()
