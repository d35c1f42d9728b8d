"""Micro-batching with the real tiny speech tokenizer: batches form, and batching never changes units."""

import asyncio
import gc
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from spiritserve.batching import BatchStats, MicroBatcher
from spiritserve.checkpoints import HUBERT_DIR
from spiritserve.errors import BadAudioError, OutOfAcceleratorMemoryError
from spiritserve.resample import resample
from spiritserve.tokenizers.phonetic import PhoneticTokenizer

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def phonetic(tiny_bundle: Path) -> PhoneticTokenizer:
    return PhoneticTokenizer.from_dir(tiny_bundle / HUBERT_DIR)


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """Real speech of different lengths (each fixture, cut at several points)."""
    waveforms = []
    for path in sorted(FIXTURES.glob("*.wav")) + sorted(FIXTURES.glob("*.flac")):
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)  # (frames, channels)
        audio = resample(audio.T, rate).mean(axis=0)
        waveforms += [audio, audio[: len(audio) // 2], audio[: len(audio) // 3 + 777]]
    return waveforms


def run_concurrently(batcher: MicroBatcher, items: list) -> list:
    async def scenario():
        try:
            return await asyncio.gather(*(batcher.submit(item) for item in items), return_exceptions=True)
        finally:
            await batcher.close()

    return asyncio.run(scenario())


def test_concurrent_requests_share_batches_and_get_their_own_units(phonetic, clips):
    seen: list[BatchStats] = []
    with ThreadPoolExecutor(max_workers=1) as worker:
        batcher = MicroBatcher("speech_tokenizer", phonetic.encode, worker, 4, 0.05, on_batch=seen.append)
        results = run_concurrently(batcher, clips)
    assert results == [phonetic.encode([clip])[0] for clip in clips]  # batched == alone, exactly
    assert max(stats.size for stats in seen) == 4  # capped at max_batch_size
    assert sum(stats.size for stats in seen) == len(clips) and len(seen) < len(clips)
    assert all(stats.run_s > 0 for stats in seen)  # each batch reports how long its stage ran


def test_one_bad_item_fails_only_its_own_request(phonetic, clips):
    bad = np.full(16000, np.nan, dtype=np.float32)
    with ThreadPoolExecutor(max_workers=1) as worker:
        batcher = MicroBatcher("speech_tokenizer", phonetic.encode, worker, 8, 0.05)
        results = run_concurrently(batcher, [clips[0], bad, clips[1]])
    assert isinstance(results[1], BadAudioError)
    assert results[0] == phonetic.encode([clips[0]])[0] and results[2] == phonetic.encode([clips[1]])[0]


def test_a_lone_request_waits_at_most_max_wait(phonetic, clips):
    seen: list[BatchStats] = []
    with ThreadPoolExecutor(max_workers=1) as worker:
        batcher = MicroBatcher("speech_tokenizer", phonetic.encode, worker, 16, 0.02, on_batch=seen.append)
        run_concurrently(batcher, [clips[0]])
    assert [stats.size for stats in seen] == [1]
    assert seen[0].queue_wait_s < 1.0  # the 20 ms window, not a wait for a full batch


def test_out_of_gpu_memory_frees_the_batch_then_serves_items_alone_and_refuses_what_never_fits():
    """torch.OutOfMemoryError is what CUDA raises; here a stand-in stage raises it for any batch of more than one
    item and for the item marked "huge", keeping a tensor alive in the failing frame as a real forward would."""
    failed_forwards: list[weakref.ref] = []

    def stage(items: list[str]) -> list[str]:
        activations = torch.zeros(1024)  # what the failed forward held
        if len(items) > 1 or "huge" in items:
            failed_forwards.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [item.upper() for item in items]

    with ThreadPoolExecutor(max_workers=1) as worker:
        batcher = MicroBatcher("vocoder", stage, worker, max_batch_size=8, max_wait_s=0.05)
        results = run_concurrently(batcher, ["a", "b", "huge", "c"])
    assert results[:2] == ["A", "B"] and results[3] == "C"
    refused = results[2]
    assert isinstance(refused, OutOfAcceleratorMemoryError) and refused.status_code == 503 and refused.retry_after_s
    assert refused.__context__ is None  # nothing chains back to the failed forward's frames
    gc.collect()
    assert failed_forwards and all(ref() is None for ref in failed_forwards), "a failed forward's tensors live on"
