"""Evaluation results: one `TaskResult` per task and subset, a 95 % confidence interval, a table and a JSON file."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

Z_95 = 1.959963984540054  # two-sided 95 % quantile of the standard normal


def wilson_interval(correct: float, total: int, z: float = Z_95) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion `correct / total`.

    Why Wilson rather than the textbook normal (Wald) interval `p ± z·sqrt(p(1-p)/n)`: the runs here are often
    small (`--limit`, STSP's 54-item EXPRESSO-READ) and some accuracies sit near 0 or 1 (tTopic-SC is 98 %),
    where Wald's interval collapses to zero width or leaves [0, 1] and covers far less than 95 %. Wilson's stays
    inside [0, 1], is never empty, and keeps close to its nominal coverage down to a handful of items, without
    the over-wide intervals of the exact Clopper-Pearson one.
    """
    if total <= 0:
        return 0.0, 1.0
    p = min(max(correct / total, 0.0), 1.0)
    z2 = z * z
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / (1 + z2 / total)
    low = 0.0 if p == 0.0 else max(0.0, centre - half)  # exact at the ends (no rounding residue)
    high = 1.0 if p == 1.0 else min(1.0, centre + half)
    return low, high


@dataclass
class TaskResult:
    """Accuracy of one task on one subset (a modality setting, a dataset part). Fractions in [0, 1]; `paper` is
    the paper's figure for this column as a fraction too (None where the paper has none)."""

    task: str
    subset: str
    correct: float
    total: int
    accuracy: float
    ci_low: float
    ci_high: float
    paper: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_counts(
        cls,
        task: str,
        subset: str,
        correct: float,
        total: int,
        paper: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> TaskResult:
        """Accuracy and its Wilson 95 % interval from counts."""
        if total <= 0:
            raise ValueError(f"{task}/{subset}: no items were evaluated")
        low, high = wilson_interval(correct, total)
        return cls(task, subset, correct, total, correct / total, low, high, paper, dict(extra or {}))


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def format_table(results: list[TaskResult]) -> str:
    """A plain-text table: accuracy with its 95 % interval and the paper's figure, in percent. Where a result
    carries the un-normalised accuracy (`extra["unnormalized"]`), it is shown beside it with Table 10's figure."""
    rows = [("task", "subset", "n", "accuracy % [95% CI]", "paper %", "un-normalised % [95% CI]", "paper %")]
    for result in results:
        unnormalized = result.extra.get("unnormalized")
        rows.append(
            (
                result.task,
                result.subset,
                str(result.total),
                f"{_percent(result.accuracy)} [{_percent(result.ci_low)}, {_percent(result.ci_high)}]",
                _percent(result.paper),
                (
                    f"{_percent(unnormalized['accuracy'])} "
                    f"[{_percent(unnormalized['ci_low'])}, {_percent(unnormalized['ci_high'])}]"
                    if unnormalized
                    else "–"
                ),
                _percent(unnormalized.get("paper")) if unnormalized else "–",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def print_table(results: list[TaskResult], file: TextIO | None = None) -> None:
    print(format_table(results), file=file or sys.stdout)


def default_output(task: str) -> Path:
    return Path(f"eval-{task}.json")


def write_json(path: Path, task: str, results: list[TaskResult], meta: dict[str, Any]) -> None:
    """`{"task", **meta, "results": [TaskResult as a dict, ...]}`, written whole (a temporary file, then renamed)."""
    document = {"task": task, **meta, "results": [asdict(result) for result in results]}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    partial.replace(path)
