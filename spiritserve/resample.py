"""Resampling as the reference does it: `torchaudio.functional.resample` at its defaults, rewritten.

Why by hand:
- Fidelity. Spirit LM's units come from audio resampled this way; soxr moved 8-18 % of the HuBERT units of
  8-44.1 kHz speech. This gives the same numbers (within 1e-5: tests/test_resample.py).
- No torchaudio here: the registry's build fails to load beside our torch 2.13.
- Bounded memory. torchaudio builds a (new, orig + 2·width) kernel for the gcd-reduced rates: ~700M floats for
  an odd rate such as 44101 Hz → 16 kHz (gcd 1). Each output has only ~2·width taps that are not (numerically)
  zero, so we gather just those, a bounded chunk of outputs at a time.

The filter (torchaudio's documented math), rates divided by their gcd: output n = b·new + j reads the inputs
b·orig − width + k, k in [0, orig + 2·width), zero outside the signal, weighted by
sin(πt)/(πt) · cos²(πt / 2w) · base/orig, t = ((k − width)/orig − j/new)·base clamped to ±w, w = 6,
base = 0.99·min(orig, new); there are ceil(new·length/orig) outputs.
"""

import math

import numpy as np
import torch

LOWPASS_FILTER_WIDTH = 6  # zero crossings of the sinc on each side
ROLLOFF = 0.99  # the cutoff, as a fraction of the lower rate's Nyquist frequency
_CHUNK_ELEMENTS = 1 << 21  # output samples × taps per step: bounds the working memory (~100 MB for stereo)


def resample(waveform: np.ndarray, orig_rate: int, new_rate: int = 16_000) -> np.ndarray:
    """(..., samples) float32 at `orig_rate` → (..., ceil(new_rate·samples/orig_rate)) float32 at `new_rate`,
    each row on its own (resample each channel, then mix). Equal rates return `waveform` itself."""
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} and {new_rate}")
    if orig_rate == new_rate:
        return waveform
    gcd = math.gcd(orig_rate, new_rate)
    polyphase = _Filter(orig_rate // gcd, new_rate // gcd)
    leading, length = waveform.shape[:-1], waveform.shape[-1]
    rows = math.prod(leading)
    signal = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32)).reshape(rows, length)  # (C, L)
    # torchaudio takes this quotient through a float32 tensor before the ceil; so do we (it can drop a sample).
    out_length = math.ceil(np.float32(polyphase.new * length / polyphase.orig))
    output = torch.empty(rows, out_length, dtype=torch.float32)
    if out_length == 0:
        return output.reshape(*leading, 0).numpy()
    # Zeros around the signal (torchaudio's padding), just enough for the first and the last output's taps.
    before = -int(polyphase.first_input(torch.tensor([0])))
    after = max(0, int(polyphase.first_input(torch.tensor([out_length - 1]))) + polyphase.count - length)
    windows = torch.nn.functional.pad(signal, (before, after)).unfold(1, polyphase.count, 1)  # (C, L', taps), a view
    # Every phase's weights at once when that is small (all common rates), else each chunk's own.
    small = polyphase.new * polyphase.count <= _CHUNK_ELEMENTS
    table = polyphase.weights(torch.arange(polyphase.new)) if small else None
    step = max(1, _CHUNK_ELEMENTS // polyphase.count)
    for start in range(0, out_length, step):
        n = torch.arange(start, min(start + step, out_length))
        weights = table[n % polyphase.new] if table is not None else polyphase.weights(n % polyphase.new)
        taps = windows[:, polyphase.first_input(n) + before]  # (C, N, taps)
        output[:, start : start + len(n)] = torch.einsum("cnt,nt->cn", taps, weights)
    return output.reshape(*leading, out_length).numpy()


class _Filter:
    """torchaudio's polyphase filter for the gcd-reduced rates, cut to the taps that matter: output n = b·new + j
    reads `count` inputs from `first_input(n)` on, with weights `weights(j)`."""

    def __init__(self, orig: int, new: int) -> None:
        self.orig, self.new = orig, new
        self.base = min(orig, new) * ROLLOFF
        self.half_span = LOWPASS_FILTER_WIDTH * orig / self.base  # |t| < w within this many inputs of the centre
        self.width = math.ceil(self.half_span)  # torchaudio's padding; its kernel has orig + 2·width taps
        self.count = math.floor(2 * self.half_span) + 4  # the taps with |t| < w, plus one each side against rounding

    def _offset(self, phase: torch.Tensor) -> torch.Tensor:
        """First tap of each phase, relative to input b·orig (t = 0 lies at j·orig/new)."""
        return torch.floor(phase.to(torch.float64) * self.orig / self.new - self.half_span).to(torch.int64) - 1

    def first_input(self, n: torch.Tensor) -> torch.Tensor:
        return n // self.new * self.orig + self._offset(n % self.new)

    def weights(self, phase: torch.Tensor) -> torch.Tensor:
        """(P,) phases → (P, count) float32: torchaudio's kernel entries, its float32 operations in its order."""
        k = self.width + self._offset(phase)[:, None] + torch.arange(self.count)  # torchaudio's kernel index
        t = -phase.to(torch.float32)[:, None] / self.new + (k - self.width).to(torch.float32) / self.orig
        t *= self.base
        t = t.clamp_(-LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
        window = torch.cos(t * math.pi / LOWPASS_FILTER_WIDTH / 2) ** 2
        t *= math.pi
        weights = torch.where(t == 0, torch.tensor(1.0), t.sin() / t)
        weights *= window * (self.base / self.orig)
        weights[(k < 0) | (k >= self.orig + 2 * self.width)] = 0.0  # not taps of torchaudio's kernel
        return weights


class StreamResampler:
    """`resample` over a stream, chunk by chunk, equal to resampling the whole stream at once.

    Each output sample reads the inputs within a few dozen samples of its position, so a chunk's outputs are
    emitted once `MARGIN` inputs beyond them have arrived (`flush` emits the rest, as the whole-signal
    resampling pads the end with zeros). Resampling restarts at a block boundary (a multiple of the reduced
    input rate) with `MARGIN` inputs of history, so every emitted output sees exactly the taps it would offline.
    """

    MARGIN = 64  # input samples: more than the filter's reach (its width is ~7-20 samples at these rates)

    def __init__(self, orig_rate: int, new_rate: int) -> None:
        gcd = math.gcd(orig_rate, new_rate)
        self.orig_rate, self.new_rate = orig_rate, new_rate
        self.orig, self.new = orig_rate // gcd, new_rate // gcd
        self._kept = np.zeros(0, dtype=np.float32)  # inputs from absolute index `_kept_start` on
        self._kept_start = 0
        self._inputs = 0  # inputs seen
        self._emitted = 0  # outputs emitted

    def push(self, samples: np.ndarray) -> np.ndarray:
        self._kept = np.concatenate([self._kept, samples.astype(np.float32)])
        self._inputs += len(samples)
        ready = max(0, (self._inputs - self.MARGIN) // self.orig * self.new)  # whole blocks with margin past them
        return self._emit(ready)

    def flush(self) -> np.ndarray:
        return self._emit(math.ceil(np.float32(self.new * self._inputs / self.orig)))

    def _emit(self, until: int) -> np.ndarray:
        if until <= self._emitted or self.orig_rate == self.new_rate:
            if self.orig_rate == self.new_rate:
                out, self._emitted = self._kept[self._emitted - self._kept_start :], self._inputs
                self._kept, self._kept_start = np.zeros(0, dtype=np.float32), self._inputs
                return out
            return np.zeros(0, dtype=np.float32)
        # Start MARGIN inputs before the first output still owed, on a block boundary (or at the signal's start).
        first_block = max(0, (self._emitted // self.new) - (self.MARGIN // self.orig + 1))
        start = first_block * self.orig
        assert start >= self._kept_start, (start, self._kept_start)
        segment = self._kept[start - self._kept_start :]
        out = resample(segment, self.orig_rate, self.new_rate)
        offset = first_block * self.new
        result = out[self._emitted - offset : until - offset]
        self._emitted = until
        keep_from = max(0, (self._emitted // self.new - (self.MARGIN // self.orig + 1)) * self.orig)
        # A copy: a view would keep the whole last push alive (a session's VAD resampler lives as long as it).
        self._kept, self._kept_start = self._kept[keep_from - self._kept_start :].copy(), keep_from
        return result
