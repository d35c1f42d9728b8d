"""`spiritserve chat` against the real server: files in, streamed answers saved as WAV."""

import subprocess
import sys
from pathlib import Path

import soundfile

FIXTURES = Path(__file__).parent.parent / "fixtures"


def test_chat_speaks_two_turns_and_saves_the_answers(server_url: str, tmp_path: Path):
    url = server_url.replace("http://", "ws://") + "/v1/realtime"
    clips = [str(FIXTURES / "espeak_44k_stereo.mp3"), str(FIXTURES / "flite_8k_mono.wav")]
    command = [sys.executable, "-m", "spiritserve", "chat", *clips, "--url", url, "--out", str(tmp_path / "a.wav")]
    result = subprocess.run(
        [*command, "--max-seconds", "1", "--seed", "2"], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr
    for turn in (1, 2):
        info = soundfile.info(tmp_path / f"a-{turn}.wav")
        assert info.samplerate == 24000 and info.channels == 1 and info.frames > 0 and info.frames % 960 == 0
        assert info.frames <= 24000  # at most the 1 s asked
        assert f"turn {turn}: completed, " in result.stdout


def test_chat_text_answers_print_text(server_url: str, tmp_path: Path):
    url = server_url.replace("http://", "ws://") + "/v1/realtime"
    command = [sys.executable, "-m", "spiritserve", "chat", str(FIXTURES / "espeak_16k_mono.flac"), "--url", url]
    out = tmp_path / "answer.wav"
    result = subprocess.run([*command, "--text", "--out", str(out)], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "turn 1: completed" in result.stdout and not out.exists()  # text answers are printed, not saved


def test_chat_live_capture_ends_turns_by_voice_activity(server_url: str, tmp_path: Path):
    """The live path end to end: FFmpeg's device layer (lavfi playing a clip in real time, where a user
    would name an ALSA microphone) → streamed appends → server VAD ends the turn → the answer is saved."""
    url = server_url.replace("http://", "ws://") + "/v1/realtime"
    device = f"amovie={FIXTURES / 'espeak_16k_mono.flac'},arealtime"
    command = [sys.executable, "-m", "spiritserve", "chat", "--microphone", "--capture-format", "lavfi"]
    command += ["--capture-device", device, "--url", url, "--out", str(tmp_path / "live.wav"), "--silence-ms", "300"]
    result = subprocess.run(
        [*command, "--max-seconds", "1", "--seed", "4"], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "turn 1: completed" in result.stdout
    assert soundfile.info(tmp_path / "live-1.wav").frames % 960 == 0  # whole vocoder hops at 24 kHz
