"""Batched vocoding that equals vocoding each sequence alone.

Padding sequences of different lengths into one batch would change the last samples of the shorter ones
(HiFi-GAN's convolutions would read the padding). Instead every sequence's generator input is cut into
windows of `window_frames` frames, each widened by the generator's receptive field on both sides (clipped
at the sequence's real ends, where the offline decode sees the same zero padding). A window's centre is
then exactly what the whole-sequence decode produces there, and the windows of every request share
generator forwards (`windows.generate_windows`).
"""

import numpy as np
import torch

from spiritserve.vocoder.graphs import FixedShapeGenerator
from spiritserve.vocoder.hifigan import CodeHiFiGAN
from spiritserve.vocoder.windows import GeneratorWindow, generate_windows, receptive_field_frames

DEFAULT_WINDOW_FRAMES = 100  # 4 s of audio per window; the context on both sides is extra compute


@torch.inference_mode()
def generate_sequences(
    model: CodeHiFiGAN,
    sequences: list[torch.Tensor | None],
    window_frames: int = DEFAULT_WINDOW_FRAMES,
    fixed: FixedShapeGenerator | None = None,
) -> list[np.ndarray]:
    """The audio of each generator input, (model_in_dim, frames) or None for no units, equal to generating
    each alone; the windows of all of them share generator forwards."""
    left, right = receptive_field_frames(model.config)
    hop = model.config.code_hop_size
    windows: list[GeneratorWindow] = []
    owners: list[int] = []  # the sequence of each window; a sequence's windows are in order
    for index, features in enumerate(sequences):
        if features is None:
            continue
        frames = features.shape[1]
        for centre in range(0, frames, window_frames):
            start, stop = max(0, centre - left), min(frames, centre + window_frames + right)
            keep_to = min(centre + window_frames, frames)
            windows.append(GeneratorWindow(features[:, start:stop], (centre - start) * hop, (keep_to - start) * hop))
            owners.append(index)

    pieces: list[list[np.ndarray]] = [[] for _ in sequences]
    for owner, audio in zip(owners, generate_windows(model, windows, fixed), strict=True):
        pieces[owner].append(audio)
    return [np.concatenate(kept) if kept else np.zeros(0, dtype=np.float32) for kept in pieces]
