"""STSP (`spiritserve eval stsp`): the release's layout, balanced few-shot sampling, the prompts of the four
directions, the classifiers' label mapping, the one-line errors, a run through a recording proxy in front of the
real server, and the whole command against the real server on a tiny bundle with tiny random classifiers
(tests/evaluation/stsp_bundle.py).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile

from spiritserve.audio import decode_audio
from spiritserve.evaluation import stsp
from spiritserve.evaluation.client import EvalClient
from spiritserve.evaluation.tasks import TASKS, EvalOptions
from tests.evaluation.stsp_bundle import (
    make_speech_classifier,
    make_stsp_bundle,
    make_text_classifier,
    make_text_tokenizer,
)

SPIRITSERVE = Path(sys.executable).parent / "spiritserve"
# Small token budgets keep the end-to-end run cheap; the paper's budgets are the defaults (test_request_body...).
BUDGET_FLAGS = ("--max-new-tokens", "8")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """Read-only for tests: copy it before changing anything."""
    root = tmp_path_factory.mktemp("stsp")
    return root, make_stsp_bundle(root)


@pytest.fixture(scope="module")
def classifiers(bundle: tuple[Path, dict[str, int]]) -> stsp.Classifiers:
    loaded = stsp.Classifiers(bundle[0])
    loaded.check(stsp.DIRECTIONS)
    return loaded


def copy_bundle(bundle: tuple[Path, dict[str, int]], tmp_path: Path) -> Path:
    root = tmp_path / "stsp"
    shutil.copytree(bundle[0], root)
    return root


def wav_base64(seconds: float = 0.5, seed: int = 0) -> str:
    noise = np.random.default_rng(seed).standard_normal(int(16_000 * seconds)).astype(np.float32) * 0.1
    buffer = io.BytesIO()
    soundfile.write(buffer, noise, 16_000, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def samples(item: dict[str, Any]) -> int:
    return len(soundfile.read(io.BytesIO(base64.b64decode(item["audio_base64"])))[0])


# ---- data ---------------------------------------------------------------------------------------------------


def test_registered_under_its_name():
    assert TASKS["stsp"].target == "spiritserve.evaluation.stsp:run"


def test_reads_the_release_layout(bundle):
    root, counts = bundle
    text = stsp.subsets_for(root, "t2s", "test")
    assert [subset.name for subset in text] == ["expresso_asr"]
    assert len(text[0].items) == counts["expresso_asr"]
    assert all(item.text and item.audio is None for item in text[0].items)
    speech = stsp.subsets_for(root, "s2t", "test")
    assert [subset.name for subset in speech] == ["expresso_read", "emov"]
    emov = speech[1].items
    assert all(item.audio is not None and item.audio.is_file() for item in emov)
    # EMOV records without `sentiment` are labelled from their emotion: Amused/Angry/Neutral.
    assert [item.sentiment for item in emov] == ["positive", "negative", "neutral"]
    pool = stsp.read_pool(root, "t2s")
    assert all(isinstance(shot.prompt, str) and isinstance(shot.generation, Path) for shot in pool)
    pool = stsp.read_pool(root, "s2t")
    assert all(isinstance(shot.prompt, Path) and isinstance(shot.generation, str) for shot in pool)


@pytest.mark.parametrize(
    "missing",
    ["manifest/emov/emov.test.jsonl", "manifest/expresso/expresso_asr.test.jsonl", "manifest/few_shot/s2s.jsonl"],
)
def test_a_missing_manifest_is_a_one_line_error_naming_it(bundle, tmp_path, missing):
    root = copy_bundle(bundle, tmp_path)
    (root / missing).unlink()
    with pytest.raises(stsp.StspError) as error:
        stsp.subsets_for(root, "s2s", "test")
        stsp.subsets_for(root, "t2t", "test")
        stsp.read_pool(root, "s2s")
    message = str(error.value)
    assert str(root / missing) in message and "\n" not in message


def test_manifest_errors_name_file_and_line(bundle, tmp_path):
    root = copy_bundle(bundle, tmp_path)
    manifest = root / "manifest/expresso/expresso_read.test.jsonl"
    lines = manifest.read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), "wav_path": "data/nowhere.wav"})
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(stsp.StspError, match=rf"{manifest}:2: audio file 'data/nowhere.wav' not found"):
        stsp.subsets_for(root, "s2s", "test")
    lines[1] = json.dumps({"id": 1, "wav_path": "x.wav", "emotion": "bored"})
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(stsp.StspError, match=rf"{manifest}:2: no `sentiment` and no known `emotion`"):
        stsp.subsets_for(root, "s2s", "test")


# ---- few-shot sampling and prompts --------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 3, 6])
def test_shots_are_balanced_per_sentiment_and_seeded(bundle, count):
    pool = stsp.read_pool(bundle[0], "t2t")
    shots = stsp.sample_shots(pool, count, random.Random(5))
    assert len(shots) == count
    assert Counter(shot.sentiment for shot in shots) == Counter(
        {sentiment: math.ceil(count / 3) for sentiment in stsp.SENTIMENTS} if count else {}
    )
    assert len(set(shots)) == len(shots)  # without replacement
    assert stsp.sample_shots(pool, count, random.Random(5)) == shots
    if count:
        draws = {tuple(stsp.sample_shots(pool, count, random.Random(seed))) for seed in range(20)}
        assert len(draws) > 1  # the seed matters (order and choice)


def test_a_pool_too_small_for_the_shots_is_an_error(bundle):
    pool = stsp.read_pool(bundle[0], "t2t")
    with pytest.raises(stsp.StspError, match="has 2 positive examples; 9 shots need 3"):
        stsp.sample_shots(pool, 9, random.Random(0), "t2t.jsonl")


def test_t2t_prompt_is_the_shots_then_the_test_item(bundle):
    root = bundle[0]
    pool = stsp.read_pool(root, "t2t")
    shots = stsp.sample_shots(pool, 3, random.Random(1))
    item = stsp.subsets_for(root, "t2t", "test")[0].items[0]
    inputs = stsp.build_inputs("t2t", shots, item)
    assert inputs == [
        {"type": "text", "text": "".join(f"{shot.prompt} {shot.generation}\n" for shot in shots) + item.text}
    ]


@pytest.mark.parametrize("direction", ["t2s", "s2t", "s2s"])
def test_speech_shots_are_halves_and_the_test_item_ends_the_prompt(bundle, direction):
    root = bundle[0]
    shots = stsp.sample_shots(stsp.read_pool(root, direction), 3, random.Random(2))
    item = stsp.subsets_for(root, direction, "test")[0].items[1]
    inputs = stsp.build_inputs(direction, shots, item)
    source, target = direction[0], direction[2]
    # Consecutive texts are one item: a shot's trailing newline joins the next shot's text prompt (t2s), or the
    # shot's text generation (s2t).
    kinds = [entry["type"] for entry in inputs]
    if direction == "t2s":
        expected = ["text", "speech"] * 3 + ["text"]
    elif direction == "s2t":
        expected = ["speech", "text"] * 3 + ["speech"]
    else:
        expected = ["speech", "speech", "text"] * 3 + ["speech"]
    assert kinds == expected
    texts = [entry["text"] for entry in inputs if entry["type"] == "text"]
    if source == "t":
        assert texts[0] == shots[0].prompt
        assert texts[-1] == "\n" + item.text  # the test item, last
    else:
        assert inputs[-1] == {"type": "speech", "audio_base64": base64.b64encode(item.audio.read_bytes()).decode()}
    if target == "t":
        assert texts[0] == f"{shots[0].generation}\n"
    speech = [entry for entry in inputs[:-1] if entry["type"] == "speech"]
    halves = [samples(entry) for entry in speech]
    # Each side is half of its clip (16 kHz): a prompt side the first half, a generation side the second.
    for shot_index, shot in enumerate(shots):
        clip = decode_audio(Path(shot.prompt if source == "s" else shot.generation).read_bytes(), 60)
        if direction == "s2s":
            first, second = halves[2 * shot_index], halves[2 * shot_index + 1]
            assert (first, second) == (len(clip) // 2, len(clip) - len(clip) // 2)
        else:
            expected_half = len(clip) // 2 if source == "s" else len(clip) - len(clip) // 2
            assert halves[shot_index] == expected_half


def test_zero_shot_prompt_is_the_item_alone(bundle):
    item = stsp.subsets_for(bundle[0], "s2s", "test")[1].items[0]
    assert stsp.build_inputs("s2s", [], item) == [
        {"type": "speech", "audio_base64": base64.b64encode(item.audio.read_bytes()).decode()}
    ]


def test_request_body_and_budgets():
    assert stsp.PAPER_MAX_NEW_TOKENS == {"t2t": 50, "t2s": 200, "s2s": 300, "s2t": 50}
    body = stsp.generate_body("t2s", [{"type": "text", "text": "hi"}], 200, 7)
    assert body == {
        "inputs": [{"type": "text", "text": "hi"}],
        "output_modality": "speech",
        "temperature": 0.8,
        "top_p": 0.95,
        "max_new_tokens": 200,
        "seed": 7,
        "response_format": "json",
    }
    assert stsp.generate_body("s2t", [], 50, 1)["output_modality"] == "text"
    assert stsp.parse_max_new_tokens(None) == stsp.PAPER_MAX_NEW_TOKENS
    assert stsp.parse_max_new_tokens("8") == dict.fromkeys(stsp.DIRECTIONS, 8)
    assert stsp.parse_max_new_tokens("s2s=12,t2t=3") == {**stsp.PAPER_MAX_NEW_TOKENS, "s2s": 12, "t2t": 3}
    with pytest.raises(stsp.StspError, match="bad --max-new-tokens entry x2y=3"):
        stsp.parse_max_new_tokens("x2y=3")
    seeds = {stsp.request_seed(run, "t2t", "expresso_asr", index) for run in range(3) for index in range(50)}
    assert len(seeds) == 150 and all(0 <= seed < 2**63 for seed in seeds)


def test_directions_from_flags_and_modalities():
    assert stsp.parse_directions("s2s,t2t") == ("s2s", "t2t")
    assert stsp.parse_directions(("text", "speech-text")) == ("t2t", "s2t")
    with pytest.raises(stsp.StspError, match="unknown direction"):
        stsp.parse_directions("t2x")


def test_paper_numbers_follow_variant_and_shots():
    assert stsp.paper_number("base", 0, "t2t") == 0.65
    assert stsp.paper_number("expressive", 6, "s2s") == 0.51
    assert stsp.paper_number("base", 3, "s2s") is None  # the paper has no few-shot row for the base model
    assert stsp.paper_shot_counts("base") == (0,)
    assert stsp.paper_shot_counts("expressive") == (0, 3, 6, 9)


def test_mean_interval_of_two_subsets():
    mean, low, high = stsp.mean_interval([(0.5, 0.4, 0.6), (0.7, 0.6, 0.8)])
    assert mean == pytest.approx(0.6)
    assert (low, high) == pytest.approx((0.6 - math.sqrt(0.02) / 2, 0.6 + math.sqrt(0.02) / 2))
    assert stsp.mean_interval([(0.5, 0.4, 0.65)]) == pytest.approx((0.5, 0.4, 0.65))


# ---- classifiers --------------------------------------------------------------------------------------------


def test_speech_classifier_maps_expresso_emotions(classifiers):
    speech = classifiers.speech()
    assert speech.sentiments == ["negative", "neutral", "positive", "negative"]  # angry, default, happy, sad
    assert speech.batch_size == 1  # group-norm wav2vec2 without attention mask: one clip per forward
    clips = [np.random.default_rng(seed).standard_normal(8000 + 1000 * seed).astype(np.float32) for seed in range(5)]
    predicted = speech.predict(clips)
    assert len(predicted) == 5 and set(predicted) <= set(stsp.SENTIMENTS)
    assert predicted == [speech.predict([clip])[0] for clip in clips]


def test_text_classifier_batches_like_single_texts(classifiers):
    text = classifiers.text()
    assert text.sentiments == ["negative", "neutral", "positive"]
    texts = ["I love this", "this is terrible and I am so angry about it", "", "please close the window"]
    assert text.predict(texts) == [text.predict([one])[0] for one in texts]


def test_unknown_classifier_labels_are_refused(tmp_path):
    folder = make_speech_classifier(tmp_path / "speech", labels=("angry", "bored", "happy", "sad"))
    with pytest.raises(stsp.StspError, match=r"labels \['bored'\] have no sentiment"):
        stsp.SpeechSentimentClassifier(folder)


def test_text_classifier_without_tokenizer_needs_the_flag(tmp_path):
    folder = make_text_classifier(tmp_path / "text", with_tokenizer=False)
    with pytest.raises(stsp.StspError) as error:
        stsp.TextSentimentClassifier(folder)
    message = str(error.value)
    assert "no tokenizer files in" in message and "--text-tokenizer" in message and "\n" not in message
    tokenizer = make_text_tokenizer(tmp_path / "tokenizer")
    assert stsp.TextSentimentClassifier(folder, tokenizer).predict(["what a lovely surprise"])[0] in stsp.SENTIMENTS


def test_missing_classifier_folder_is_named(bundle, tmp_path):
    root = copy_bundle(bundle, tmp_path)
    shutil.rmtree(root / "model/speech_classifier")
    with pytest.raises(stsp.StspError, match=f"no speech classifier at {root / 'model/speech_classifier'}"):
        stsp.Classifiers(root).check(["t2s"])
    stsp.Classifiers(root).check(["t2t", "s2t"])  # text answers only: the speech model is not needed


# ---- the run, against the real server through a recording proxy ----------------------------------------------


def test_evaluate_against_the_real_server(bundle, proxy):
    root, counts = bundle
    options = EvalOptions(seed=3, runs=2, shots=(3,), progress=False, variant="expressive")
    options.extra["max_new_tokens"] = "t2t=5,t2s=9,s2s=7,s2t=6"  # small: the tiny model's answers are noise anyway

    async def main() -> list[Any]:
        async with EvalClient(proxy.url) as client:
            return await stsp.run(client, root, options)

    results = asyncio.run(main())
    by_name = {result.subset: result for result in results}
    assert list(by_name) == [
        "t2t/3-shot",
        "t2s/3-shot",
        "s2s/3-shot",
        "s2s/3-shot/expresso_read",
        "s2s/3-shot/emov",
        "s2t/3-shot",
        "s2t/3-shot/expresso_read",
        "s2t/3-shot/emov",
    ]
    speech_items = counts["expresso_read"] + counts["emov"]
    for direction in stsp.DIRECTIONS:
        result = by_name[f"{direction}/3-shot"]
        items = counts["expresso_asr"] if direction.startswith("t") else speech_items
        assert result.total == 2 * items
        assert 0 <= result.ci_low <= result.accuracy <= result.ci_high <= 1
        assert result.paper == stsp.PAPER_TABLE3[("expressive", 3)][direction]  # the variant picks the paper's row
        assert result.extra["seeds"] == [3, 4] and len(result.extra["per_run"]) == 2
        assert len(result.extra["examples"]) == 2 and all(len(shots) == 3 for shots in result.extra["examples"])
    for result in results:  # every answer judged: a sentiment, or empty
        if "predicted" in result.extra:
            assert sum(result.extra["predicted"].values()) + result.extra["empty_answers"] == result.total
    for direction in ("s2s", "s2t"):  # the mean of the two subsets, as the paper averages them
        parts = [by_name[f"{direction}/3-shot/{name}"].accuracy for name in ("expresso_read", "emov")]
        assert by_name[f"{direction}/3-shot"].accuracy == pytest.approx(sum(parts) / 2)
    bodies = proxy.requests
    assert len(bodies) == 2 * (2 * counts["expresso_asr"] + 2 * speech_items)
    budgets = {(body["output_modality"], body["inputs"][0]["type"]): body["max_new_tokens"] for body in bodies}
    assert budgets == {("text", "text"): 5, ("speech", "text"): 9, ("speech", "speech"): 7, ("text", "speech"): 6}
    assert all(body["temperature"] == 0.8 and body["top_p"] == 0.95 for body in bodies)
    assert len({body["seed"] for body in bodies}) == len(bodies)
    # the test item is in every prompt, after the examples (the reference's few-shot path dropped it)
    manifest = (root / "manifest/expresso/expresso_asr.test.jsonl").read_text().splitlines()
    text_items = {json.loads(line)["asr"] for line in manifest if line.strip()}
    text_prompts = [body for body in bodies if body["inputs"][0]["type"] == "text"]
    assert all(any(item in body["inputs"][-1]["text"] for item in text_items) for body in text_prompts)


def test_evaluate_checks_data_before_asking_the_server(bundle, tmp_path):
    root = copy_bundle(bundle, tmp_path)
    (root / "manifest/expresso/expresso_read.test.jsonl").unlink()

    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"no request expected, got {request.url}")

    async def main() -> None:
        async with EvalClient("http://stsp.test", transport=httpx.MockTransport(refuse)) as client:
            await stsp.run(client, root, EvalOptions(progress=False))

    with pytest.raises(stsp.StspError, match="expresso_read.test.jsonl"):
        asyncio.run(main())


# ---- the command against the real server --------------------------------------------------------------------


def run_eval(server_url: str, data: Path, output: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    command = [str(SPIRITSERVE), "eval", "stsp", "--url", server_url, "--data", str(data), "--output", str(output)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*command, "--no-progress", *flags], capture_output=True, text=True, timeout=600, env=env)


def test_command_end_to_end_on_the_tiny_server(server_url, bundle, tmp_path):
    root, counts = bundle
    output = tmp_path / "stsp.json"
    done = run_eval(server_url, root, output, "--limit", "2", "--runs", "1", "--shots", "3", *BUDGET_FLAGS)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(output.read_text())
    results = {result["subset"]: result for result in report["results"]}
    for direction in stsp.DIRECTIONS:
        result = results[f"{direction}/3-shot"]
        assert 0.0 <= result["accuracy"] <= 1.0
        assert 0.0 <= result["ci_low"] <= result["accuracy"] <= result["ci_high"] <= 1.0
        assert result["total"] == (2 if direction.startswith("t") else 4)  # 1 run × 2 items (× 2 speech subsets)
        assert result["paper"] is None  # a base server: the paper has no 3-shot base row
        assert result["extra"]["empty_answers"] == 0
    assert results["s2s/3-shot/emov"]["total"] == 2


def test_command_names_a_missing_manifest_in_one_line(server_url, bundle, tmp_path):
    root = copy_bundle(bundle, tmp_path)
    missing = root / "manifest/few_shot/t2s.jsonl"
    missing.unlink()
    done = run_eval(server_url, root, tmp_path / "out.json", "--shots", "3", "--modality", "text-speech")
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("spiritserve eval:")]
    assert lines == [f"spiritserve eval: STSP: missing {missing}"]


def test_answer_audio_too_short_to_classify_is_empty():
    assert stsp.decode_answer_audio(None) is None
    assert stsp.decode_answer_audio(wav_base64(0.05)) is None
    audio = stsp.decode_answer_audio(wav_base64(0.5))
    assert audio is not None and len(audio) == 8000
