"""Batched vocoding that equals vocoding each sequence alone.

Padding sequences of different lengths into one batch would change the last samples of the shorter ones
(HiFi-GAN's convolutions would read the padding). Instead every sequence's generator input is cut into
windows of `window_frames` frames, each widened by the generator's receptive field on both sides (clipped
at the sequence's real ends, where the offline decode sees the same zero padding). A window's centre is
then exactly what the whole-sequence decode produces there, and the windows of every request share
generator forwards (`windows.generate_windows`).
"""

from dataclasses import dataclass

import numpy as np
import torch

from spiritserve.vocoder.base import UnitVocoder, VocoderOutput
from spiritserve.vocoder.windows import GeneratorWindow, generate_windows, receptive_field_frames

DEFAULT_WINDOW_FRAMES = 100  # 4 s of audio per window; the context on both sides is extra compute


@dataclass(frozen=True)
class VocodeRequest:
    """The arguments of `UnitVocoder.decode` for one sequence."""

    units: list[int]
    speaker: int
    style: int | None = None
    predict_durations: bool = True
    pitch: list[int] | None = None
    style_units: list[int] | None = None
    durations: list[int] | None = None


@torch.inference_mode()
def decode_batch(
    vocoder: UnitVocoder, requests: list[VocodeRequest], window_frames: int = DEFAULT_WINDOW_FRAMES
) -> list[VocoderOutput]:
    """`vocoder.decode` for every request, sharing generator forwards; raises what a request's own decode
    would raise (the micro-batcher then retries requests one by one)."""
    left, right = receptive_field_frames(vocoder.model.config)
    hop = vocoder.hop
    prepared = [
        vocoder.frame_features(r.units, r.speaker, r.style, r.predict_durations, r.pitch, r.style_units, r.durations)
        for r in requests
    ]
    windows: list[GeneratorWindow] = []
    owners: list[int] = []  # the request of each window; a request's windows are in order
    for index, (features, _) in enumerate(prepared):
        frames = 0 if features is None else features.shape[1]
        for centre in range(0, frames, window_frames):
            start, stop = max(0, centre - left), min(frames, centre + window_frames + right)
            keep_to = min(centre + window_frames, frames)
            windows.append(GeneratorWindow(features[:, start:stop], (centre - start) * hop, (keep_to - start) * hop))
            owners.append(index)

    pieces: list[list[np.ndarray]] = [[] for _ in requests]
    for owner, audio in zip(owners, generate_windows(vocoder.model, windows), strict=True):
        pieces[owner].append(audio)
    return [
        VocoderOutput(audio=np.concatenate(kept) if kept else np.zeros(0, dtype=np.float32), durations=durations)
        for kept, (_, durations) in zip(pieces, prepared, strict=True)
    ]
