"""Batched vocoding that equals vocoding each sequence alone.

Padding sequences of different lengths into one batch would change the last samples of the shorter ones
(HiFi-GAN's convolutions would read the padding). Instead every sequence's generator input is cut into
windows of `window_frames` frames, each widened by the generator's receptive field on both sides (clipped
at the sequence's real ends, where the offline decode sees the same zero padding). A window's centre is
then exactly what the whole-sequence decode produces there, and windows of equal width — every interior
window of every request — go through the generator as one batch.
"""

from dataclasses import dataclass

import numpy as np
import torch

from spiritserve.vocoder.base import UnitVocoder, VocoderOutput
from spiritserve.vocoder.streaming import receptive_field_frames

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


@dataclass(frozen=True)
class _Window:
    request: int
    start: int  # first input frame given to the generator
    stop: int  # one past the last input frame
    keep_from: int  # output frames [keep_from, keep_to) of this window are kept (relative to start)
    keep_to: int


@torch.inference_mode()
def decode_batch(
    vocoder: UnitVocoder, requests: list[VocodeRequest], window_frames: int = DEFAULT_WINDOW_FRAMES
) -> list[VocoderOutput]:
    """`vocoder.decode` for every request, sharing generator forwards; raises what a request's own decode
    would raise (the micro-batcher then retries requests one by one)."""
    left, right = receptive_field_frames(vocoder.model.config)
    hop = vocoder.hop
    prepared = [
        vocoder.frame_features(r.units, r.speaker, r.style, r.predict_durations, r.pitch, r.style_units)
        for r in requests
    ]
    windows_by_width: dict[int, list[_Window]] = {}
    for index, (features, _) in enumerate(prepared):
        frames = 0 if features is None else features.shape[1]
        for centre in range(0, frames, window_frames):
            start, stop = max(0, centre - left), min(frames, centre + window_frames + right)
            window = _Window(index, start, stop, centre - start, min(centre + window_frames, frames) - start)
            windows_by_width.setdefault(stop - start, []).append(window)

    pieces: dict[tuple[int, int], np.ndarray] = {}  # (request, start frame of kept audio) -> samples
    for windows in windows_by_width.values():
        inputs = torch.stack([prepared[w.request][0][:, w.start : w.stop] for w in windows])  # (B, C, width)
        audio = vocoder.model.generate(inputs).float().cpu().numpy()  # (B, width × hop)
        for window, samples in zip(windows, audio, strict=True):
            pieces[(window.request, window.start + window.keep_from)] = samples[
                window.keep_from * hop : window.keep_to * hop
            ]

    outputs = []
    for index, (_, durations) in enumerate(prepared):
        kept = [pieces[key] for key in sorted(key for key in pieces if key[0] == index)]
        audio = np.concatenate(kept) if kept else np.zeros(0, dtype=np.float32)
        outputs.append(VocoderOutput(audio=audio, durations=durations))
    return outputs
