"""`spiritserve check-precision` measures unit agreement between reduced precision and fp32."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spiritserve.numerics import precision_scope
from spiritserve.tools.precision import snr_db, unit_agreement

FIXTURES = Path(__file__).parent.parent / "fixtures"


def test_unit_agreement_counts_positions_and_length_differences():
    assert unit_agreement([[1, 2, 3, 4]], [[1, 2, 3, 4]]) == 1.0
    assert unit_agreement([[1, 2, 3, 4]], [[1, 9, 3, 4]]) == 0.75
    assert unit_agreement([[1, 2, 3, 4]], [[1, 2, 3]]) == 0.75  # a missing unit disagrees
    assert unit_agreement([[]], [[]]) == 1.0


def test_snr_is_infinite_for_identical_audio_and_20_db_for_a_tenth_of_the_amplitude_as_error():
    signal = [np.ones(100, dtype=np.float32)]
    assert snr_db(signal, signal) == float("inf")
    assert snr_db(signal, [signal[0] * 0.9]) == pytest.approx(20.0)


@pytest.mark.parametrize("variant", ["base", "expressive"])
def test_check_precision_reports_each_precision_per_stage_against_exact_fp32(variant, request, tmp_path: Path):
    root = request.getfixturevalue("tiny_bundle" if variant == "base" else "tiny_expressive_bundle")
    out = tmp_path / "precision.json"
    clips = [str(FIXTURES / "espeak_16k_mono.flac"), str(FIXTURES / "flite_48k_stereo.opus")]
    command = [sys.executable, "-m", "spiritserve", "check-precision", *clips, "--checkpoints", str(root)]
    subprocess.run([*command, "--device", "cpu", "--precisions", "tf32,bfloat16", "--out", str(out)], check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    report = json.loads(out.read_text())
    streams = {"hubert"} if variant == "base" else {"hubert", "pitch", "style"}
    assert report["variant"] == variant and set(report["precisions"]) == {"float32", "tf32", "bfloat16"}
    tf32, bf16 = report["precisions"]["tf32"], report["precisions"]["bfloat16"]
    # No TF32 on CPU: it must compute exactly what fp32 does, units and audio.
    assert tf32["agreement"] == dict.fromkeys(streams, 1.0) and tf32["vocoder_snr_db"] == float("inf")
    assert set(bf16["agreement"]) == streams and all(0.0 <= value <= 1.0 for value in bf16["agreement"].values())
    assert bf16["vocoder_snr_db"] < float("inf")  # bf16 changes the audio, a little
    assert bf16["speech_tokenizer_allowed"] == all(value >= 0.995 for value in bf16["agreement"].values())
    assert bf16["vocoder_allowed"] == (bf16["vocoder_snr_db"] >= 30.0)
    assert all(report["precisions"][name]["tokenize_s"] > 0 for name in ("float32", "tf32", "bfloat16"))


def test_precision_scope_sets_tf32_and_autocast_for_the_block_only():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with precision_scope("tf32", "cpu"):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert not torch.is_autocast_enabled("cpu")
    with precision_scope("float32", "cpu"):  # exact: cuDNN's TF32 default is switched off too
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    with precision_scope("bfloat16", "cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
