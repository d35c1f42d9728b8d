"""Spoken StoryCloze (sSC) and Topic StoryCloze (sTopic-SC) of Hassid et al. 2023 (TWIST), and their text
versions, in the four settings of the paper's Table 4: T (text story, text endings), S (speech, speech),
T→S (text story, spoken endings) and S→T (spoken story, text endings). Right when the true ending is the
more likely one.

Layout under `--data` (one folder per benchmark; either that is present is run):

    sSC/  (or sStoryCloze/)   StoryCloze:       the released WAVs, + manifest.jsonl for T, T→S, S→T
    tSC/  (or tStoryCloze/)   Topic StoryCloze: the same

The release (github.com/slp-rl/SpokenStoryCloze) is one folder of WAVs per benchmark, each a whole spoken
story (four sentences and an ending). They are paired as the TWIST authors' own loader (slamkit) pairs them:
sorted by the integer before the first `_` of the file name, then consecutive files form a pair, the true
ending first. The S setting scores the two whole stories with an empty prompt.

The release has no text and no separately spoken prompt and endings, which the other three settings need;
the paper does not say how it built them. Those come from `manifest.jsonl` in the same folder, our format,
one story per line (paths relative to the folder; keep that audio in a subfolder, away from the release's):

    {"id": "...", "prompt": "four sentences", "endings": ["true ending", "other ending"],
     "prompt_audio": "split/0_prompt.wav", "endings_audio": ["split/0_true.wav", "split/0_other.wav"]}

`correct` (default 0) names the true ending. The audio keys are needed only by the settings that use them;
with no release WAVs, S uses the manifest's spoken prompt and endings instead.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from spiritserve.evaluation.client import EvalClient
from spiritserve.evaluation.report import TaskResult
from spiritserve.evaluation.tasks import (
    Audio,
    ChoiceItem,
    DatasetError,
    EvalOptions,
    Part,
    Text,
    choice_result,
    first,
    paper_figure,
    read_jsonl,
    require,
    score_items,
    selected_modalities,
)

logger = logging.getLogger(__name__)

BENCHMARKS = {"sc": ("sSC", "sStoryCloze"), "topic-sc": ("tSC", "tStoryCloze")}  # Table 4 column → folder names
_LEADING_INDEX = re.compile(r"^(\d+)")


def benchmark_folder(data_dir: Path, benchmark: str) -> Path | None:
    for name in BENCHMARKS[benchmark]:
        if (data_dir / name).is_dir():
            return data_dir / name
    return None


def released_pairs(folder: Path) -> list[ChoiceItem]:
    """The release's whole-story WAVs as (true, other) pairs: sorted by their leading integer, consecutive."""
    files = []
    for path in folder.glob("*.wav"):
        match = _LEADING_INDEX.match(path.name)
        if match is None:
            raise DatasetError(f"{path}: a released StoryCloze file name starts with its index (e.g. 0_....wav)")
        files.append((int(match.group(1)), path.name, path))
    files.sort()
    if len(files) % 2:
        raise DatasetError(f"{folder}: {len(files)} WAVs, an odd number: pairs need two files each")
    return [
        ChoiceItem(files[index][2].stem, (), (Audio(files[index][2]), Audio(files[index + 1][2])), correct=0)
        for index in range(0, len(files), 2)
    ]


def read_manifest(path: Path) -> list[dict[str, Any]]:
    records = []
    for number, record in read_jsonl(path):
        if not isinstance(record.get("endings"), list):
            raise DatasetError(f'{path}:{number}: needs at least "prompt" and "endings" (a list)')
        record.setdefault("id", str(number))
        record["_line"] = number
        records.append(record)
    return records


def manifest_item(folder: Path, manifest: Path, record: dict[str, Any], modality: str) -> ChoiceItem:
    where = f"{manifest}:{record['_line']}"

    def field(name: str) -> Any:
        if name not in record:
            raise DatasetError(f"{where}: no {name!r} (the {modality} setting needs it)")
        return record[name]

    def audio(relative: str) -> Audio:
        return Audio(require(folder / relative, "audio file"))

    endings = field("endings")
    prompt_modality, _, ending_modality = modality.partition("-")
    ending_modality = ending_modality or prompt_modality
    prompt: tuple[Part, ...] = (
        (Text(str(field("prompt"))),) if prompt_modality == "text" else (audio(field("prompt_audio")),)
    )
    candidates: tuple[Part, ...]
    if ending_modality == "text":
        # Text after text is joined with no separator: the space between the story and its ending is ours.
        # After a spoken story the [Text] marker separates them.
        space = " " if prompt_modality == "text" else ""
        candidates = tuple(Text(space + str(ending).strip()) for ending in endings)
    else:
        paths = field("endings_audio")
        if not isinstance(paths, list) or len(paths) != len(endings):
            raise DatasetError(f"{where}: endings_audio must list one file per ending")
        candidates = tuple(audio(path) for path in paths)
    correct = int(record.get("correct", 0))
    if not 0 <= correct < len(candidates) or len(candidates) < 2:
        raise DatasetError(f"{where}: needs two or more endings and correct in [0, {len(candidates) - 1}]")
    return ChoiceItem(str(record["id"]), prompt, candidates, correct)


async def run(client: EvalClient, data_dir: Path, options: EvalOptions) -> list[TaskResult]:
    modalities = selected_modalities("storycloze", options)
    explicit = options.modalities is not None
    folders = {name: benchmark_folder(data_dir, name) for name in BENCHMARKS}
    if not any(folders.values()):
        names = " or ".join(str(data_dir / names[0]) for names in BENCHMARKS.values())
        raise DatasetError(f"missing dataset folder: {names}")
    plans: list[tuple[str, str, list[ChoiceItem], dict[str, Any]]] = []  # every dataset is read first
    for benchmark, folder in folders.items():
        if folder is None:
            logger.warning("no %s folder under %s: %s skipped", "/".join(BENCHMARKS[benchmark]), data_dir, benchmark)
            continue
        manifest = folder / "manifest.jsonl"
        records = read_manifest(manifest) if manifest.exists() else None
        for modality in modalities:
            if modality == "speech" and any(folder.glob("*.wav")):
                items = first(iter(released_pairs(folder)), options.limit)
                source = "release (whole stories)"
            elif records is not None:
                items = first((manifest_item(folder, manifest, record, modality) for record in records), options.limit)
                source = "manifest.jsonl"
            elif explicit:
                raise DatasetError(f"missing dataset file: {manifest} (the {modality} setting needs it)")
            else:
                logger.warning("no %s: %s/%s skipped", manifest, benchmark, modality)
                continue
            plans.append((benchmark, modality, items, {"source": source, "folder": str(folder)}))
    results = []
    for benchmark, modality, items, extra in plans:
        outcomes = await score_items(client, items, options, f"storycloze {benchmark}/{modality}")
        results.append(
            choice_result(
                "storycloze",
                f"{benchmark}/{modality}",
                outcomes,
                paper_figure(options.variant, benchmark, modality),
                paper_figure(options.variant, benchmark, modality, normalized=False),
                extra,
            )
        )
    return results
