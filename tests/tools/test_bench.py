"""`spiritserve bench-components`: a quick real run through the CLI, and its JSON and PNG outputs."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from spiritserve.cli import main
from spiritserve.tools.bench import JSON_NAME, PNG_NAME, SCHEMA, speedup

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
QUICK_RUN_TIMEOUT_S = 180  # about 30 s on 2 idle cores; generous for a loaded machine


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_quick_run_writes_json_and_png(tmp_path: Path) -> None:
    out = tmp_path / "tmp"
    command = [sys.executable, "-m", "spiritserve", "bench-components", "--quick"]
    command += ["--components", "hifigan,hifigan_stream,hubert", "--out", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=QUICK_RUN_TIMEOUT_S)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "x real time" in completed.stdout

    report = json.loads((out / JSON_NAME).read_text())
    assert report["schema"] == SCHEMA
    machine = report["machine"]
    assert machine["torch_version"] and machine["device_name"]
    assert _positive(machine["cpu_count"]) and _positive(machine["torch_threads"])
    assert _positive(machine["peak_gemm_gflops"])
    parameters = report["parameters"]
    assert parameters["batch_sizes"] == [1, 2] and parameters["seconds"] == 0.5 and parameters["repeats"] == 1
    assert parameters["precision"] == "float32" and parameters["device"] in ("cpu", "cuda")

    components = report["components"]
    assert list(components) == ["hifigan", "hifigan_stream", "hubert"]
    assert components["hifigan"]["batched"] is True  # decode_batch, as the server vocodes
    assert components["hifigan_stream"]["entry_point"] == "StreamingDecoder.feed + vocode_streams"
    assert components["hubert"]["batched"] is True
    for entry in components.values():
        assert entry["entry_point"] and _positive(entry["num_parameters"]) and _positive(entry["gflop_per_item"])
        assert entry["speedup_vs_sequential"] is None  # no batch 16 in a quick run
        assert [result["batch_size"] for result in entry["results"]] == [1, 2]
        for result in entry["results"]:
            assert "error" not in result
            for key in ("latency_s", "latency_s_min", "xrt", "per_item_latency_s", "audio_seconds", "gflops"):
                assert _positive(result[key]), (key, result)
            assert len(result["latency_s_runs"]) == 1
            batch = result["batch_size"]
            assert result["xrt"] == pytest.approx(batch * 0.5 / result["latency_s"])
            assert result["per_item_latency_s"] == pytest.approx(result["latency_s"] / batch)
            assert result["gflops"] == pytest.approx(entry["gflop_per_item"] * batch / result["latency_s"])
    # Official sizes: mHuBERT base + quantizer (~96M), the 25 Hz base HiFi-GAN (~14M).
    assert 90e6 < components["hubert"]["num_parameters"] < 100e6
    assert 10e6 < components["hifigan"]["num_parameters"] < 20e6
    # mHuBERT's 12 x 768 transformer at 25 Hz plus its conv stack: ~9 GFLOP per second of audio
    assert 3 < components["hubert"]["gflop_per_item"] / 0.5 < 20

    png = (out / PNG_NAME).read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 1000


def test_speedup_is_xrt_at_16_over_xrt_at_1() -> None:
    results = [{"batch_size": 1, "xrt": 2.0}, {"batch_size": 4, "xrt": 5.0}, {"batch_size": 16, "xrt": 9.0}]
    assert speedup(results) == pytest.approx(4.5)
    assert speedup(results[:2]) is None
    assert speedup([{"batch_size": 1, "error": "OOM"}, {"batch_size": 16, "xrt": 9.0}]) is None


def test_unknown_component_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench-components", "--components", "hubert,nope"])
    assert exit_info.value.code == 2
    assert "unknown components" in capsys.readouterr().err


def test_cli_import_loads_no_heavy_module() -> None:
    code = "import sys, spiritserve.cli; print(sorted({'torch', 'numpy', 'matplotlib'} & set(sys.modules)))"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert completed.stdout.strip() == "[]"
