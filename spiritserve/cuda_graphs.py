"""One forward captured as CUDA graphs at a few fixed input shapes (buckets), for HuBERT and the vocoder alike.

At low batch a GPU forward of these models is bound by kernel launches, which a CUDA graph replays in one. A graph
needs fixed shapes, so the stages pad a batch up to a bucket: rows to the next of `ROW_BUCKETS` (a padding row is
an independent batch item, dropped after) and their own length axis to one of their buckets; a batch that fits no
bucket runs eagerly. `CapturedForward.capture` (at start-up, on CUDA) warms and captures every bucket into one
shared memory pool: the speech worker replays one graph at a time and copies its output out before the next, so
the graphs may reuse each other's intermediate memory.
"""

import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from spiritserve.numerics import Precision, precision_scope

logger = logging.getLogger(__name__)

ROW_BUCKETS = (1, 2, 4, 8, 16, 32)
Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True)
class CaptureReport:
    graphs: int
    seconds: float
    memory_bytes: int


def next_bucket(value: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket that holds `value` (buckets ascending); None: larger than all."""
    return next((bucket for bucket in buckets if bucket >= value), None)


def rows_per_forward(size: int, max_total: int) -> int | None:
    """The most rows (a row bucket) of `size` each that one forward of at most `max_total` takes; None: not one."""
    return next((rows for rows in reversed(ROW_BUCKETS) if rows * size <= max_total), None)


class CapturedForward(Generic[Key]):
    """`forward(*inputs) -> Tensor` as one CUDA graph per shape key; eager callers fall back when a key is missing."""

    def __init__(self, name: str, forward: Callable[..., torch.Tensor], precision: Precision) -> None:
        """`name`: for the log; `precision`: what the graphs are captured at (the stage's)."""
        self.name = name
        self.forward = forward
        self.precision = precision
        self._graphs: dict[Key, tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...], torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._graphs)

    def replay(self, key: Key, *inputs: torch.Tensor) -> torch.Tensor | None:
        """The captured forward of `inputs` (shaped as `key`'s), or None when `key` was not captured. The output is
        the graph's own buffer: copy it out before the next replay."""
        captured = self._graphs.get(key)
        if captured is None:
            return None
        graph, static_inputs, static_output = captured
        for static, given in zip(static_inputs, inputs, strict=True):
            static.copy_(given)
        graph.replay()
        return static_output

    @torch.inference_mode()
    def capture(self, device: torch.device, examples: dict[Key, tuple[torch.Tensor, ...]]) -> CaptureReport:
        """Capture one graph per key from its example inputs on `device` (kept as the graph's static inputs, so
        they may share storage); logged with the time and memory taken. Nothing happens off CUDA."""
        if device.type != "cuda":
            return CaptureReport(0, 0.0, 0)
        started, before = time.perf_counter(), torch.cuda.memory_allocated(device)
        pool = torch.cuda.graph_pool_handle()
        warm_stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]  # torch leaves it untyped
        with precision_scope(self.precision, "cuda"):
            for key, static_inputs in examples.items():
                warm_stream.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(warm_stream):  # a first run outside capture: kernel choice, workspaces
                    self.forward(*static_inputs)
                torch.cuda.current_stream(device).wait_stream(warm_stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    static_output = self.forward(*static_inputs)
                self._graphs[key] = (graph, static_inputs, static_output)
        torch.cuda.synchronize(device)
        report = CaptureReport(len(examples), time.perf_counter() - started,
                               torch.cuda.memory_allocated(device) - before)  # fmt: skip
        logger.info("%s: %d CUDA graphs captured in %.1f s, %.0f MiB", self.name, report.graphs, report.seconds,
                    report.memory_bytes / 2**20)  # fmt: skip
        return report
