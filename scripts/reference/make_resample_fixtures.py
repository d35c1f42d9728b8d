"""Write tests/fixtures/resample/: inputs at many rates and what torchaudio's resampler makes of them.

RUNS ONLY in the throwaway reference venv (torch and torchaudio 2.9.1, numpy, soundfile), never in the project's
.venv (whose torch 2.13 the registry's torchaudio does not load beside). From the repository root:

    /work/refvenv/bin/python scripts/reference/make_resample_fixtures.py

The expected outputs are `torchaudio.functional.resample(waveform, rate, 16000)` at its defaults, per channel,
then averaged over channels: what the reference (facebookresearch/spiritlm) does to its input audio. The 44101 Hz
case (gcd 1 with 16 kHz) makes torchaudio build a 16000 × 44135 kernel: about 12 GB of memory and 30 s of CPU.

Writes:
- resample.npz: for each signal and rate, `<signal>_<rate>_input` ((channels, samples) int16: the float input
  is value / 32768, as soundfile reads 16-bit audio) and `<signal>_<rate>_expected` (float32, 16 kHz, channels
  averaged); signals: speech, chirp (log sweep to Nyquist), noise (seeded), square (full scale, 1 kHz), and stereo
  (two speakers) at 22.05, 44.1 and 48 kHz. `lengths`: rows (rate, input length, torchaudio's output length),
  mostly inputs where the float32 rounding in torchaudio's length rule drops a sample.
- espeak_22k_mono_16k.wav, espeak_44k_stereo_16k.wav: tests/fixtures/espeak_22k_mono.wav and
  espeak_44k_stereo.flac resampled the same way, as float WAVs (the expected input of the 16 kHz upload).
"""

import time
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
OUT = FIXTURES / "resample"
TARGET_RATE = 16_000
RATES = [8000, 11025, 22050, 24000, 32000, 44100, 44101, 48000, 96000]
SECONDS = 0.25
# At 44101 Hz this length also hits the float32 rounding of torchaudio's output length (it keeps one sample less
# than ceil(16000 · 11571 / 44101)).
LENGTHS = {44101: 11571}
STEREO_RATES = {22050, 44100, 48000}  # the stereo signal only at these rates, to keep the fixture small
# Lengths of longer inputs (resampled as zeros) where that rounding drops a sample, and one where it does not.
LENGTH_CASES = [(44100, 180697), (22050, 90569), (11025, 45505), (48000, 48000)]


def reference_resample(waveform: np.ndarray, rate: int) -> np.ndarray:
    """(channels, samples) float32 → (channels, samples at 16 kHz), torchaudio at its defaults."""
    return torchaudio.functional.resample(torch.from_numpy(waveform), rate, TARGET_RATE).numpy()


def to_int16(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.round(audio * 32768), -32768, 32767).astype(np.int16)


def speech_at(source: np.ndarray, source_rate: int, rate: int, length: int) -> np.ndarray:
    """A speech excerpt brought to `rate` (any good resampler would do: this is an input, committed as it is).
    For 44101 Hz the 44.1 kHz samples serve (a 0.002 % pitch change), sparing a second gcd-1 kernel."""
    via = 44100 if rate == 44101 else rate
    if via != source_rate:
        source = torchaudio.functional.resample(torch.from_numpy(source), source_rate, via).numpy()
    return source[:length]


def signals(rate: int, length: int, espeak: np.ndarray, flite: np.ndarray) -> dict[str, np.ndarray]:
    """Inputs at `rate`, each (channels, samples) int16 (read as value / 32768)."""
    n = np.arange(length)
    seconds = n / rate
    low, high = 50.0, rate / 2  # a log sweep up to Nyquist: passband, transition band and stopband
    duration, growth = length / rate, np.log(high / low)
    sweep = np.sin(2 * np.pi * low * duration / growth * np.expm1(seconds / duration * growth))
    speech = speech_at(espeak, 22050, rate, length)
    other = speech_at(flite, 8000, rate, length)
    noise = np.random.default_rng(rate).normal(0.0, 0.3, length)
    inputs = {
        "speech": to_int16(speech)[None],
        "chirp": to_int16(0.5 * sweep)[None],
        "noise": to_int16(noise)[None],
        "square": np.where(np.sin(2 * np.pi * 1000 * seconds) >= 0, 32767, -32767).astype(np.int16)[None],
    }
    if rate in STEREO_RATES:
        inputs["stereo"] = to_int16(np.stack([speech, 0.8 * other]))  # two different speakers
    return inputs


def main() -> None:
    OUT.mkdir(exist_ok=True)
    espeak, espeak_rate = soundfile.read(FIXTURES / "espeak_22k_mono.wav", dtype="float32")
    flite, flite_rate = soundfile.read(FIXTURES / "flite_8k_mono.wav", dtype="float32")
    assert (espeak_rate, flite_rate) == (22050, 8000), (espeak_rate, flite_rate)
    espeak = np.ascontiguousarray(espeak[int(0.6 * espeak_rate) :])  # start inside the speech
    flite = np.ascontiguousarray(flite[int(0.4 * flite_rate) :])

    arrays: dict[str, np.ndarray] = {}
    for rate in RATES:
        length = LENGTHS.get(rate, round(SECONDS * rate))
        inputs = signals(rate, length, espeak, flite)
        # One torchaudio call per rate: every channel of every signal as one batch (the kernel is built once).
        batch = np.concatenate([audio.astype(np.float32) / 32768 for audio in inputs.values()])
        started = time.perf_counter()
        outputs = reference_resample(batch, rate)
        print(f"{rate} Hz: {batch.shape} → {outputs.shape} in {time.perf_counter() - started:.2f} s")
        row = 0
        for name, audio in inputs.items():
            channels = audio.shape[0]
            arrays[f"{name}_{rate}_input"] = audio
            expected = torch.from_numpy(outputs[row : row + channels]).mean(dim=0).numpy()  # then average
            arrays[f"{name}_{rate}_expected"] = expected.astype(np.float32)
            row += channels

    lengths = []
    for rate, length in LENGTH_CASES:
        out_length = reference_resample(np.zeros((1, length), dtype=np.float32), rate).shape[-1]
        lengths.append((rate, length, out_length))
    arrays["lengths"] = np.array(lengths, dtype=np.int64)
    print("lengths (rate, input, output):", lengths)
    np.savez_compressed(OUT / "resample.npz", **arrays)

    for name in ("espeak_22k_mono.wav", "espeak_44k_stereo.flac"):
        audio, rate = soundfile.read(FIXTURES / name, dtype="float32", always_2d=True)  # (samples, channels)
        resampled = torch.from_numpy(reference_resample(np.ascontiguousarray(audio.T), rate)).mean(dim=0)
        target = OUT / f"{name.rsplit('.', 1)[0]}_16k.wav"
        soundfile.write(target, resampled.numpy(), TARGET_RATE, subtype="FLOAT")
        print(f"{name} ({rate} Hz, {audio.shape[1]} channels) → {target.name}")


if __name__ == "__main__":
    main()
