"""The encode skeleton the three speech encoders share: check waveforms, cut them into the reference's 100 s
chunks, group chunks into batches, encode each batch, join the units per waveform.

The reference encodes each 100 s chunk independently (no overlap) and drops chunks shorter than 80 ms,
so a clip under 80 ms gives no units at all (spiritlm-compat.md §8.1); every stream does the same, which
keeps HuBERT, pitch and style aligned in time.
"""

import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator

import numpy as np
import torch

from spiritserve.audio import MIN_SAMPLES, SAMPLE_RATE
from spiritserve.errors import BadAudioError

MAX_CHUNK_SAMPLES = 100 * SAMPLE_RATE  # 100 s; longer audio is cut into independent chunks, no overlap


def split_into_chunks(waveforms: list[np.ndarray]) -> list[tuple[int, np.ndarray]]:
    """(waveform index, float32 chunk) pairs, in time order per waveform; BadAudioError for unusable input."""
    chunks: list[tuple[int, np.ndarray]] = []
    for index, waveform in enumerate(waveforms):
        if not isinstance(waveform, np.ndarray) or waveform.ndim != 1 or not np.issubdtype(waveform.dtype, np.floating):
            raise BadAudioError(
                f"waveform {index}: expected a 1-D float array (16 kHz mono), got "
                f"{type(waveform).__name__} {getattr(waveform, 'shape', '')}"
            )
        if not np.isfinite(waveform).all():
            raise BadAudioError(f"waveform {index}: contains NaN or infinite samples")
        waveform = waveform.astype(np.float32, copy=False)
        for start in range(0, len(waveform), MAX_CHUNK_SAMPLES):
            chunk = waveform[start : start + MAX_CHUNK_SAMPLES]
            if len(chunk) >= MIN_SAMPLES:  # shorter chunks (a short tail too) give no units, as in the reference
                chunks.append((index, chunk))
    return chunks


def padded_batches(
    lengths: list[int], max_batch_samples: int, padded_size: Callable[[int, int], int] = operator.mul
) -> Iterator[list[int]]:
    """Indices grouped for padded forwards: sorted by length (little padding), each batch at most
    `max_batch_samples` padded samples (bounds activation memory); a single long chunk is its own batch.
    `padded_size(rows, longest)`: the samples a forward of that batch pads to (by default to its longest chunk)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batch: list[int] = []
    for position, index in enumerate(order):
        batch.append(index)
        is_last = position == len(order) - 1
        if is_last or padded_size(len(batch) + 1, lengths[order[position + 1]]) > max_batch_samples:
            yield batch
            batch = []


def same_length_batches(lengths: list[int], max_batch_samples: int) -> Iterator[list[int]]:
    """Indices grouped so that only chunks of one length share a forward (no padding at all), each batch at most
    `max_batch_samples` samples; a single long chunk is its own batch."""
    by_length: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        by_length.setdefault(length, []).append(index)
    for length, indices in by_length.items():
        batch_size = max(1, max_batch_samples // length)
        for start in range(0, len(indices), batch_size):
            yield indices[start : start + batch_size]


class ChunkedEncoder(ABC):
    """A speech encoder run on the reference's chunks: a subclass says how one batch of chunks becomes units
    (`encode_batch`) and which chunks may share a batch (`batches`); `encode` is the same for all three."""

    def __init__(self, device: str, max_batch_samples: int) -> None:
        self.max_batch_samples = max_batch_samples  # padded samples per forward, bounds activation memory
        self._device = torch.device(device)

    @property
    def device(self) -> torch.device:
        return self._device

    def batches(self, lengths: list[int]) -> Iterator[list[int]]:
        """Chunk indices per forward: by default sorted by length and right-padded (`padded_batches`)."""
        return padded_batches(lengths, self.max_batch_samples)

    @abstractmethod
    def encode_batch(self, chunks: list[np.ndarray]) -> list[list[int]]:
        """Float32 chunks (each 80 ms to 100 s, read-only) -> units per chunk."""

    def encode(self, waveforms: list[np.ndarray]) -> list[list[int]]:
        """16 kHz mono float waveforms -> one list of units per waveform, undeduplicated (empty under 80 ms)."""
        chunks = split_into_chunks(waveforms)
        chunk_units: dict[int, list[int]] = {}
        with torch.inference_mode():
            for batch in self.batches([len(chunk) for _, chunk in chunks]):
                chunk_units.update(zip(batch, self.encode_batch([chunks[i][1] for i in batch]), strict=True))
        units: list[list[int]] = [[] for _ in waveforms]
        for chunk_index, (index, _) in enumerate(chunks):  # in time order per waveform
            units[index].extend(chunk_units[chunk_index])
        return units
