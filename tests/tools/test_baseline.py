"""The reference-style baseline (issue #15): sequential speech continuation through transformers' `generate`."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from spiritserve.checkpoints import open_checkpoint
from spiritserve.tools.baseline import BaselineResult, run_baseline
from spiritserve.weights import read_sentencepiece

FIXTURES = Path(__file__).parent.parent / "fixtures"
MAX_NEW_TOKENS = 25


def test_to_dict_derives_rates_and_latency_percentiles():
    result = BaselineResult(
        requests=5,
        wall_s=10.0,
        audio_s=20.0,
        generated_tokens=1000,
        latencies_s=[5.0, 1.0, 3.0, 2.0, 4.0],
        stage_s={"tokenize": 1.0, "generate": 7.0, "vocode": 2.0},
    )
    summary = result.to_dict()
    assert summary["audio_per_wall_s"] == 2.0 and summary["tokens_per_s"] == 100.0
    assert summary["latency_s"] == {"p50": 3.0, "p90": 4.6, "p99": 4.96}
    assert summary["stage_s"] == {"tokenize": 1.0, "generate": 7.0, "vocode": 2.0}
    json.dumps(summary)  # printable as JSON


def test_baseline_continues_speech_with_vocodable_units_only(tiny_bundle: Path):
    result = run_baseline(
        tiny_bundle,
        None,
        FIXTURES / "espeak_16k_mono.flac",
        requests=2,
        max_new_tokens=MAX_NEW_TOKENS,
        temperature=0.9,
        top_p=0.95,
        seed=0,
    )
    assert result.requests == 2
    assert result.generated_tokens == 2 * MAX_NEW_TOKENS  # EOS banned: speech runs to its budget
    assert result.audio_s > 0
    assert len(result.latencies_s) == 2 and all(latency > 0 for latency in result.latencies_s)
    assert set(result.stage_s) == {"tokenize", "generate", "vocode"}
    assert all(seconds > 0 for seconds in result.stage_s.values())
    assert result.wall_s >= max(result.latencies_s)

    # Every generated id is a [Hu<n>] piece the vocoder has an embedding row for, read from the files themselves.
    checkpoint = open_checkpoint(tiny_bundle)
    pieces = read_sentencepiece(checkpoint.language_model.tokenizer_path)
    vocoder_rows = json.loads((checkpoint.vocoder_dir / "config.json").read_text())["num_embeddings"]
    assert len(result.last_generated_ids) == MAX_NEW_TOKENS
    for token_id in result.last_generated_ids:
        assert token_id < pieces.GetPieceSize(), f"id {token_id} is an LM padding row"
        match = re.fullmatch(r"\[Hu(\d+)\]", pieces.IdToPiece(token_id))
        assert match is not None and int(match[1]) < vocoder_rows, f"id {token_id} is not a vocodable unit"

    summary = result.to_dict()
    assert summary["audio_per_wall_s"] == pytest.approx(result.audio_s / result.wall_s, rel=1e-3)


def test_eos_stays_banned_where_the_lm_prefers_it(tiny_bundle: Path, tmp_path: Path):
    """transformers drops EOS from `bad_words_ids` when the generation config has an eos_token_id (it has one
    here, as in the official files): the baseline must ban it otherwise. Made EOS the LM's overwhelming choice:
    one hidden dimension positive for every token, EOS's output row reading only that dimension."""
    root = tmp_path / "eos-loving"
    shutil.copytree(tiny_bundle, root)
    weights_path = open_checkpoint(root).language_model.path / "pytorch_model.bin"
    weights = torch.load(weights_path, weights_only=True)
    weights["model.embed_tokens.weight"][:, 0] = 100.0
    weights["lm_head.weight"][2] = 0.0
    weights["lm_head.weight"][2, 0] = 50.0
    torch.save(weights, weights_path)

    result = run_baseline(root, None, FIXTURES / "espeak_16k_mono.flac", 1, 5, temperature=0.9, top_p=0.95, seed=0)
    assert result.generated_tokens == 5
    assert 2 not in result.last_generated_ids
