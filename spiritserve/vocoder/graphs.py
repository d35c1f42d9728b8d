"""The generator forward at a few fixed shapes, replayed as captured CUDA graphs.

At low batch a HiFi-GAN forward on a GPU is bound by kernel launches (hundreds of small convolutions), which a
CUDA graph replays in one launch. Graphs need fixed shapes, so a batch of windows is padded up to a bucket: rows
to the next power of two (a zero row is an independent batch item, dropped after), and width to the next multiple
of `WIDTH_STEP` frames when every window in the batch may be padded (`GeneratorWindow.can_pad`: nothing it keeps
reads the appended zeros). A batch that fits no bucket (a window kept to a sequence's true end whose width is not
a bucket's, or more frames than a bucket holds) runs eagerly, as before.

`capture()` (at start-up, on CUDA) captures every bucket (`spiritserve.cuda_graphs`). Without CUDA, or before
`capture()`, the padded batches run eagerly: the same padding, testable on CPU.
"""

import torch

from spiritserve.cuda_graphs import ROW_BUCKETS, CapturedForward, CaptureReport, next_bucket, rows_per_forward
from spiritserve.numerics import Precision
from spiritserve.vocoder.hifigan import CodeHiFiGAN

WIDTH_STEP = 32  # frames; windows here are 30-260 frames wide (first stream chunks to offline windows)
MAX_BUCKET_WIDTH = 256


class FixedShapeGenerator:
    def __init__(self, model: CodeHiFiGAN, max_frames: int, precision: Precision = "float32") -> None:
        """`precision`: what the graphs are captured at (the vocoder's); eager forwards run at the caller's."""
        self.model = model
        self.max_frames = max_frames
        self.widths = tuple(range(WIDTH_STEP, MAX_BUCKET_WIDTH + 1, WIDTH_STEP))
        self._graphs: CapturedForward[tuple[int, int]] = CapturedForward("vocoder", model.generate, precision)

    def bucket_width(self, width: int, paddable: bool) -> int | None:
        """The width a batch `width` frames wide runs at: the next bucket if its windows may be padded, else its
        own if that is a bucket; None: no bucket (eager)."""
        if paddable:
            return next_bucket(width, self.widths)
        return width if width in self.widths else None

    def rows_per_forward(self, width: int) -> int | None:
        """The most rows one forward of a bucket `width` frames wide takes (None: not even one fits)."""
        return rows_per_forward(width, self.max_frames)

    @staticmethod
    def bucket_rows(rows: int) -> int:
        bucket = next_bucket(rows, ROW_BUCKETS)
        assert bucket is not None, f"{rows} rows: more than a row bucket holds"
        return bucket

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """`model.generate(inputs)`: a captured graph's replay for a bucket's shape, else the eager forward."""
        replayed = self._graphs.replay((inputs.shape[0], inputs.shape[2]), inputs)
        return self.model.generate(inputs) if replayed is None else replayed

    def capture(self) -> CaptureReport:
        """Capture every bucket that fits (CUDA only); logged with its time and memory."""
        device = self.model.conv_pre.weight.device
        dim = self.model.config.model_in_dim
        shapes = [(rows, width) for rows in ROW_BUCKETS for width in self.widths if rows * width <= self.max_frames]
        examples = {shape: (torch.zeros(shape[0], dim, shape[1], device=device),) for shape in shapes}
        return self._graphs.capture(device, examples if device.type == "cuda" else {})
