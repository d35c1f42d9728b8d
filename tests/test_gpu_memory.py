"""Sharing one GPU between the speech stages and vLLM: the start-up arithmetic."""

import typing

import pytest
import torch
from pydantic import ValidationError

from spiritserve.checkpoints import open_checkpoint
from spiritserve.engine.engine import WEIGHT_BYTES, EngineDtype
from spiritserve.gpu_memory import (
    CONTEXT_RESERVE_BYTES,
    GIB,
    SPEECH_HEADROOM,
    InsufficientGpuMemoryError,
    measure_peak_bytes,
    plan_gpu_memory,
    speech_workload,
)
from spiritserve.settings import Settings
from spiritserve.tokenizers.speech import SpeechTokenizer
from spiritserve.vocoder.base import UnitVocoder

H200 = 140 * GIB  # what torch reports for an H200 (~139.8 GiB)
LLAMA_2_7B_BF16 = 6_742_609_920 * 2


def test_on_an_h200_vllm_keeps_its_configured_fraction_and_the_speech_stages_get_their_peak_with_headroom():
    plan = plan_gpu_memory(H200, speech_peak_bytes=3 * GIB, engine_fraction=0.85, lm_weight_bytes=LLAMA_2_7B_BF16)
    assert plan.speech_bytes == 3 * GIB * SPEECH_HEADROOM
    assert plan.engine_fraction == pytest.approx(0.85, abs=1e-9)
    assert plan.speech_bytes + plan.engine_bytes + CONTEXT_RESERVE_BYTES <= H200
    assert plan.gib() == {"total": 140.0, "speech": 3.75, "engine": 119.0}  # what /readyz reports


def test_a_configured_fraction_that_would_overlap_the_speech_stages_shrinks_to_what_is_left():
    plan = plan_gpu_memory(H200, speech_peak_bytes=20 * GIB, engine_fraction=0.95, lm_weight_bytes=LLAMA_2_7B_BF16)
    assert plan.engine_bytes == H200 - 25 * GIB - CONTEXT_RESERVE_BYTES
    assert plan.engine_fraction < 0.95


def test_a_gpu_too_small_for_both_stops_start_up_with_the_figures():
    with pytest.raises(InsufficientGpuMemoryError, match=r"needs at least 13\.8 GiB.*16\.0 GiB GPU.*SPIRITSERVE"):
        plan_gpu_memory(16 * GIB, speech_peak_bytes=2 * GIB, engine_fraction=0.9, lm_weight_bytes=LLAMA_2_7B_BF16)


@pytest.mark.parametrize("variant", ["base", "expressive"])
def test_the_planning_workload_runs_a_full_batch_through_both_speech_stages(variant, request):
    """On CPU the workload runs (on CUDA the same call is measured at start-up)."""
    root = request.getfixturevalue("tiny_bundle" if variant == "base" else "tiny_expressive_bundle")
    checkpoint = open_checkpoint(root)
    tokenizer = SpeechTokenizer.from_dirs(checkpoint.hubert_dir, checkpoint.pitch_dir, checkpoint.style_dir, "cpu",
                                          torch.float32)  # fmt: skip
    vocoder = UnitVocoder.from_dir(checkpoint.vocoder_dir, "cpu")
    calls: list[int] = []
    tokenizer.encode = lambda clips, encode=tokenizer.encode: calls.append(len(clips)) or encode(clips)
    vocoder.decode_batch = lambda requests, decode=vocoder.decode_batch: calls.append(len(requests)) or decode(requests)
    speech_workload(tokenizer, vocoder, batch_size=2, seconds=1.0)()
    assert calls == [2, 2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_measured_peak_covers_what_the_workload_allocated():
    assert measure_peak_bytes(lambda: torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")) >= 64 * 2**20


def test_the_language_models_parameter_count_is_read_from_its_config(tiny_bundle):
    model = open_checkpoint(tiny_bundle).language_model
    weights = torch.load(model.path / "pytorch_model.bin", weights_only=True)
    assert model.parameter_count == sum(tensor.numel() for tensor in weights.values())


def test_every_engine_dtype_vllm_takes_has_its_weight_size_and_others_are_refused():
    assert set(typing.get_args(EngineDtype)) == set(WEIGHT_BYTES)
    assert Settings(engine_dtype="float32").engine_settings(on_cpu=True).dtype == "float32"
    with pytest.raises(ValidationError, match="engine_dtype"):
        Settings(engine_dtype="fp8")
