"""sWUGGY and sBLIMP (ZeroSpeech 2021 lexical and syntactic) and their text versions, tWUGGY and BLiMP.

Each item is a minimal pair scored with an empty prompt: the model should give the real word (the grammatical
sentence) a higher likelihood than the non-word (the ungrammatical one).

Read from the ZeroSpeech 2021 dataset as published (`--data` is its root):

    lexical/{dev,test}/<filename>.wav + gold.csv    columns filename, word, voice, frequency, id, correct, ...
    syntactic/{dev,test}/<filename>.wav + gold.csv  columns filename, type, subtype, voice, id, correct, transcription

A pair is the two rows sharing `id` and `voice` (and, for syntactic, `type` and `subtype`), `correct` 1 for the
real word / grammatical sentence and 0 for the other. tWUGGY takes the same pairs as text from the `word`
column (one per `id`: the voices read the same words). Text BLiMP reads Warstadt et al.'s release, one jsonl
per phenomenon with `sentence_good` / `sentence_bad`, from `blimp/data/*.jsonl` (a clone of the BLiMP
repository) or `blimp/*.jsonl` under `--data`; without it, the sBLIMP gold's `transcription` column is used
(the same pairs as text) and the result says so (`extra.source`).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from spiritserve.evaluation.client import EvalClient
from spiritserve.evaluation.report import TaskResult
from spiritserve.evaluation.tasks import (
    Audio,
    ChoiceItem,
    DatasetError,
    EvalOptions,
    Text,
    choice_result,
    first,
    paper_figure,
    read_jsonl,
    require,
    score_items,
    selected_modalities,
)


def read_gold(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a ZeroSpeech gold.csv (header line, comma-separated), checking its columns."""
    require(path)
    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        missing = [column for column in required if column not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}: no column {', '.join(missing)} (has {', '.join(reader.fieldnames or [])})")
        return list(reader)


def minimal_pairs(
    rows: list[dict[str, str]], keys: tuple[str, ...], path: Path
) -> Iterator[tuple[tuple[str, ...], dict[str, str], dict[str, str]]]:
    """(key, good row, bad row) per group of rows sharing `keys`, in the gold file's order."""
    groups: dict[tuple[str, ...], dict[str, dict[str, str]]] = {}
    for row in rows:
        label = row["correct"].strip()
        if label not in ("0", "1"):
            raise DatasetError(f"{path}: correct must be 0 or 1, got {label!r} for {row.get('filename')}")
        group = groups.setdefault(tuple(row[key] for key in keys), {})
        if label in group:
            where = ", ".join(f"{key}={row[key]}" for key in keys)
            raise DatasetError(f"{path}: two rows with correct={label} for {where}")
        group[label] = row
    for key, group in groups.items():
        if set(group) != {"0", "1"}:
            where = ", ".join(f"{name}={value}" for name, value in zip(keys, key))
            raise DatasetError(f"{path}: {where} has only correct={next(iter(group))}, not a pair")
        yield key, group["1"], group["0"]


def _audio(folder: Path, filename: str) -> Audio:
    path = folder / f"{filename}.wav"
    return Audio(require(path, "audio file"))


async def run_swuggy(client: EvalClient, data_dir: Path, options: EvalOptions) -> list[TaskResult]:
    folder = data_dir / "lexical" / options.split
    gold_path = folder / "gold.csv"
    modalities = selected_modalities("swuggy", options)
    rows = read_gold(gold_path, ("filename", "word", "voice", "id", "correct"))
    pairs = list(minimal_pairs(rows, ("id", "voice"), gold_path))
    plans: list[tuple[str, list[ChoiceItem], dict[str, str]]] = []  # every dataset is read before any request
    for modality in modalities:
        if modality == "speech":
            items = first(
                (
                    ChoiceItem(
                        f"{key[0]}/{key[1]}", (), (_audio(folder, good["filename"]), _audio(folder, bad["filename"]))
                    )
                    for key, good, bad in pairs
                ),
                options.limit,
            )
            plans.append((modality, items, {"benchmark": "sWUGGY", "split": options.split, "source": str(gold_path)}))
        else:
            by_id: dict[str, ChoiceItem] = {}
            for key, good, bad in pairs:
                by_id.setdefault(key[0], ChoiceItem(key[0], (), (Text(good["word"]), Text(bad["word"]))))
            items = first(by_id.values(), options.limit)
            plans.append((modality, items, {"benchmark": "tWUGGY", "split": options.split, "source": str(gold_path)}))
    return await _score_plans(client, "swuggy", "wuggy", plans, options)


async def _score_plans(
    client: EvalClient,
    task: str,
    benchmark: str,
    plans: list[tuple[str, list[ChoiceItem], dict[str, str]]],
    options: EvalOptions,
) -> list[TaskResult]:
    results = []
    for modality, items, extra in plans:
        outcomes = await score_items(client, items, options, f"{task} {modality}")
        results.append(
            choice_result(
                task,
                modality,
                outcomes,
                paper_figure(options.variant, benchmark, modality),
                paper_figure(options.variant, benchmark, modality, normalized=False),
                extra,
            )
        )
    return results


def blimp_files(data_dir: Path) -> list[Path]:
    for folder in (data_dir / "blimp" / "data", data_dir / "blimp"):
        files = sorted(folder.glob("*.jsonl"))
        if files:
            return files
    return []


def read_blimp(files: list[Path]) -> Iterator[ChoiceItem]:
    for path in files:
        for number, record in read_jsonl(path):
            good, bad = record.get("sentence_good"), record.get("sentence_bad")
            if not isinstance(good, str) or not isinstance(bad, str):
                raise DatasetError(f"{path}:{number}: not a BLiMP line (sentence_good, sentence_bad)")
            key = f"{record.get('UID', path.stem)}/{record.get('pair_id', number - 1)}"
            yield ChoiceItem(key, (), (Text(good), Text(bad)))


async def run_sblimp(client: EvalClient, data_dir: Path, options: EvalOptions) -> list[TaskResult]:
    folder = data_dir / "syntactic" / options.split
    gold_path = folder / "gold.csv"
    plans: list[tuple[str, list[ChoiceItem], dict[str, str]]] = []  # every dataset is read before any request
    for modality in selected_modalities("sblimp", options):
        if modality == "speech":
            rows = read_gold(gold_path, ("filename", "type", "subtype", "voice", "id", "correct"))
            pairs = minimal_pairs(rows, ("type", "subtype", "id", "voice"), gold_path)
            items = first(
                (
                    ChoiceItem("/".join(key), (), (_audio(folder, good["filename"]), _audio(folder, bad["filename"])))
                    for key, good, bad in pairs
                ),
                options.limit,
            )
            plans.append((modality, items, {"benchmark": "sBLIMP", "split": options.split, "source": str(gold_path)}))
            continue
        files = blimp_files(data_dir)
        if files:
            items = first(read_blimp(files), options.limit)
            plans.append((modality, items, {"benchmark": "BLiMP", "source": str(files[0].parent)}))
        elif gold_path.exists():
            rows = read_gold(gold_path, ("filename", "type", "subtype", "voice", "id", "correct", "transcription"))
            by_pair: dict[tuple[str, ...], ChoiceItem] = {}
            for key, good, bad in minimal_pairs(rows, ("type", "subtype", "id", "voice"), gold_path):
                texts = (Text(good["transcription"]), Text(bad["transcription"]))
                by_pair.setdefault(key[:3], ChoiceItem("/".join(key[:3]), (), texts))
            items = first(by_pair.values(), options.limit)
            plans.append((modality, items, {"benchmark": "tBLIMP (sBLIMP transcriptions)", "source": str(gold_path)}))
        else:
            raise DatasetError(f"missing dataset files: {data_dir / 'blimp' / 'data'}/*.jsonl (text BLiMP)")
    return await _score_plans(client, "sblimp", "blimp", plans, options)
