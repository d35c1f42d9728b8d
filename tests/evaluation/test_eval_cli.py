"""`spiritserve eval` end to end against the real server on the tiny bundle (a real vLLM engine): each task on a
tiny dataset in its published layout, run as a subprocess; the report has one accuracy per setting, over every
item, with its interval. Random weights: the accuracies are near chance, so no value is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.evaluation.datasets import make_mmlu, make_storycloze, make_zerospeech


@pytest.fixture(scope="module")
def score_server(server_url: str) -> str:
    return server_url


def run_eval(url: str, task: str, data: Path, output: Path, *flags: str) -> dict:
    command = [sys.executable, "-m", "spiritserve", "eval", task, "--url", url, "--data", str(data)]
    done = subprocess.run(
        [*command, "--output", str(output), "--no-progress", "--concurrency", "4", *flags],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"wrote {output}" in done.stdout
    return json.loads(output.read_text())


def check(document: dict, expected: dict[str, int]) -> None:
    results = {result["subset"]: result for result in document["results"]}
    assert {subset: result["total"] for subset, result in results.items()} == expected
    for result in results.values():
        assert 0.0 <= result["ci_low"] <= result["accuracy"] <= result["ci_high"] <= 1.0
        assert 0.0 <= result["extra"]["unnormalized"]["accuracy"] <= 1.0
    assert document["server"]["random_weights"] is True and document["variant"] == "base"


def test_zerospeech_tasks(score_server: str, tmp_path: Path) -> None:
    expected = make_zerospeech(tmp_path / "zr", ids=2, voices=("Alex",))
    for task in ("swuggy", "sblimp"):
        document = run_eval(score_server, task, tmp_path / "zr", tmp_path / f"{task}.json")
        check(document, {modality: expected[f"{task}/{modality}"] for modality in ("text", "speech")})


def test_storycloze(score_server: str, tmp_path: Path) -> None:
    stories = make_storycloze(tmp_path / "sc", stories=2)
    document = run_eval(score_server, "storycloze", tmp_path / "sc", tmp_path / "storycloze.json")
    settings = ("text", "speech", "text-speech", "speech-text")
    check(document, {f"{benchmark}/{setting}": stories for benchmark in ("sc", "topic-sc") for setting in settings})


def test_mmlu(score_server: str, tmp_path: Path) -> None:
    questions = make_mmlu(tmp_path / "mmlu", subjects=("astronomy",), questions=2)
    check(run_eval(score_server, "mmlu", tmp_path / "mmlu", tmp_path / "mmlu.json"), {"5-shot": questions})
