"""Accuracy, its Wilson interval, the table and the JSON report."""

import json
import math

import pytest

from spiritserve.evaluation.report import TaskResult, format_table, wilson_interval, write_json


@pytest.mark.parametrize(
    ("correct", "total", "low", "high"),
    [
        (5, 10, 0.2366, 0.7634),  # textbook values (Wilson 1927; Newcombe 1998, table I)
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (81, 263, 0.2553, 0.3662),
    ],
)
def test_wilson_interval_matches_published_values(correct: int, total: int, low: float, high: float) -> None:
    got = wilson_interval(correct, total)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_stays_inside_0_1_and_shrinks_with_n() -> None:
    for total in (1, 2, 5, 50, 5000):
        for correct in (0, total // 2, total):
            low, high = wilson_interval(correct, total)
            assert 0.0 <= low <= correct / total <= high <= 1.0
    assert (
        wilson_interval(500, 1000)[1] - wilson_interval(500, 1000)[0]
        < wilson_interval(5, 10)[1] - wilson_interval(5, 10)[0]
    )


def test_task_result_from_counts() -> None:
    result = TaskResult.from_counts("swuggy", "speech", 7, 10, paper=0.69)
    assert result.accuracy == pytest.approx(0.7)
    assert result.ci_low < 0.7 < result.ci_high
    with pytest.raises(ValueError, match="no items"):
        TaskResult.from_counts("swuggy", "speech", 0, 0)


def test_table_and_json(tmp_path) -> None:
    unnormalized = {"correct": 6, "accuracy": 0.6, "ci_low": 0.3, "ci_high": 0.85, "paper": 0.714}
    results = [
        TaskResult.from_counts("swuggy", "speech", 7, 10, 0.69, {"unnormalized": unnormalized}),
        TaskResult.from_counts("swuggy", "text", 3, 4, None),
    ]
    table = format_table(results)
    assert "70.0 [39.7, 89.2]" in table and "69.0" in table and "71.4" in table
    assert len(table.splitlines()) == 4
    path = tmp_path / "out" / "eval-swuggy.json"
    write_json(path, "swuggy", results, {"url": "http://x"})
    document = json.loads(path.read_text())
    assert document["task"] == "swuggy" and document["url"] == "http://x"
    assert document["results"][0]["total"] == 10 and math.isclose(document["results"][0]["accuracy"], 0.7)
    assert not list(path.parent.glob("*.partial"))
