"""`spiritserve soak` against the real server: every admitted answer whole, no server errors, slots freed after a
storm of clients hanging up mid-answer, and the server process sampled."""

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psutil

CLIP = Path(__file__).parent.parent / "fixtures" / "espeak_16k_mono.flac"


def _pid_listening_on(port: int) -> int:
    return next(
        conn.pid
        for conn in psutil.net_connections("tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid
    )


def test_soak_reports_whole_answers_process_growth_and_freed_slots(server_url: str, tmp_path: Path):
    pid = _pid_listening_on(urlsplit(server_url).port)
    out = tmp_path / "soak.json"
    command = [
        sys.executable, "-m", "spiritserve", "soak", "--url", server_url, "--clip", str(CLIP), "--seconds", "8",
        "--concurrency", "4", "--storm", "3", "--pid", str(pid), "--out", str(out),
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["requests"] > 0 and report["transport_errors"] == 0
    assert set(report["statuses"]) <= {"200", "429", "503"}, report["statuses"]  # no server errors
    assert report["whole_answers"] == report["statuses"]["200"] and report["truncated_answers"] == []
    assert report["refusals_without_retry_after"] == 0
    assert report["storm_slots_freed_after_s"] is not None  # abandoned answers gave their engine slots back
    assert len(report["process"]) >= 2 and report["process"][0]["rss_bytes"] > 0
    assert "engine slots free after" in completed.stdout
