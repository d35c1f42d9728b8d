"""`spiritserve bench` (the load generator) against the real server: a point per workload and concurrency, and an
open-loop point; every point measured its latencies, audio and the gateway's CPU per token, and drew its plot."""

import json
import subprocess
import sys
from pathlib import Path

from spiritserve.tools.load import WORKLOADS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = ["--seconds", "3", "--max-new-tokens", "25", "--talk-speed", "4"]  # short points, talkers 4× real time


def _bench(server_url: str, out: Path, *flags: str) -> tuple[str, dict]:
    command = [sys.executable, "-m", "spiritserve", "bench", "--url", server_url, "--out", str(out), *SMALL, *flags]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (out / "bench.png").read_bytes().startswith(PNG_MAGIC)
    return completed.stdout, json.loads((out / "bench.json").read_text())


def _rows(table: str) -> list[tuple[str, str]]:
    """(workload, concurrency or rate) of each row of the printed table."""
    return [tuple(line.split()[:2]) for line in table.splitlines() if line.split()[:1] and line.split()[0] in WORKLOADS]


def _check_measured(point: dict) -> None:
    assert point["requests"] > 0 and point["errors"] == {}, point
    assert point["e2e_s"]["p50"] > 0 and point["audio_s"] > 0 and point["audio_s_per_s"] > 0
    assert point["rtf"]["p50"] > 0
    assert point["tokens"] > 0 and point["tokens_per_s"] > 0
    assert point["gateway_cpu_s"] > 0 and point["cpu_us_per_token"] > 0 and point["cpu_s_per_audio_s"] > 0
    assert sum(point["stage_s"].values()) > 0  # the speech worker's seconds, by stage


def test_bench_closed_loop_points_measure_latency_audio_cpu_per_token_and_the_comparisons(
    server_url: str, tmp_path: Path
):
    workloads = ["continue-stream", "generate", "realtime"]
    comparisons = ["--baseline", "1", "--gateway-cost", "2", "--gateway-rounds", "1"]
    stdout, report = _bench(
        server_url, tmp_path, "--workloads", ",".join(workloads), "--concurrency", "1,2", *comparisons
    )
    assert _rows(stdout) == [(workload, c) for workload in workloads for c in ("1", "2")]
    assert report["schema"] == "spiritserve.bench/1"
    assert report["run"]["server"]["random_weights"] is True and report["run"]["host"]["cpu_count"] > 0
    assert report["run"]["clip"]["path"].endswith("bench_9s_16k_mono.flac")  # the default prompt
    points = report["points"]
    assert [(point["workload"], point["concurrency"]) for point in points] == [
        (workload, c) for workload in workloads for c in (1, 2)
    ]
    for point in points:
        _check_measured(point)
        if point["workload"] in ("continue-stream", "realtime"):  # audio arrives while it is generated
            assert point["ttfa_s"]["p50"] > 0
        if point["workload"] in ("generate", "realtime"):  # answers that say their tokens
            assert point["client_tokens"] > 0 and point["e2e_per_token_s"]["p50"] > 0
    assert all(point["chunk_gap_s"] is not None for point in points if point["workload"] == "continue-stream")
    baseline = report["baseline"]  # the reference's way of serving, on the server's checkpoint
    assert baseline["requests"] == 1 and baseline["generated_tokens"] == 25 and baseline["audio_per_wall_s"] > 0
    assert [(s["workload"], s["x"]) for s in baseline["speedup"]] == [
        (workload, c) for workload in ("continue-stream", "generate") for c in (1, 2)
    ]
    assert all(s["speedup"] > 0 for s in baseline["speedup"])
    assert "reference-style baseline" in stdout
    gateway = report["gateway"]  # server vs direct engine, speech then text output
    assert [cost["output_modality"] for cost in gateway] == ["speech", "text"]
    for cost in gateway:
        assert [r["path"] for r in cost["rounds"]] == ["server", "direct"]
        assert cost["server_tokens_per_s"] > 0 and cost["direct_tokens_per_s"] > 0 and cost["ratio"] > 0
    assert "gateway, speech output at 2" in stdout


def test_bench_open_loop_point_reports_the_achieved_rate(server_url: str, tmp_path: Path):
    stdout, report = _bench(server_url, tmp_path, "--workloads", "continue-stream", "--rate", "2")
    assert _rows(stdout) == [("continue-stream", "2/s")]
    (point,) = report["points"]
    assert point["mode"] == "open" and point["rate"] == 2
    assert point["arrivals"] > 0 and point["achieved_rate"] > 0 and point["dropped"] == 0
    _check_measured(point)
    assert point["ttfa_s"]["p50"] > 0
