"""Phonetic tokenizer: 16 kHz mono audio -> Spirit LM's 25 Hz HuBERT units (0..499), not deduplicated.

mHuBERT base 25 Hz layer 11 -> linear quantizer, run per 100 s chunk as the reference does; chunks are
batched with padding, which gives the same units as one chunk at a time.
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spiritserve.audio import SAMPLE_RATE
from spiritserve.errors import CheckpointError
from spiritserve.tokenizers.chunking import MAX_CHUNK_SAMPLES, ChunkedEncoder
from spiritserve.tokenizers.hubert import PRETRAINING_ONLY_KEYS, HubertConfig, HubertModel
from spiritserve.tokenizers.quantizer import LinearQuantizer, QuantizerConfig
from spiritserve.weights import fold_weight_norm, load_state_dict_strict, read_checkpoint, require_keys

HUBERT_FILE = "mhubert_base_25hz.pt"
QUANTIZER_FILE = "L11_quantizer_500.pt"
OUTPUT_LAYER = 11  # 1-based transformer layer the quantizer was trained on


class PhoneticTokenizer(ChunkedEncoder):
    """HuBERT + quantizer in fp32 on one device: 25 Hz units. ``encode`` is synchronous; call it from a worker
    thread."""

    def __init__(
        self,
        hubert: HubertModel,
        quantizer: LinearQuantizer,
        normalize: bool,
        device: str = "cpu",
        max_batch_samples: int = MAX_CHUNK_SAMPLES,
    ):
        super().__init__(device, max_batch_samples)
        self.hubert = fold_weight_norm(hubert).to(device=device, dtype=torch.float32).eval()
        self.quantizer = quantizer.to(device=device, dtype=torch.float32).eval()
        self.normalize = normalize

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

    def encode_batch(self, chunks: list[np.ndarray]) -> list[list[int]]:
        """Chunks -> units per chunk, in one padded forward."""
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
