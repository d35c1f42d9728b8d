"""The generator forward at a few fixed shapes, replayed as captured CUDA graphs.

At low batch a HiFi-GAN forward on a GPU is bound by kernel launches (hundreds of small convolutions), which a
CUDA graph replays in one launch. Graphs need fixed shapes, so a batch of windows is padded up to a bucket: rows
to the next power of two (a zero row is an independent batch item, dropped after), and width to the next multiple
of `WIDTH_STEP` frames when every window in the batch may be padded (`GeneratorWindow.can_pad`: nothing it keeps
reads the appended zeros). A batch that fits no bucket (a window kept to a sequence's true end whose width is not
a bucket's, or more frames than a bucket holds) runs eagerly, as before.

`capture()` (at start-up, on CUDA) warms and captures every bucket into one shared memory pool; each replay
overwrites the bucket's output, which the caller copies out before the next forward (the speech worker is one
thread). Without CUDA, or before `capture()`, the padded batches run eagerly: the same padding, testable on CPU.
"""

import logging
import time
from dataclasses import dataclass

import torch

from spiritserve.numerics import Precision, precision_scope
from spiritserve.vocoder.hifigan import CodeHiFiGAN

logger = logging.getLogger(__name__)

ROW_BUCKETS = (1, 2, 4, 8, 16, 32)
WIDTH_STEP = 32  # frames; windows here are 30-260 frames wide (first stream chunks to offline windows)
MAX_BUCKET_WIDTH = 256


@dataclass(frozen=True)
class CaptureReport:
    graphs: int
    seconds: float
    memory_bytes: int


class FixedShapeGenerator:
    def __init__(self, model: CodeHiFiGAN, max_frames: int, precision: Precision = "float32") -> None:
        """`precision`: what the graphs are captured at (the vocoder's); eager forwards run at the caller's."""
        self.model = model
        self.precision = precision
        self.max_frames = max_frames
        self.widths = tuple(range(WIDTH_STEP, MAX_BUCKET_WIDTH + 1, WIDTH_STEP))
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def bucket_width(self, width: int, paddable: bool) -> int | None:
        """The width a batch `width` frames wide runs at: the next bucket if its windows may be padded, else its
        own if that is a bucket; None: no bucket (eager)."""
        if paddable:
            return next((bucket for bucket in self.widths if bucket >= width), None)
        return width if width in self.widths else None

    def rows_per_forward(self, width: int) -> int | None:
        """The most rows one forward of a bucket `width` frames wide takes (None: not even one fits)."""
        return next((rows for rows in reversed(ROW_BUCKETS) if rows * width <= self.max_frames), None)

    @staticmethod
    def bucket_rows(rows: int) -> int:
        return next(bucket for bucket in ROW_BUCKETS if bucket >= rows)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """`model.generate(inputs)`: a captured graph's replay for a bucket's shape, else the eager forward."""
        captured = self._graphs.get((inputs.shape[0], inputs.shape[2]))
        if captured is None:
            return self.model.generate(inputs)
        graph, static_inputs, static_outputs = captured
        static_inputs.copy_(inputs)
        graph.replay()
        return static_outputs

    @torch.inference_mode()
    def capture(self) -> CaptureReport:
        """Capture every bucket that fits (CUDA only); logged with its time and memory."""
        device = self.model.conv_pre.weight.device
        if device.type != "cuda":
            return CaptureReport(0, 0.0, 0)
        started, before = time.perf_counter(), torch.cuda.memory_allocated(device)
        pool = torch.cuda.graph_pool_handle()
        dim = self.model.config.model_in_dim
        warm_stream = torch.cuda.Stream(device)
        for rows in ROW_BUCKETS:
            for width in self.widths:
                if rows * width > self.max_frames:
                    continue
                static_inputs = torch.zeros(rows, dim, width, device=device)
                with precision_scope(self.precision, "cuda"):
                    warm_stream.wait_stream(torch.cuda.current_stream(device))
                    with torch.cuda.stream(warm_stream):  # a first run outside capture: kernel choice, workspaces
                        self.model.generate(static_inputs)
                    torch.cuda.current_stream(device).wait_stream(warm_stream)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool):
                        static_outputs = self.model.generate(static_inputs)
                self._graphs[(rows, width)] = (graph, static_inputs, static_outputs)
        torch.cuda.synchronize(device)
        report = CaptureReport(len(self._graphs), time.perf_counter() - started,
                               torch.cuda.memory_allocated(device) - before)  # fmt: skip
        logger.info("vocoder: %d CUDA graphs captured in %.1f s, %.0f MiB", report.graphs, report.seconds,
                    report.memory_bytes / 2**20)  # fmt: skip
        return report
