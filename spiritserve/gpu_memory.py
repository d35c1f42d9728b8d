"""One GPU shared by the speech stages (this process) and the in-process vLLM engine (its own processes).

vLLM sizes itself as `gpu_memory_utilization` × the whole GPU (weights, activations, then KV cache for the rest)
and refuses to start when that much is not free; nothing else limits the speech stages, whose peaks (a long
HiFi-GAN window, HuBERT on a long chunk) would then come out of vLLM's KV cache or fail. So the GPU is planned at
start-up, once the speech models are loaded: their measured peak plus headroom becomes this process's cap
(`torch.cuda.set_per_process_memory_fraction`: a forward beyond it raises out-of-memory, which the batcher turns
into a retry and a 503), and vLLM gets the rest, up to the configured fraction. When the language model's weights
do not fit in what is left, start-up stops with the figures instead of vLLM failing minutes later.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from spiritserve.audio import SAMPLE_RATE
from spiritserve.engine.engine import WEIGHT_BYTES
from spiritserve.errors import SpiritServeError
from spiritserve.tokenizers.speech import SpeechTokenizer
from spiritserve.tokens import STREAM_RATES
from spiritserve.vocoder.base import UnitVocoder, VocodeRequest

GIB = 2**30
# The speech stages' measured peak times this: allocator fragmentation, and shapes the warm-up did not reach.
SPEECH_HEADROOM = 1.25
# Outside both budgets: the two processes' CUDA contexts, cuBLAS/cuDNN workspaces, NCCL buffers.
CONTEXT_RESERVE_BYTES = 2 * GIB
# vLLM needs its weights plus at least this share of them for activations and a minimal KV cache.
ENGINE_MINIMUM_OVER_WEIGHTS = 1.1


# The planning workload: one full batch of this much speech through the tokenizer, then through the vocoder (a
# typical turn or answer). A batch of longer items may exceed the cap: it is retried item by item, and an item
# that still does not fit is refused (503) rather than taking memory from vLLM's KV cache.
PLANNING_SECONDS = 10


class InsufficientGpuMemoryError(SpiritServeError):
    """The speech stages and the language model do not fit on this GPU together."""


@dataclass(frozen=True)
class GpuMemoryPlan:
    total_bytes: int
    speech_bytes: int  # this process's cap
    engine_bytes: int  # vLLM's gpu_memory_utilization × total

    @property
    def speech_fraction(self) -> float:
        return self.speech_bytes / self.total_bytes

    @property
    def engine_fraction(self) -> float:
        return self.engine_bytes / self.total_bytes

    def gib(self) -> dict[str, float]:
        shares = {"total": self.total_bytes, "speech": self.speech_bytes, "engine": self.engine_bytes}
        return {name: round(value / GIB, 2) for name, value in shares.items()}

    def describe(self) -> str:
        return (
            f"GPU {self.total_bytes / GIB:.1f} GiB: speech stages {self.speech_bytes / GIB:.1f} GiB "
            f"({self.speech_fraction:.3f}), vLLM {self.engine_bytes / GIB:.1f} GiB ({self.engine_fraction:.3f})"
        )


def plan_gpu_memory(
    total_bytes: int, speech_peak_bytes: int, engine_fraction: float, lm_weight_bytes: int
) -> GpuMemoryPlan:
    """Cap the speech stages at their measured peak with headroom; give vLLM the configured fraction, or what is
    left when that is less. Raises InsufficientGpuMemoryError when vLLM would not fit its weights."""
    speech_bytes = math.ceil(speech_peak_bytes * SPEECH_HEADROOM)
    left_for_engine = total_bytes - speech_bytes - CONTEXT_RESERVE_BYTES
    engine_bytes = min(math.floor(engine_fraction * total_bytes), left_for_engine)
    needed = math.ceil(lm_weight_bytes * ENGINE_MINIMUM_OVER_WEIGHTS)
    if engine_bytes < needed:
        raise InsufficientGpuMemoryError(
            f"the language model needs at least {needed / GIB:.1f} GiB (weights {lm_weight_bytes / GIB:.1f} GiB), "
            f"but this {total_bytes / GIB:.1f} GiB GPU leaves it {max(engine_bytes, 0) / GIB:.1f} GiB beside the "
            f"speech stages' {speech_bytes / GIB:.1f} GiB (measured peak {speech_peak_bytes / GIB:.1f} GiB × "
            f"{SPEECH_HEADROOM}) and {CONTEXT_RESERVE_BYTES / GIB:.0f} GiB for CUDA contexts: use a larger GPU, "
            "run the speech stages elsewhere (SPIRITSERVE_DEVICE=cpu, or a remote engine: docs/scaling.md), or "
            "lower SPIRITSERVE_BATCH_MAX_SIZE"
        )
    return GpuMemoryPlan(total_bytes, speech_bytes, engine_bytes)


def speech_workload(
    speech_tokenizer: SpeechTokenizer, vocoder: UnitVocoder, batch_size: int, seconds: float = PLANNING_SECONDS
) -> Callable[[], None]:
    """A full batch of `seconds` of audio through the speech tokenizer and of units through the vocoder: what the
    speech stages' peak memory is measured on."""
    audio = np.zeros(round(seconds * SAMPLE_RATE), dtype=np.float32)
    units = [0] * round(seconds * STREAM_RATES["Hu"])
    per_unit = units if vocoder.is_expressive else None  # the expressive vocoder takes pitch and style per unit
    request = VocodeRequest(units, predict_durations=False, pitch=per_unit, style_units=per_unit)

    def run() -> None:
        speech_tokenizer.encode([audio] * batch_size)
        vocoder.decode_batch([request] * batch_size)

    return run


def measure_peak_bytes(workload: Callable[[], None]) -> int:
    """The most GPU memory PyTorch held at once while loaded models ran `workload`."""
    torch.cuda.reset_peak_memory_stats()
    workload()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())


def share_gpu(
    workload: Callable[[], None], engine_fraction: float, lm_parameters: int, engine_dtype: str
) -> GpuMemoryPlan:
    """Measure the speech stages on `workload`, plan the GPU, and cap this process at its share."""
    weight_bytes = lm_parameters * WEIGHT_BYTES[engine_dtype]
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    plan = plan_gpu_memory(total, measure_peak_bytes(workload), engine_fraction, weight_bytes)
    torch.cuda.set_per_process_memory_fraction(plan.speech_fraction)
    return plan
