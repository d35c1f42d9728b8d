"""`scripts/gpu-check.sh`: its prerequisite check, and the CPU dry run CI can take (the GPU run is owed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu-check.sh"


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300, env=environment)


def test_a_missing_package_is_named_in_one_line_before_anything_runs(tmp_path: Path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    # A finder that hides torchfcpe, as on a GPU machine whose image lacks it.
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torchfcpe':\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n"
    )
    out = tmp_path / "out"
    completed = run_script("--device", "cpu", "--quick", "--out", str(out), env={"PYTHONPATH": str(blocker)})
    assert completed.returncode == 3
    assert completed.stderr.strip().splitlines() == ["gpu-check: missing torchfcpe"]
    assert not out.exists()


def test_the_cpu_dry_run_writes_every_report_and_a_summary(tmp_path: Path):
    out = tmp_path / "out"
    completed = run_script("--device", "cpu", "--quick", "--out", str(out))
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "failed" not in completed.stdout, completed.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["components"]) == {"hubert", "hifigan", "hifigan_stream"}
    assert all(figures["xrt"] > 0 for stage in summary["components"].values() for figures in stage.values())
    for stage in ("hubert", "hifigan"):  # as served, too
        assert set(summary["components"][stage]) == {"float32", "float32-graphs"}
    assert summary["precision"]["precisions"]["tf32"]["vocoder_snr_db"] == float("inf")  # no TF32 on CPU
    assert summary["batching"] is not None and summary["contention"]["slowdown_p50"] > 0
    assert (out / "contention.png").is_file() and (out / "components-float32" / "bench-components.png").is_file()
    assert "x real time" in completed.stdout and "gpu-check: done in" in completed.stdout


def test_bad_arguments_get_a_usage_line():
    completed = run_script("--device", "tpu")
    assert completed.returncode == 2 and "--device must be cuda or cpu" in completed.stderr
