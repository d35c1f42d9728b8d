"""Phonetic tokenizer: 16 kHz mono audio -> Spirit LM's 25 Hz HuBERT units (0..499), not deduplicated.

mHuBERT base 25 Hz layer 11 -> linear quantizer, run per 100 s chunk as the reference does; chunks are
batched with padding, which gives the same units as one chunk at a time.

On a GPU (`use_fixed_shapes`) a batch is padded further, to a fixed shape: rows to a power of two (a padding row is
a full-length zero waveform, dropped after) and samples to one of `SAMPLE_BUCKETS`, and the HuBERT + quantizer
argmax forward of each shape is replayed from a CUDA graph captured at start-up (`spiritserve.cuda_graphs`). Longer
or larger batches run eagerly. Per batch the host waits for the device once, when the argmax comes back; the blank
fill (a loop that depends on the data) then runs on the host.
"""

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spiritserve.audio import SAMPLE_RATE
from spiritserve.cuda_graphs import ROW_BUCKETS, CapturedForward, CaptureReport, next_bucket, rows_per_forward
from spiritserve.errors import CheckpointError
from spiritserve.numerics import Precision
from spiritserve.tokenizers.chunking import MAX_CHUNK_SAMPLES, ChunkedEncoder, padded_batches
from spiritserve.tokenizers.hubert import PRETRAINING_ONLY_KEYS, HubertConfig, HubertModel
from spiritserve.tokenizers.quantizer import LinearQuantizer, QuantizerConfig, fill_blanks
from spiritserve.transfers import host_zeros, to_device, to_host
from spiritserve.weights import fold_weight_norm, load_state_dict_strict, read_checkpoint, require_keys

HUBERT_FILE = "mhubert_base_25hz.pt"
QUANTIZER_FILE = "L11_quantizer_500.pt"
OUTPUT_LAYER = 11  # 1-based transformer layer the quantizer was trained on

# Fixed-shape lengths: 1 s × 2^(k/4) up to 32 s, rounded up to whole frames (21 buckets). On lengths spread evenly on
# a log scale they pad 9 % on average above 2 s and 21 % under 4 s; 1 s steps pad as much above 2 s but 36 % under
# 4 s (realtime turns are short), with 32 buckets. Longer chunks (uploads, up to 100 s) run eagerly.
SAMPLE_BUCKET_RATIO = 2**0.25
MAX_BUCKET_SECONDS = 32
# A graph holds at most this much audio (rows × bucket): past it a forward is compute-bound and a graph saves
# nothing, while the graphs' memory pool keeps the largest bucket's activations (~0.7 GB at official size) for good.
MAX_GRAPH_SAMPLES = 32 * SAMPLE_RATE


def sample_buckets(frame_hop: int) -> tuple[int, ...]:
    """The padded lengths, in samples: 1 s × SAMPLE_BUCKET_RATIO^k up to MAX_BUCKET_SECONDS, in whole frames."""
    count = round(math.log(MAX_BUCKET_SECONDS, SAMPLE_BUCKET_RATIO)) + 1
    return tuple(math.ceil(SAMPLE_RATE * SAMPLE_BUCKET_RATIO**k / frame_hop) * frame_hop for k in range(count))


class FixedShapeEncoder:
    """HuBERT + quantizer argmax at fixed (rows, samples) shapes: CUDA graphs once `capture()` ran on CUDA, else the
    same padded shapes eagerly (so CPU tests run the padding)."""

    def __init__(
        self, forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], frame_hop: int, precision: Precision
    ) -> None:
        """`forward(waveforms (B, samples), lengths (B,)) -> argmax (B, frames)`; `precision`: the graphs'."""
        self.forward = forward
        self.widths = sample_buckets(frame_hop)
        self._graphs: CapturedForward[tuple[int, int]] = CapturedForward("hubert", forward, precision)

    def bucket(self, rows: int, samples: int) -> tuple[int, int] | None:
        """The (rows, samples) shape a batch of `rows` chunks up to `samples` long runs at; None: eagerly as it is."""
        width = next_bucket(samples, self.widths)
        most = None if width is None else rows_per_forward(width, MAX_GRAPH_SAMPLES)
        if width is None or most is None or rows > most:
            return None
        return next_bucket(rows, ROW_BUCKETS) or rows, width

    def padded_size(self, rows: int, samples: int) -> int:
        """Samples a forward of `rows` chunks up to `samples` long takes (`chunking.padded_batches`)."""
        bucket = self.bucket(rows, samples)
        return rows * samples if bucket is None else bucket[0] * bucket[1]

    def __call__(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        replayed = self._graphs.replay((waveforms.shape[0], waveforms.shape[1]), waveforms, lengths)
        return self.forward(waveforms, lengths) if replayed is None else replayed

    def capture(self, device: torch.device) -> CaptureReport:
        """Capture every bucket (CUDA only). All graphs read one input buffer (one replays at a time)."""
        if device.type != "cuda":
            return CaptureReport(0, 0.0, 0)
        shapes = [(rows, width) for width in self.widths for rows in ROW_BUCKETS if rows * width <= MAX_GRAPH_SAMPLES]
        audio = torch.zeros(max(rows * width for rows, width in shapes), device=device)
        lengths = torch.full((ROW_BUCKETS[-1],), self.widths[0], dtype=torch.long, device=device)
        examples = {(rows, width): (audio[: rows * width].view(rows, width), lengths[:rows]) for rows, width in shapes}
        return self._graphs.capture(device, examples)


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
        self.fixed_shapes: FixedShapeEncoder | None = None  # set by use_fixed_shapes()

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

    def use_fixed_shapes(self, precision: Precision = "float32") -> CaptureReport:
        """Pad batches to fixed shapes and, on CUDA, replay them as graphs captured now at `precision`."""
        self.fixed_shapes = FixedShapeEncoder(self._unit_argmax, self.frame_hop, precision)
        return self.fixed_shapes.capture(self._device)

    def batches(self, lengths: list[int]) -> Iterator[list[int]]:
        """Sorted by length and padded (with fixed shapes: counting each batch at its bucket's size)."""
        if self.fixed_shapes is None:
            return super().batches(lengths)
        return padded_batches(lengths, self.max_batch_samples, self.fixed_shapes.padded_size)

    def encode_batch(self, chunks: list[np.ndarray]) -> list[list[int]]:
        """Chunks -> units per chunk, in one padded forward and one copy out."""
        lengths = [len(chunk) for chunk in chunks]
        rows, samples = len(chunks), max(lengths)
        fixed = self.fixed_shapes
        bucket = None if fixed is None else fixed.bucket(rows, samples)
        if bucket is not None:
            rows, samples = bucket
        frames = self.hubert.valid_frames(lengths, samples)
        waveforms = host_zeros((rows, samples), self._device)  # right-padded
        for row, chunk in enumerate(chunks):
            waveform = torch.tensor(chunk)  # copies; the caller's array may be read-only
            if self.normalize:  # zero mean, unit variance over the chunk, before padding
                waveform = F.layer_norm(waveform, waveform.shape)
            waveforms[row, : len(chunk)] = waveform
        waveforms = to_device(waveforms, self._device)
        row_lengths = lengths + [samples] * (rows - len(chunks))  # padding rows: full-length silence
        if fixed is not None and bucket is not None:
            argmax = fixed(waveforms, to_device(torch.tensor(row_lengths), self._device))
        else:
            padded = min(lengths) < samples
            argmax = self._unit_argmax(waveforms, to_device(torch.tensor(lengths), self._device) if padded else None)
        argmax = to_host(argmax)  # (rows, frames)
        blank = self.quantizer.config.vocab_size
        return [fill_blanks(argmax[row, :count], blank).tolist() for row, count in enumerate(frames)]

    def _unit_argmax(self, waveforms: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """(B, samples), valid `lengths` (B,) -> the quantizer's argmax (B, frames), blanks included: no host sync."""
        return self.quantizer.unit_argmax(self.hubert(waveforms, lengths, OUTPUT_LAYER))


def read_quantizer(hubert_dir: Path) -> tuple[QuantizerConfig, dict]:
    """``L11_quantizer_500.pt``'s config and state dict (a small file: the start-up checks read it first)."""
    quantizer_path = hubert_dir / QUANTIZER_FILE
    checkpoint = read_checkpoint(quantizer_path)
    require_keys(checkpoint, ["model_cfg", "model_weight"], quantizer_path)
    config = QuantizerConfig.from_model_cfg(checkpoint["model_cfg"], quantizer_path)
    if not isinstance(checkpoint["model_weight"], dict):
        raise CheckpointError(f"{quantizer_path}: model_weight must be a state dict")
    return config, checkpoint["model_weight"]
