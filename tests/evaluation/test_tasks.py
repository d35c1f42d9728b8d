"""The tasks end to end through `spiritserve eval` against the real server (tiny bundle, real vLLM engine), through
a recording proxy in a thread: the datasets in their published layouts are read, the right requests sent, and
the reported counts and accuracies are those of the server's real answers. The CLI's one-line errors too."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from spiritserve.cli import main
from spiritserve.evaluation.command import TASK_NAMES
from spiritserve.evaluation.tasks import TASKS, DatasetError, read_jsonl
from tests.evaluation.datasets import make_mmlu, make_storycloze, make_zerospeech
from tests.evaluation.proxy import RecordingProxy


def evaluate(server: RecordingProxy, task: str, data: Path, output: Path, *flags: str) -> dict:
    main(["eval", task, "--url", server.url, "--data", str(data), "--output", str(output), "--no-progress", *flags])
    return json.loads(output.read_text())


def by_subset(document: dict) -> dict[str, dict]:
    return {result["subset"]: result for result in document["results"]}


def test_swuggy_and_sblimp(proxy: RecordingProxy, tmp_path: Path) -> None:
    expected = make_zerospeech(tmp_path / "zr")
    document = evaluate(proxy, "swuggy", tmp_path / "zr", tmp_path / "swuggy.json")
    results = by_subset(document)
    assert results["speech"]["total"] == expected["swuggy/speech"]
    assert results["text"]["total"] == expected["swuggy/text"]
    assert results["speech"]["paper"] == 0.69 and results["text"]["paper"] == 0.803
    assert results["speech"]["extra"]["unnormalized"]["paper"] == 0.714
    assert document["variant"] == "base" and document["server"]["model"] == "spirit-lm-base-7b"
    speech = [body for body in proxy.requests if body["candidates"][0]["type"] == "speech"]
    text = [body for body in proxy.requests if body not in speech]
    # the real word is sent first: an item is right when the server's best candidate is the first
    assert results["speech"]["accuracy"] == proxy.accuracy(speech)
    assert results["text"]["accuracy"] == proxy.accuracy(text)
    assert len(speech) == expected["swuggy/speech"] and all(body["prompt"] == [] for body in speech)
    first_wav = (tmp_path / "zr" / "lexical" / "dev" / "lx0000.wav").read_bytes()
    sent_first = {base64.b64decode(body["candidates"][0]["audio_base64"]) for body in speech}  # sent concurrently
    assert first_wav in sent_first
    texts = [[item["text"] for item in body["candidates"]] for body in text]
    assert sorted(texts) == [["brick", "blick"], ["garden", "gardel"], ["window", "windoz"]]  # sent concurrently

    proxy.clear()
    results = by_subset(evaluate(proxy, "sblimp", tmp_path / "zr", tmp_path / "sblimp.json"))
    assert results["speech"]["total"] == expected["sblimp/speech"]
    assert results["text"]["total"] == expected["sblimp/text"]
    assert results["text"]["extra"]["benchmark"] == "BLiMP"
    assert ["Many girls insulted themselves.", "Many girls insulted herself."] in [
        [item.get("text") for item in body["candidates"]] for body in proxy.requests
    ]


def test_text_blimp_falls_back_to_sblimp_transcriptions(proxy: RecordingProxy, tmp_path: Path) -> None:
    make_zerospeech(tmp_path / "zr")
    for path in (tmp_path / "zr" / "blimp" / "data").iterdir():
        path.unlink()
    results = by_subset(evaluate(proxy, "sblimp", tmp_path / "zr", tmp_path / "o.json", "--modality", "text"))
    assert results["text"]["total"] == 2 and "transcriptions" in results["text"]["extra"]["benchmark"]


def test_storycloze_four_settings(proxy: RecordingProxy, tmp_path: Path) -> None:
    stories = make_storycloze(tmp_path / "sc")
    document = evaluate(proxy, "storycloze", tmp_path / "sc", tmp_path / "sc.json", "--variant", "expressive")
    results = by_subset(document)
    assert sorted(results) == sorted(f"{b}/{m}" for b in ("sc", "topic-sc") for m in TASKS["storycloze"].modalities)
    assert all(result["total"] == stories for result in results.values())
    assert results["sc/speech"]["extra"]["source"] == "release (whole stories)"
    assert results["topic-sc/speech-text"]["paper"] == 0.732  # the expressive column, as asked
    kinds = {
        (tuple(item["type"] for item in body["prompt"]), tuple(item["type"] for item in body["candidates"]))
        for body in proxy.requests
    }
    assert kinds == {
        ((), ("speech", "speech")),
        (("text",), ("text", "text")),
        (("text",), ("speech", "speech")),
        (("speech",), ("text", "text")),
    }
    text_endings = {
        item["text"]
        for body in proxy.requests
        if body["prompt"] and body["prompt"][0]["type"] == "text"
        for item in body["candidates"]
        if item["type"] == "text"
    }
    assert " He adopted the puppy." in text_endings  # our space between story and ending


def test_storycloze_release_pairs_follow_the_leading_index(proxy: RecordingProxy, tmp_path: Path) -> None:
    make_storycloze(tmp_path / "sc")
    (tmp_path / "sc" / "tSC").rename(tmp_path / "elsewhere")  # only sSC: the other benchmark is skipped
    evaluate(proxy, "storycloze", tmp_path / "sc", tmp_path / "o.json", "--modality", "speech", "--limit", "2")
    sent = sorted(base64.b64decode(body["candidates"][0]["audio_base64"]) for body in proxy.requests)
    assert sent == sorted(
        (tmp_path / "sc" / "sSC" / name).read_bytes() for name in ("0_story0_pos.wav", "2_story1_pos.wav")
    )


def test_mmlu_prompt_and_candidates(proxy: RecordingProxy, tmp_path: Path) -> None:
    questions = make_mmlu(tmp_path / "mmlu")
    results = by_subset(evaluate(proxy, "mmlu", tmp_path / "mmlu", tmp_path / "mmlu.json"))
    result = results["5-shot"]
    assert result["total"] == questions and result["paper"] == 0.369
    assert set(result["extra"]["subjects"]) == {"astronomy", "high_school_biology"}
    # the right answers of the test questions are B, then C, in each subject
    rights = [1 if "Test question 0?" in body["prompt"][0]["text"] else 2 for body in proxy.requests]
    assert result["accuracy"] == proxy.accuracy(proxy.requests, rights)
    body = next(body for body in proxy.requests if "Test question 0?" in body["prompt"][0]["text"])
    prompt = body["prompt"][0]["text"]
    assert prompt.startswith("The following are multiple choice questions (with answers) about ")
    subject = "astronomy" if "about astronomy." in prompt else "high_school_biology"
    assert f"Dev question 4 about {subject}, with a comma?\nA. one\nB. two\nC. three\nD. four\nAnswer: A\n\n" in prompt
    assert prompt.endswith("Test question 0?\nA. red\nB. green\nC. blue\nD. yellow\nAnswer:")
    assert [item["text"] for item in body["candidates"]] == [" A", " B", " C", " D"]

    proxy.clear()
    evaluate(
        proxy,
        "mmlu",
        tmp_path / "mmlu",
        tmp_path / "m.json",
        "--answers",
        "texts",
        "--limit",
        "1",
        "--shots",
        "0",
    )
    assert len(proxy.requests) == 2
    assert all(
        [item["text"] for item in body["candidates"]] == [" red", " green", " blue", " yellow"]
        for body in proxy.requests
    )
    assert "Dev question" not in proxy.requests[0]["prompt"][0]["text"]


def fails(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    return int(exited.value.code), error


def test_cli_errors(proxy: RecordingProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, error = fails(capsys, ["eval", "nope", "--data", str(tmp_path)])
    assert (
        code == 2 and error == "spiritserve eval: unknown task 'nope' (tasks: swuggy, sblimp, storycloze, stsp, mmlu)"
    )
    code, error = fails(capsys, ["eval", "swuggy", "--data", str(tmp_path / "absent")])
    assert code == 2 and error == f"spiritserve eval: missing dataset folder: {tmp_path / 'absent'}"
    code, error = fails(capsys, ["eval", "swuggy", "--url", proxy.url, "--data", str(tmp_path)])
    assert code == 2 and error == f"spiritserve eval: missing dataset file: {tmp_path / 'lexical' / 'dev' / 'gold.csv'}"
    make_zerospeech(tmp_path / "zr")
    (tmp_path / "zr" / "lexical" / "dev" / "lx0003.wav").unlink()
    code, error = fails(capsys, ["eval", "swuggy", "--url", proxy.url, "--data", str(tmp_path / "zr")])
    assert code == 2 and error.endswith(f"missing audio file: {tmp_path / 'zr' / 'lexical' / 'dev' / 'lx0003.wav'}")
    code, error = fails(capsys, ["eval", "mmlu", "--modality", "speech", "--data", str(tmp_path)])
    assert code == 2 and "mmlu has no --modality speech" in error
    code, error = fails(capsys, ["eval", "mmlu", "--url", "http://127.0.0.1:9", "--data", str(tmp_path)])
    assert code == 1 and error.startswith("spiritserve eval: cannot reach the server at http://127.0.0.1:9")
    assert not proxy.requests


def test_registry_imports_without_task_modules() -> None:
    assert TASKS["stsp"].target == "spiritserve.evaluation.stsp:run"
    assert TASK_NAMES == tuple(TASKS)  # the CLI's help lists the registry without importing it
    from spiritserve.evaluation.client import EvalError
    from spiritserve.evaluation.tasks import Task

    with pytest.raises(EvalError, match="not available in this build"):
        Task("ghost", "spiritserve.evaluation.ghost:run", "", ("text",)).load()


def test_a_bad_json_lines_record_is_named_by_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "phenomenon.jsonl"
    path.write_text('{"sentence_good": "a", "sentence_bad": "b"}\n\n[1, 2]\n')
    with pytest.raises(DatasetError, match=rf"{path}:3: not a JSON object"):
        list(read_jsonl(path))
    path.write_text("{oops\n")
    with pytest.raises(DatasetError, match=rf"{path}:1: not JSON"):
        list(read_jsonl(path))
