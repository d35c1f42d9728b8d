"""The task registry `spiritserve eval` reads, the options every task takes, and the shared machinery of the
likelihood tasks: items with a prompt and candidate continuations, scored on the server, counted right when
the correct candidate has the highest score.

A task is a name and an async runner `run(client, data_dir, options) -> list[TaskResult]`, given as
"module:function" and imported only when that task runs (so the registry imports even where a task's module
is missing, and `spiritserve --help` stays cheap).
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import json
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spiritserve.evaluation.client import EvalClient, EvalError, audio_item, text_item
from spiritserve.evaluation.report import TaskResult, wilson_interval

MODALITIES = ("text", "speech", "text-speech", "speech-text")  # prompt modality - continuation modality


class DatasetError(EvalError):
    """A dataset file or folder is missing or not in the published layout; the message names the path."""


@dataclass
class EvalOptions:
    """What `spiritserve eval` passes every task; a task reads the fields it has a use for."""

    limit: int | None = None  # the first N items of each subset (quick runs)
    seed: int = 0
    progress: bool = True  # tqdm bars on stderr
    concurrency: int = 8  # requests in flight
    variant: str = "base"  # which paper column to compare with: "base" | "expressive"
    modalities: tuple[str, ...] | None = None  # None: every setting the task has
    shots: tuple[int, ...] | None = None  # None: the task's default (MMLU 5; STSP 0, 3, 6, 9)
    runs: int | None = None  # None: the task's default (STSP 3)
    split: str = "dev"  # ZeroSpeech 2021 split (dev has public gold labels)
    answers: str = "letters"  # MMLU candidates: "letters" (" A".." D") or "texts" (the answers' own text)
    subjects: tuple[str, ...] | None = None  # MMLU subjects (None: all found)
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific settings without a field here


Runner = Callable[[EvalClient, Path, EvalOptions], Awaitable[list[TaskResult]]]


@dataclass(frozen=True)
class Task:
    name: str
    target: str  # "module:function"
    description: str
    modalities: tuple[str, ...]  # the settings `--modality` accepts

    def load(self) -> Runner:
        module_name, _, function = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            raise EvalError(f"task {self.name!r} is not available in this build ({module_name} is missing)") from None
        runner: Runner = getattr(module, function)
        return runner


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "swuggy",
            "spiritserve.evaluation.zerospeech:run_swuggy",
            "lexical: sWUGGY (ZeroSpeech 2021 lexical) and its text version tWUGGY",
            ("text", "speech"),
        ),
        Task(
            "sblimp",
            "spiritserve.evaluation.zerospeech:run_sblimp",
            "syntactic: sBLIMP (ZeroSpeech 2021 syntactic) and text BLiMP",
            ("text", "speech"),
        ),
        Task(
            "storycloze",
            "spiritserve.evaluation.storycloze:run",
            "spoken and topic StoryCloze (Hassid et al. 2023) in the four modality settings",
            MODALITIES,
        ),
        Task(
            "stsp",
            "spiritserve.evaluation.stsp:run",
            "speech-text sentiment preservation: the four directions, 0/3/6/9 shots, averaged runs",
            MODALITIES,
        ),
        Task("mmlu", "spiritserve.evaluation.mmlu:run", "MMLU 5-shot, text only", ("text",)),
    )
}


# The paper's figures (arXiv v2), as fractions. Table 4: token-normalised log-likelihood accuracy; keys are
# (benchmark, modality setting). Table 10: the un-normalised figures it gives (base model, speech only).
PAPER_TABLE4: dict[str, dict[tuple[str, str], float]] = {
    "base": {
        ("wuggy", "text"): 0.803,
        ("wuggy", "speech"): 0.690,
        ("blimp", "text"): 0.733,
        ("blimp", "speech"): 0.583,
        ("topic-sc", "text"): 0.980,
        ("topic-sc", "speech"): 0.829,
        ("topic-sc", "text-speech"): 0.727,
        ("topic-sc", "speech-text"): 0.886,
        ("sc", "text"): 0.794,
        ("sc", "speech"): 0.610,
        ("sc", "text-speech"): 0.595,
        ("sc", "speech-text"): 0.646,
        ("mmlu", "text"): 0.369,
    },
    "expressive": {
        ("wuggy", "text"): 0.758,
        ("wuggy", "speech"): 0.650,
        ("blimp", "text"): 0.736,
        ("blimp", "speech"): 0.542,
        ("topic-sc", "text"): 0.979,
        ("topic-sc", "speech"): 0.754,
        ("topic-sc", "text-speech"): 0.616,
        ("topic-sc", "speech-text"): 0.732,
        ("sc", "text"): 0.789,
        ("sc", "speech"): 0.569,
        ("sc", "text-speech"): 0.546,
        ("sc", "speech-text"): 0.588,
        ("mmlu", "text"): 0.333,
    },
}
PAPER_TABLE10_UNNORMALIZED: dict[str, dict[tuple[str, str], float]] = {
    "base": {
        ("wuggy", "speech"): 0.714,
        ("blimp", "speech"): 0.632,
        ("topic-sc", "speech"): 0.692,
        ("sc", "speech"): 0.562,
    },
    "expressive": {},
}


def paper_figure(variant: str, benchmark: str, modality: str, normalized: bool = True) -> float | None:
    table = PAPER_TABLE4 if normalized else PAPER_TABLE10_UNNORMALIZED
    return table.get(variant, {}).get((benchmark, modality))


def selected_modalities(task: str, options: EvalOptions) -> tuple[str, ...]:
    allowed = TASKS[task].modalities
    chosen = options.modalities or allowed
    unknown = [modality for modality in chosen if modality not in allowed]
    if unknown:
        raise EvalError(f"{task}: --modality {','.join(unknown)} is not one of {', '.join(allowed)}")
    return tuple(chosen)


def require(path: Path, what: str = "dataset file") -> Path:
    """`path` if it exists, else a DatasetError naming it."""
    if not path.exists():
        raise DatasetError(f"missing {what}: {path}")
    return path


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON-lines file; a DatasetError naming the file and the
    line for one that is not a JSON object."""
    require(path)
    with path.open(encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise DatasetError(f"{path}:{number}: not JSON ({exc})") from None
            if not isinstance(record, dict):
                raise DatasetError(f"{path}:{number}: not a JSON object")
            yield number, record


# ---- items scored by likelihood ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Audio:
    path: Path


Part = Text | Audio


def to_item(part: Part) -> dict[str, Any]:
    """The request item; audio is read here, when its request is built, so a run never holds every file."""
    return text_item(part.text) if isinstance(part, Text) else audio_item(part.path)


@dataclass(frozen=True)
class ChoiceItem:
    """One question: the prompt (possibly empty), its candidate continuations, and which one is right."""

    key: str
    prompt: tuple[Part, ...]
    candidates: tuple[Part, ...]
    correct: int = 0


@dataclass
class ChoiceOutcome:
    key: str
    correct: int
    best: int  # by logprob
    best_normalized: int  # by normalized_logprob
    tie: bool  # the correct candidate's logprob equals the best other's
    tie_normalized: bool


async def score_items(
    client: EvalClient, items: list[ChoiceItem], options: EvalOptions, description: str
) -> list[ChoiceOutcome]:
    """Score every item on the server, `options.concurrency` at a time, in order of `items`."""
    outcomes: list[ChoiceOutcome | None] = [None] * len(items)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(items)):
        queue.put_nowait(index)
    bar = progress_bar(len(items), description, options.progress)

    async def worker() -> None:
        while True:
            try:
                index = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            item = items[index]
            prompt = [to_item(part) for part in item.prompt]
            candidates = [to_item(part) for part in item.candidates]
            result = await client.score(prompt, candidates)
            logprobs = [score.logprob for score in result.scores]
            normalized = [score.normalized_logprob for score in result.scores]
            outcomes[index] = ChoiceOutcome(
                key=item.key,
                correct=item.correct,
                best=result.best,
                best_normalized=result.best_normalized,
                tie=_tied(logprobs, item.correct),
                tie_normalized=_tied(normalized, item.correct),
            )
            bar.update(1)

    workers = [asyncio.create_task(worker()) for _ in range(max(1, min(options.concurrency, len(items))))]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
        bar.close()
    return [outcome for outcome in outcomes if outcome is not None]


def _tied(values: list[float], correct: int) -> bool:
    others = [value for index, value in enumerate(values) if index != correct]
    return bool(others) and values[correct] == max(others)


def choice_result(
    task: str,
    subset: str,
    outcomes: list[ChoiceOutcome],
    paper: float | None,
    paper_unnormalized: float | None,
    extra: dict[str, Any] | None = None,
) -> TaskResult:
    """Accuracy by `normalized_logprob` (the paper's Table 4) with the accuracy by `logprob` (Table 10) in
    `extra["unnormalized"]`. An item is right when the correct candidate scores strictly highest; ties count
    as wrong and are reported (`ties`), as they only happen for degenerate inputs (identical candidates)."""
    correct = sum(outcome.best_normalized == outcome.correct and not outcome.tie_normalized for outcome in outcomes)
    correct_raw = sum(outcome.best == outcome.correct and not outcome.tie for outcome in outcomes)
    total = len(outcomes)
    low, high = wilson_interval(correct_raw, total)
    unnormalized = {
        "correct": correct_raw,
        "accuracy": correct_raw / total if total else 0.0,
        "ci_low": low,
        "ci_high": high,
        "paper": paper_unnormalized,
        "ties": sum(outcome.tie for outcome in outcomes),
    }
    details = {
        "score": "normalized_logprob",
        "ties": sum(outcome.tie_normalized for outcome in outcomes),
        "unnormalized": unnormalized,
        **(extra or {}),
    }
    return TaskResult.from_counts(task, subset, correct, total, paper, details)


def first(items: Iterable[ChoiceItem], limit: int | None) -> list[ChoiceItem]:
    """The first `limit` items (all with None), consuming no more of `items` than that."""
    return list(items if limit is None else itertools.islice(items, limit))


def progress_bar(total: int, description: str, enabled: bool) -> Any:
    """A tqdm bar on stderr; disabled, tqdm's own no-op bar (the same update/close)."""
    from tqdm import tqdm

    return tqdm(
        total=total, desc=description, unit="item", file=sys.stderr, dynamic_ncols=True, leave=True, disable=not enabled
    )
