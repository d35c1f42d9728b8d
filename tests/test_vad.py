"""Server VAD on real speech: Silero marks a spoken turn and ignores noise as loud as speech (which trips the energy
gate it replaces); 8 and 24 kHz input; `threshold` as a speech probability; sessions keep their own state; loading
leaves torch's thread count alone; without Silero the energy gate serves and the log says so."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from spiritserve.resample import resample
from spiritserve.vad import EnergyVad, SileroVad, load_vad

FIXTURES = Path(__file__).parent / "fixtures"
RECORDED = FIXTURES / "cmu_goforward_16k_mono.flac"  # a recorded voice in a room (see its .LICENSE)
ROOT = Path(__file__).parent.parent
WINDOW_MS = 32  # Silero decides once per window and reports window edges
# Silero's probability rises within ~2 windows of the onset and falls within ~3 windows of the end (its LSTM, then
# the hysteresis band down to threshold − 0.15); "speech" by level (-40 dBFS) also counts a breath at the end.
START_TOLERANCE_MS = (-WINDOW_MS, 3 * WINDOW_MS)
STOP_TOLERANCE_MS = (-100, 5 * WINDOW_MS)


@pytest.fixture(scope="module")
def make_vad():
    return load_vad()


def clip(path: Path, rate: int) -> np.ndarray:
    """The clip at `rate`, between 0.5 s of silence before and 1.5 s after."""
    audio, source_rate = soundfile.read(path, dtype="float32")
    silence = np.zeros(rate // 2, dtype=np.float32)
    return np.concatenate([silence, resample(audio, source_rate, rate), silence, silence, silence])


def speech_bounds_ms(audio: np.ndarray, rate: int) -> tuple[float, float]:
    """Where the speech starts and ends by level: the first and last 10 ms frame above -40 dBFS."""
    hop = rate // 100
    frames = audio[: len(audio) // hop * hop].reshape(-1, hop)
    loud = np.flatnonzero(np.sqrt(np.mean(frames**2, axis=1)) > 10 ** (-40 / 20))
    return loud[0] * 10, (loud[-1] + 1) * 10


def white_noise_like(speech: np.ndarray, seconds: float, rate: int) -> np.ndarray:
    """White noise as loud (RMS) as the speech's loud part."""
    start, end = (int(ms * rate / 1000) for ms in speech_bounds_ms(speech, rate))
    rms = np.sqrt(np.mean(speech[start:end] ** 2))
    return (np.random.default_rng(0).standard_normal(int(seconds * rate)) * rms).astype(np.float32)


def in_ms(events: list, rate: int) -> list[tuple[str, float]]:
    return [(change, position * 1000 / rate) for change, position in events]


@pytest.mark.parametrize(
    ("path", "rate", "silence_ms"),
    [
        (RECORDED, 24000, 300),  # audio/pcm: resampled to 16 kHz for Silero
        (RECORDED, 8000, 500),  # G.711: Silero's 8 kHz network
        (FIXTURES / "flite_8k_mono.wav", 8000, 300),
        (FIXTURES / "espeak_16k_mono.flac", 24000, 500),
    ],
)
def test_silero_marks_one_turn_at_the_speech(make_vad, path, rate, silence_ms):
    audio = clip(path, rate)
    vad = make_vad(0.5, silence_ms, rate)
    assert isinstance(vad, SileroVad)  # Silero loaded, not the fallback
    events = in_ms(vad.push(audio), rate)  # positions in the input's own rate
    assert [change for change, _ in events] == ["speech_started", "speech_stopped"]
    start_ms, end_ms = speech_bounds_ms(audio, rate)
    assert START_TOLERANCE_MS[0] <= events[0][1] - start_ms <= START_TOLERANCE_MS[1]
    assert STOP_TOLERANCE_MS[0] <= events[1][1] - (end_ms + silence_ms) <= STOP_TOLERANCE_MS[1]


def test_noise_as_loud_as_speech_starts_no_turn_but_trips_the_energy_gate(make_vad):
    noise = white_noise_like(clip(RECORDED, 16000), 3, 16000)
    assert make_vad(0.5, 500, 16000).push(noise) == []
    assert EnergyVad(0.5, 500, 16000).push(noise)[0] == ("speech_started", 0)  # what Silero replaces


def test_threshold_is_a_speech_probability(make_vad):
    speech = clip(RECORDED, 16000)
    noise = white_noise_like(speech, 3, 16000)
    # White noise scores a speech probability of a few percent: speech at a threshold of 0.01, not at 0.05.
    assert make_vad(0.01, 500, 16000).push(noise)[0][0] == "speech_started"
    assert make_vad(0.05, 500, 16000).push(noise) == []
    # A low threshold still ends turns (the stop level is threshold − 0.15, but at least 0.01).
    assert [change for change, _ in make_vad(0.1, 500, 16000).push(speech)] == ["speech_started", "speech_stopped"]


def test_streaming_in_any_chunks_gives_the_same_turn(make_vad):
    audio = clip(RECORDED, 24000)
    whole = make_vad(0.5, 300, 24000).push(audio)
    vad, streamed, start = make_vad(0.5, 300, 24000), [], 0
    for size in np.random.default_rng(1).integers(1, 4000, size=len(audio)):
        streamed += vad.push(audio[start : start + size])
        start += size
        if start >= len(audio):
            break
    assert streamed == whole and len(whole) == 2


def test_each_session_keeps_its_own_state_equal_to_sileros_own_streaming(make_vad):
    from silero_vad import load_silero_vad  # imported by load_vad already: no thread change here

    clips = {16000: clip(RECORDED, 16000), 8000: clip(FIXTURES / "flite_8k_mono.wav", 8000)}
    sessions = {rate: make_vad(0.5, 500, rate) for rate in clips}
    interleaved: dict[int, list] = {rate: [] for rate in clips}
    for start in range(0, max(len(audio) for audio in clips.values()), 1000):  # the two sessions take turns
        for rate, audio in clips.items():
            interleaved[rate].append(sessions[rate].probabilities(audio[start : start + 1000]))
    packaged = load_silero_vad()  # the package's stateful model, one stream at a time
    for rate, audio in clips.items():
        window = 512 if rate == 16000 else 256
        packaged.reset_states()
        with torch.no_grad():
            expected = [packaged(torch.from_numpy(audio[i : i + window]), rate).item()
                        for i in range(0, len(audio) - window + 1, window)]  # fmt: skip
        np.testing.assert_allclose(np.concatenate(interleaved[rate]), expected, atol=1e-6)


def run_python(code: str, pythonpath: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter (silero_vad not yet imported), from the repository root."""
    env = {"PYTHONPATH": pythonpath, "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=True)  # fmt: skip


def test_loading_silero_keeps_the_process_thread_count():
    # silero_vad's import calls torch.set_num_threads(1): every speech stage would run on one core.
    result = run_python(
        """
        import torch
        torch.set_num_threads(3)
        from spiritserve.vad import SileroVad, load_vad
        assert isinstance(load_vad()(0.5, 500, 16000), SileroVad)
        print(torch.get_num_threads())
        """,
        str(ROOT),
    )
    assert result.stdout.split() == ["3"]


def test_without_silero_the_energy_gate_serves_and_the_log_says_so(tmp_path):
    broken = tmp_path / "silero_vad"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('silero_vad broken on purpose')\n")
    result = run_python(
        """
        import logging
        import numpy as np
        from spiritserve.vad import load_vad
        logging.basicConfig(level=logging.INFO)
        vad = load_vad()(0.5, 500, 16000)
        noise = (np.random.default_rng(0).standard_normal(16000) * 0.05).astype(np.float32)
        print(type(vad).__name__, vad.push(noise))
        """,
        f"{tmp_path}:{ROOT}",
    )
    assert "WARNING" in result.stderr and "energy detector" in result.stderr and "broken on purpose" in result.stderr
    assert result.stdout.strip() == "EnergyVad [('speech_started', 0)]"  # noise starts a turn, as the log warns
