"""MMLU (Hendrycks et al. 2021), k-shot (5 by default, as in the paper's Table 4), text only.

Read from the published CSVs (the `data.tar` release; `--data` is the folder holding `data/`, or `data/` itself):

    data/dev/<subject>_dev.csv     the 5 examples per subject the shots come from
    data/test/<subject>_test.csv   the questions

No header; each row is question, A, B, C, D, answer letter. The prompt is the original paper's format (as its
evaluation code and Meta's Llama evaluations build it): a subject line, the k dev examples with their answers,
then the question, ending in "Answer:". The candidates are the four letters " A" … " D" (`--answers letters`,
the default) or the answers' own texts (`--answers texts`), each scored as the continuation of the prompt.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from spiritserve.evaluation.client import EvalClient, EvalError
from spiritserve.evaluation.report import TaskResult
from spiritserve.evaluation.tasks import (
    ChoiceItem,
    DatasetError,
    EvalOptions,
    Text,
    choice_result,
    paper_figure,
    require,
    score_items,
    selected_modalities,
)

LETTERS = ("A", "B", "C", "D")
DEFAULT_SHOTS = 5


def data_root(data_dir: Path) -> Path:
    """The folder holding dev/ and test/: `DIR/data` as the tarball unpacks, or DIR itself."""
    if (data_dir / "data" / "test").is_dir():
        return data_dir / "data"
    if (data_dir / "test").is_dir():
        return data_dir
    raise DatasetError(f"missing dataset folder: {data_dir / 'data' / 'test'}")


def read_questions(path: Path) -> list[tuple[str, tuple[str, str, str, str], int]]:
    """(question, the four answers, index of the right one) per row of a headerless MMLU CSV."""
    require(path)
    rows = []
    with path.open(newline="", encoding="utf-8") as stream:
        for number, row in enumerate(csv.reader(stream), start=1):
            if not row:
                continue
            if len(row) != 6 or row[5].strip() not in LETTERS:
                raise DatasetError(f"{path}:{number}: expected question, A, B, C, D, answer letter ({len(row)} fields)")
            rows.append((row[0], (row[1], row[2], row[3], row[4]), LETTERS.index(row[5].strip())))
    return rows


def format_question(question: str, answers: tuple[str, ...], answer: int | None = None) -> str:
    lines = [question] + [f"{letter}. {text}" for letter, text in zip(LETTERS, answers)]
    text = "\n".join(lines) + "\nAnswer:"
    return text if answer is None else f"{text} {LETTERS[answer]}\n\n"


def build_prompt(
    subject: str, shots: list[tuple[str, tuple[str, str, str, str], int]], question: str, answers: tuple[str, ...]
) -> str:
    header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    return header + "".join(format_question(q, a, right) for q, a, right in shots) + format_question(question, answers)


async def run(client: EvalClient, data_dir: Path, options: EvalOptions) -> list[TaskResult]:
    selected_modalities("mmlu", options)  # text only: refuses any other --modality
    if options.answers not in ("letters", "texts"):
        raise EvalError(f"mmlu: --answers must be letters or texts, got {options.answers!r}")
    root = data_root(data_dir)
    found = sorted(path.name.removesuffix("_test.csv") for path in (root / "test").glob("*_test.csv"))
    subjects = list(options.subjects) if options.subjects else found
    if not subjects:
        raise DatasetError(f"missing dataset files: {root / 'test'}/<subject>_test.csv")
    shot_counts = options.shots or (DEFAULT_SHOTS,)
    plans: list[tuple[int, list[ChoiceItem]]] = []  # every file is read before any request
    for shots in shot_counts:
        items: list[ChoiceItem] = []
        for subject in subjects:
            dev = read_questions(root / "dev" / f"{subject}_dev.csv")
            if shots > len(dev):
                raise DatasetError(
                    f"{root / 'dev' / f'{subject}_dev.csv'}: {len(dev)} examples, fewer than {shots} shots"
                )
            questions = read_questions(root / "test" / f"{subject}_test.csv")
            if options.limit is not None:
                questions = questions[: options.limit]  # per subject, so a quick run still covers every subject
            for number, (question, answers, right) in enumerate(questions):
                prompt = build_prompt(subject, dev[:shots], question, answers)
                if options.answers == "letters":
                    candidates = tuple(Text(f" {letter}") for letter in LETTERS)
                else:
                    candidates = tuple(Text(f" {answer}") for answer in answers)
                items.append(ChoiceItem(f"{subject}/{number}", (Text(prompt),), candidates, right))
        plans.append((shots, items))
    results = []
    for shots, items in plans:
        outcomes = await score_items(client, items, options, f"mmlu {shots}-shot")
        per_subject: dict[str, dict[str, Any]] = {}
        for outcome in outcomes:
            subject = outcome.key.rsplit("/", 1)[0]
            entry = per_subject.setdefault(subject, {"correct": 0, "total": 0})
            entry["total"] += 1
            entry["correct"] += int(outcome.best_normalized == outcome.correct and not outcome.tie_normalized)
        for entry in per_subject.values():
            entry["accuracy"] = entry["correct"] / entry["total"]
        macro = sum(entry["accuracy"] for entry in per_subject.values()) / len(per_subject)
        results.append(
            choice_result(
                "mmlu",
                f"{shots}-shot",
                outcomes,
                paper_figure(options.variant, "mmlu", "text") if shots == DEFAULT_SHOTS else None,
                None,
                {
                    "answers": options.answers,
                    "average": "micro (over questions); macro over subjects in extra.macro_accuracy",
                    "macro_accuracy": macro,
                    "subjects": per_subject,
                },
            )
        )
    return results
