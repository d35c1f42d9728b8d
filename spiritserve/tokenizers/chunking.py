"""Shared by the three speech encoders: check waveforms, cut them into the reference's 100 s chunks, and
group chunks into padded batches.

The reference encodes each 100 s chunk independently (no overlap) and drops chunks shorter than 80 ms,
so a clip under 80 ms gives no units at all (spiritlm-compat.md §8.1); every stream does the same, which
keeps HuBERT, pitch and style aligned in time.
"""

from collections.abc import Iterator

import numpy as np

from spiritserve.errors import BadAudioError

SAMPLE_RATE = 16_000
MAX_CHUNK_SAMPLES = 1_600_000  # 100 s; longer audio is cut into independent chunks, no overlap
MIN_CHUNK_SAMPLES = 1_280  # 80 ms; shorter chunks (including a short tail) give no units, as in the reference


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
            if len(chunk) >= MIN_CHUNK_SAMPLES:
                chunks.append((index, chunk))
    return chunks


def padded_batches(lengths: list[int], max_batch_samples: int) -> Iterator[list[int]]:
    """Indices grouped for padded forwards: sorted by length (little padding), each batch at most
    `max_batch_samples` padded samples (bounds activation memory); a single long chunk is its own batch."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batch: list[int] = []
    for position, index in enumerate(order):
        batch.append(index)
        is_last = position == len(order) - 1
        if is_last or lengths[order[position + 1]] * (len(batch) + 1) > max_batch_samples:
            yield batch
            batch = []


def join_chunks(chunks: list[tuple[int, np.ndarray]], chunk_units: list[list[int]], count: int) -> list[list[int]]:
    """Concatenate per-chunk units back into one list per waveform."""
    units: list[list[int]] = [[] for _ in range(count)]
    for (index, _), chunk_result in zip(chunks, chunk_units, strict=True):
        units[index].extend(chunk_result)
    return units
