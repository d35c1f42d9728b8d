"""Server VAD: where the user's speech starts and stops in a session's input audio stream.

Silero VAD (a small neural network bundled in the `silero-vad` wheel) gives each 32 ms window a speech
probability, so noise as loud as speech does not start a turn. An energy gate (RMS over 20 ms frames) stands in
only when Silero cannot load; `load_vad` says so in the log. Both report sample positions in the input stream.
"""

import functools
import logging
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from spiritserve.resample import StreamResampler

logger = logging.getLogger(__name__)
MIN_SPEECH_MS = 200  # speech needed before a pause can end the turn
ENERGY_FRAME_MS = 20  # the energy gate's frame
Change = Literal["speech_started", "speech_stopped"]


class _Turn:
    """A turn from per-frame decisions: it starts on a speech frame and stops after `silence_duration_ms` of
    quiet frames, once it is `MIN_SPEECH_MS` + `silence_duration_ms` long. A frame that is neither (None: within
    Silero's hysteresis band) keeps the turn as it is: speaking, or counting the silence that began."""

    def __init__(self, silence_duration_ms: int, frame_ms: int) -> None:
        self.silence_duration_ms, self.frame_ms = silence_duration_ms, frame_ms
        self.speaking = False
        self._turn_ms = self._quiet_ms = 0

    def update(self, speech: bool | None) -> Change | None:
        if not self.speaking:
            if speech:
                self.speaking, self._turn_ms, self._quiet_ms = True, self.frame_ms, 0
                return "speech_started"
            return None
        self._turn_ms += self.frame_ms
        if speech:
            self._quiet_ms = 0
        elif speech is False or self._quiet_ms:
            self._quiet_ms += self.frame_ms
        long_enough = self._turn_ms >= MIN_SPEECH_MS + self.silence_duration_ms
        if self._quiet_ms >= self.silence_duration_ms and long_enough:
            self.speaking = False
            return "speech_stopped"
        return None


class EnergyVad:
    """The fallback: a frame (ENERGY_FRAME_MS) is speech when its RMS exceeds 0.04 × `threshold` (0.5 → 0.02,
    about −34 dBFS). Any sound that loud counts, noise included."""

    def __init__(self, threshold: float, silence_duration_ms: int, sample_rate: int) -> None:
        self.rms_threshold = 0.04 * threshold
        self.frame = sample_rate * ENERGY_FRAME_MS // 1000
        self._turn = _Turn(silence_duration_ms, frame_ms=ENERGY_FRAME_MS)
        self._pending = np.zeros(0, dtype=np.float32)
        self._position = 0  # samples consumed into frames

    def push(self, samples: np.ndarray) -> list[tuple[Change, int]]:
        """float32 samples at the session's rate → the changes they complete, with the sample position (in the
        stream pushed so far) where speech started or where the silence that stopped it ended."""
        self._pending = np.concatenate([self._pending, samples])
        events: list[tuple[Change, int]] = []
        while len(self._pending) >= self.frame:
            frame, self._pending = self._pending[: self.frame], self._pending[self.frame :]
            self._position += self.frame
            change = self._turn.update(float(np.sqrt(np.mean(frame**2))) > self.rms_threshold)
            if change:
                events.append((change, self._position - self.frame if change == "speech_started" else self._position))
        return events


class SileroModel:
    """Silero VAD's TorchScript networks (16 and 8 kHz), loaded once and shared by every session.

    The packaged model keeps one stream's recurrent state inside itself; its wrapper only prepends the previous
    window's last samples (the context) and carries the LSTM state. We call its two networks the same way with
    each session's state passed in and out, so sessions share the ~2 MB of weights and keep a few KB each (LSTM
    state, context, audio short of a window). tests/test_vad.py checks this equals the packaged model's streaming."""

    WINDOW = {16_000: 512, 8_000: 256}  # samples per call, as the model requires

    def __init__(self, packaged: torch.jit.ScriptModule) -> None:
        self.networks = {16_000: packaged._model, 8_000: packaged._model_8k}
        self.context = {rate: network.context_size_samples for rate, network in self.networks.items()}


class SileroVad:
    """Speech starts on a window whose speech probability reaches `threshold` and stops after
    `silence_duration_ms` below `threshold` − 0.15: Silero's hysteresis, with the floor of 0.01 its
    `get_speech_timestamps` has (its `VADIterator` has none, so a threshold ≤ 0.15 would never end a turn).
    8 kHz input goes to the 8 kHz network as it is; other rates are resampled to 16 kHz as they stream."""

    def __init__(self, model: SileroModel, threshold: float, silence_duration_ms: int, sample_rate: int) -> None:
        self.rate = 8_000 if sample_rate == 8_000 else 16_000
        self.sample_rate, self.window = sample_rate, SileroModel.WINDOW[self.rate]
        self.threshold, self.quiet_below = threshold, max(threshold - 0.15, 0.01)
        self._network = model.networks[self.rate]
        self._context = torch.zeros(1, model.context[self.rate])  # (1, context samples)
        self._state = torch.zeros(0)  # the LSTM's (h, c) once the first window has run; empty starts it at zero
        self._resampler = StreamResampler(sample_rate, self.rate)
        self._pending = np.zeros(0, dtype=np.float32)  # resampled audio short of a window
        self._windows = 0
        self._turn = _Turn(silence_duration_ms, frame_ms=self.window * 1000 // self.rate)

    def probabilities(self, samples: np.ndarray) -> np.ndarray:
        """float32 samples at the session's rate → the speech probability of each window they complete."""
        audio = np.concatenate([self._pending, self._resampler.push(samples)])
        count = len(audio) // self.window
        self._pending = audio[count * self.window :].copy()  # not a view that keeps all of `audio`
        probabilities = np.empty(count, dtype=np.float32)
        with torch.inference_mode():
            for index, window in enumerate(torch.from_numpy(audio[: count * self.window]).view(count, self.window)):
                chunk = torch.cat([self._context, window[None]], dim=1)  # (1, context + window)
                probability, self._state = self._network(chunk, self._state)
                self._context = chunk[:, -self._context.shape[1] :].clone()
                probabilities[index] = probability.item()
        return probabilities

    def push(self, samples: np.ndarray) -> list[tuple[Change, int]]:
        """As `EnergyVad.push`; positions are in the session's rate, at window edges."""
        events: list[tuple[Change, int]] = []
        for probability in self.probabilities(samples):
            self._windows += 1
            speech = True if probability >= self.threshold else False if probability < self.quiet_below else None
            change = self._turn.update(speech)
            if change:  # at the start of the window that started speech, or the end of the one that stopped it
                edge = self._windows - 1 if change == "speech_started" else self._windows
                events.append((change, edge * self.window * self.sample_rate // self.rate))
        return events


VadFactory = Callable[[float, int, int], EnergyVad | SileroVad]  # (threshold, silence_duration_ms, sample_rate)


def load_vad() -> VadFactory:
    """The detector sessions get: Silero, loaded and warmed up once here; the energy gate if Silero cannot load."""
    try:
        model = _load_silero()
    except Exception as exc:  # not installed, or a model file torch cannot read: serve anyway, and say so
        logger.warning("Silero VAD did not load (%r); server VAD falls back to the energy detector, an RMS gate "
                       "that noise as loud as speech also trips", exc)  # fmt: skip
        return EnergyVad
    logger.info("server VAD: Silero")
    return functools.partial(SileroVad, model)


def _load_silero() -> SileroModel:
    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad  # its import calls torch.set_num_threads(1), for the whole process
    finally:
        torch.set_num_threads(threads)
    model = SileroModel(load_silero_vad())
    for rate in SileroModel.WINDOW:  # TorchScript optimizes on the first calls (docs/measurements.md): not in a turn
        SileroVad(model, 0.5, 500, rate).push(np.zeros(rate // 4, dtype=np.float32))
    return model
