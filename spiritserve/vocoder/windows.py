"""Generator windows: exact audio for a span of frames from a window with receptive-field context, and many
windows (of one request or of many) sharing generator forwards.

HiFi-GAN is convolutional, so the audio of output frame f depends only on input frames [f − left, f + right]
(``receptive_field_frames``). A window of input frames therefore gives exactly the whole-sequence audio for
every frame whose receptive field it covers, or that reaches the sequence's true ends (where the window's
zero padding is the sequence's own). Both the offline batched vocoder (``batched.decode_batch``) and the
streaming one (``streaming.StreamingDecoder``) cut their work into such windows and hand them to
``generate_windows``.

Sharing forwards. Windows of one width stack into one batch. A narrower window joins a wider one's batch with
zero frames appended, when nothing it keeps reads that far: if its last kept frame plus ``right`` is still
inside the window, the appended frames lie outside every kept sample's receptive field. A window whose kept
audio runs to the sequence's true end (or too close to its own end) is never padded.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from spiritserve.transfers import to_host
from spiritserve.vocoder.hifigan import CodeHiFiGAN, HifiGanConfig

if TYPE_CHECKING:
    from spiritserve.vocoder.graphs import FixedShapeGenerator

# A window is padded to at most this many times its own width; narrower ones get a forward of their own.
MAX_PADDING_RATIO = 1.5
# Input frames (rows × width) one generator forward takes at most, by device type. The official 25 Hz vocoder's
# widest activations hold 10 240 values per input frame (16 channels × 640 samples, or 32 × 320 a stage
# before). On CPU, forwards past a few hundred frames run slower per frame, no longer in cache (docs/measurements.md,
# "Small timings behind code decisions"). A GPU wants wide batches; at 8192 frames such an activation is ~340 MB
# in fp32.
MAX_FORWARD_FRAMES = {"cpu": 320, "cuda": 8192}


def receptive_field_frames(config: HifiGanConfig) -> tuple[int, int]:
    """(left, right): input frames either side of frame f that the generator's output samples of frame f read.

    Output frame f is samples [f·hop, (f+1)·hop); the interval is walked back through conv_post (k7), each
    stage's MRF blocks (ResBlock1: Σ over its 3 pairs of (k−1)/2·d + (k−1)/2, at the stage's output rate) and
    transposed conv (output y reads inputs x with y = x·u − (K−u)/2 + j, 0 ≤ j < K), and conv_pre (k7).
    Exact, not a bound: the frames at ±(left, right) do reach the output (for generic weights). The tiny test
    vocoders reach 6 frames either side; a HiFi-GAN V1-style 25 Hz config (rates 5·4·4·4·2) reaches 20.
    """
    if config.resblock != "1":
        raise ValueError(f"receptive field is only worked out for ResBlock1, not resblock {config.resblock!r}")
    low, high = -3, config.code_hop_size - 1 + 3  # conv_post k7, at the output rate
    reach = max(
        sum((kernel - 1) // 2 * dilation + (kernel - 1) // 2 for dilation in dilations)
        for kernel, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes)
    )  # widest MRF block: 3 × (dilated conv, plain conv)
    for rate, kernel in reversed(list(zip(config.upsample_rates, config.upsample_kernel_sizes))):
        low, high = low - reach, high + reach
        padding = (kernel - rate) // 2
        low = -(-(low + padding - kernel + 1) // rate)  # ceil: first input x with x·u − p + K − 1 ≥ low
        high = (high + padding) // rate  # floor: last input x with x·u − p ≤ high
    low, high = low - 3, high + 3  # conv_pre k7, at the frame rate
    return -low, high


@dataclass(frozen=True)
class GeneratorWindow:
    """Generator input frames (model_in_dim, frames) and the samples of its output to keep, [keep_start,
    keep_stop), counted from the window's first sample."""

    features: torch.Tensor
    keep_start: int
    keep_stop: int

    @property
    def frames(self) -> int:
        return self.features.shape[1]

    def can_pad(self, hop: int, right: int) -> bool:
        """Whether zero frames appended after the window leave every kept sample unchanged."""
        last_kept_frame = (self.keep_stop - 1) // hop
        return last_kept_frame + right < self.frames


def max_forward_frames(model: CodeHiFiGAN) -> int:
    return MAX_FORWARD_FRAMES.get(model.conv_pre.weight.device.type, MAX_FORWARD_FRAMES["cuda"])


@torch.inference_mode()
def generate_windows(
    model: CodeHiFiGAN, windows: list[GeneratorWindow], fixed: "FixedShapeGenerator | None" = None
) -> list[np.ndarray]:
    """The kept audio of every window (float32), equal to generating each window alone. With `fixed`, batches
    are padded to its fixed shapes (rows and, where every window may be padded, width) and run through it."""
    hop = model.config.code_hop_size
    _, right = receptive_field_frames(model.config)
    max_frames = max_forward_frames(model)
    kept: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(windows)
    for group in _share_forwards(windows, hop, right):
        width = windows[group[0]].frames
        bucketed, width_to, rows = None, width, max(1, max_frames // width)
        if fixed is not None:  # a bucket's width, and rows per forward that keep every forward a bucket's shape
            paddable = all(windows[index].can_pad(hop, right) for index in group)
            bucket = fixed.bucket_width(width, paddable)
            bucket_rows = fixed.rows_per_forward(bucket) if bucket is not None else None
            if bucket is not None and bucket_rows is not None:
                bucketed, width_to, rows = fixed, bucket, bucket_rows
        for first in range(0, len(group), rows):
            part = group[first : first + rows]
            inputs = torch.stack([F.pad(windows[i].features, (0, width_to - windows[i].frames)) for i in part])
            if bucketed is None:
                audio = to_host(model.generate(inputs).float()).numpy()  # (len(part), width × hop)
            else:  # zero rows up to the bucket: independent batch items, dropped below
                inputs = F.pad(inputs, (0, 0, 0, 0, 0, bucketed.bucket_rows(len(part)) - len(part)))
                audio = to_host(bucketed(inputs).float()).numpy()
            for row, index in enumerate(part):
                kept[index] = audio[row, windows[index].keep_start : windows[index].keep_stop]
    return kept


def _share_forwards(windows: list[GeneratorWindow], hop: int, right: int) -> list[list[int]]:
    """Group window indices into batches, the widest window of each batch first: equal widths always share,
    a narrower window joins when it may be padded and is at least 1 / MAX_PADDING_RATIO of the width."""
    groups: list[list[int]] = []
    for index in sorted(range(len(windows)), key=lambda i: -windows[i].frames):
        window = windows[index]
        for group in groups:
            width = windows[group[0]].frames
            if window.frames == width or (window.can_pad(hop, right) and window.frames * MAX_PADDING_RATIO >= width):
                group.append(index)
                break
        else:
            groups.append([index])
    return groups
