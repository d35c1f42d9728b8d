"""`spiritserve check-batching`: batched stages vs one by one on real clips, as run on a GPU host."""

import json
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).parent.parent / "fixtures"
CLIPS = [str(FIXTURES / name) for name in ("espeak_16k_mono.flac", "flite_48k_stereo.opus", "flite_8k_mono.wav")]


def _check_batching(tiny_bundle: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "spiritserve", "check-batching", *CLIPS, "--checkpoints", str(tiny_bundle)]
    return subprocess.run([*command, "--out", str(out), *extra], capture_output=True, text=True, timeout=300)


def test_batched_units_and_audio_equal_one_by_one(tiny_bundle: Path, tmp_path: Path) -> None:
    completed = _check_batching(tiny_bundle, tmp_path / "batching.json")
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads((tmp_path / "batching.json").read_text())
    assert report["variant"] == "base" and report["device"] in ("cpu", "cuda")
    assert report["unit_agreement_batched_vs_alone"] == {"hubert": 1.0}
    differences = report["vocoder_max_abs_difference"]
    assert set(differences) == {"decode_batch_vs_decode", "concurrent_streams_vs_decode"}
    assert all(0 <= value <= 1e-5 for value in differences.values())


def test_a_difference_beyond_the_tolerance_fails_the_command(tiny_bundle: Path, tmp_path: Path) -> None:
    completed = _check_batching(tiny_bundle, tmp_path / "batching.json", "--audio-tolerance", "-1")
    assert completed.returncode != 0 and "differ" in completed.stderr
    assert (tmp_path / "batching.json").is_file()  # the report is written either way
