"""`spiritserve check-precision` measures unit agreement between reduced precision and fp32."""

import json
import subprocess
import sys
from pathlib import Path

from spiritserve.tools.precision import unit_agreement

FIXTURES = Path(__file__).parent.parent / "fixtures"


def test_unit_agreement_counts_positions_and_length_differences():
    assert unit_agreement([[1, 2, 3, 4]], [[1, 2, 3, 4]]) == 1.0
    assert unit_agreement([[1, 2, 3, 4]], [[1, 9, 3, 4]]) == 0.75
    assert unit_agreement([[1, 2, 3, 4]], [[1, 2, 3]]) == 0.75  # a missing unit disagrees
    assert unit_agreement([[]], [[]]) == 1.0


def test_check_precision_reports_agreement_per_stream(tiny_bundle: Path, tmp_path: Path):
    out = tmp_path / "precision.json"
    clips = [str(FIXTURES / "espeak_16k_mono.flac"), str(FIXTURES / "flite_48k_stereo.opus")]
    command = [sys.executable, "-m", "spiritserve", "check-precision", *clips, "--checkpoints", str(tiny_bundle)]
    subprocess.run([*command, "--dtype", "bf16", "--out", str(out)], check=True, capture_output=True, timeout=300)
    report = json.loads(out.read_text())
    assert report["variant"] == "base" and report["dtype"] == "bf16"
    assert set(report["agreement"]) == {"hubert"} and 0.0 <= report["agreement"]["hubert"] <= 1.0
    assert report["reduced_precision_allowed"]["hubert"] == (report["agreement"]["hubert"] >= 0.995)
