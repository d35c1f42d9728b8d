"""`spiritserve eval TASK --url URL --data DIR`: run one of the paper's evaluations against a running server.

Registered by `spiritserve.cli`; this module imports only the standard library at import time (the tasks, httpx
and tqdm load when the command runs), so `spiritserve --help` stays cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spiritserve.evaluation.report import TaskResult
    from spiritserve.evaluation.tasks import EvalOptions, Task

TASK_NAMES = ("swuggy", "sblimp", "storycloze", "stsp", "mmlu")  # as registered in spiritserve.evaluation.tasks

logger = logging.getLogger(__name__)


def _csv_list(kind: Callable[[str], Any], flag: str) -> Callable[[str], tuple[Any, ...]]:
    def parse(value: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(part.strip()) for part in value.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}: a comma-separated list, got {value!r}") from None

    return parse


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register `eval` on the CLI's subparsers."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "eval",
        help="run a paper benchmark (swuggy, sblimp, storycloze, stsp, mmlu) against a running server: "
        "accuracy with a 95%% CI beside the paper's figure → table and JSON (docs/evaluation.md)",
        description="Score a benchmark's public dataset, read from --data in its published layout, on a running "
        "server's /v1/score (stsp: /v1/generate), and report accuracy with a 95%% Wilson interval and the paper's "
        "figure. Tasks: " + ", ".join(TASK_NAMES) + ". See docs/evaluation.md for each task's layout and prompts.",
    )
    parser.add_argument("task", metavar="TASK", help="one of: " + ", ".join(TASK_NAMES))
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default %(default)s)")
    parser.add_argument("--data", type=Path, help="the dataset folder, in its published layout (required)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("SPIRITSERVE_API_KEY"),
        help="sent as a Bearer token (default: env SPIRITSERVE_API_KEY)",
    )
    parser.add_argument("--limit", type=_positive, help="only the first N items of each subset (quick runs)")
    parser.add_argument("--concurrency", type=_positive, default=8, help="requests in flight (default 8)")
    parser.add_argument("--output", type=Path, help="JSON report path (default eval-TASK.json)")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling tasks (stsp; default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    parser.add_argument(
        "--variant",
        choices=["auto", "base", "expressive"],
        default="auto",
        help="which paper column to compare with (default auto: what GET /v1/server says is served)",
    )
    parser.add_argument(
        "--modality",
        type=_csv_list(str, "--modality"),
        help="settings to run, comma-separated, from text, speech, text-speech, speech-text "
        "(prompt-continuation; default: all the task has)",
    )
    parser.add_argument("--shots", type=_csv_list(int, "--shots"), help="shot counts (mmlu: 5; stsp: 0,3,6,9)")
    parser.add_argument("--runs", type=_positive, help="runs to average (stsp: 3)")
    parser.add_argument(
        "--split", choices=["dev", "test"], help="dataset split (swuggy/sblimp: default dev; stsp: default test)"
    )
    parser.add_argument(
        "--answers",
        choices=["letters", "texts"],
        default="letters",
        help="mmlu candidates: the letters A-D (default) or the answers' texts",
    )
    parser.add_argument("--subjects", type=_csv_list(str, "--subjects"), help="mmlu subjects (default: all found)")
    parser.add_argument(
        "--directions", help="stsp: directions, comma-separated from t2t, t2s, s2s, s2t (or use --modality)"
    )
    parser.add_argument(
        "--max-new-tokens",
        help="stsp: generation budget, N for every direction or DIRECTION=N,... (default: the paper's)",
    )
    parser.add_argument(
        "--text-tokenizer", type=Path, help="stsp: the text classifier's tokenizer folder, if not beside it"
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds per request (default 600)")
    parser.set_defaults(run=run_command)
    return parser


def _fail(message: str, code: int) -> None:
    print(f"spiritserve eval: {message}", file=sys.stderr)
    sys.exit(code)


def run_command(args: argparse.Namespace) -> None:
    from spiritserve.evaluation.client import EvalError
    from spiritserve.evaluation.report import default_output, print_table, write_json
    from spiritserve.evaluation.tasks import TASKS, DatasetError, EvalOptions

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    task = TASKS.get(args.task)
    if task is None:
        _fail(f"unknown task {args.task!r} (tasks: {', '.join(TASKS)})", 2)
        return
    if args.modality:
        unknown = [modality for modality in args.modality if modality not in task.modalities]
        if unknown:
            _fail(f"{task.name} has no --modality {','.join(unknown)} (it has {', '.join(task.modalities)})", 2)
    if args.data is None:
        _fail("--data DIR is required (the dataset folder, in its published layout)", 2)
    if not args.data.is_dir():
        _fail(f"missing dataset folder: {args.data}", 2)
    options = EvalOptions(
        limit=args.limit,
        seed=args.seed,
        progress=not args.no_progress,
        concurrency=args.concurrency,
        modalities=args.modality or None,
        shots=args.shots or None,
        runs=args.runs,
        split=args.split or "dev",
        answers=args.answers,
        subjects=args.subjects or None,
    )
    # The STSP task's own settings (spiritserve.evaluation.stsp.config_from_options), only where given.
    stsp_settings = {
        "directions": args.directions,
        "max_new_tokens": args.max_new_tokens,
        "text_tokenizer": str(args.text_tokenizer) if args.text_tokenizer else None,
        "stsp_split": args.split,
    }
    options.extra.update({key: value for key, value in stsp_settings.items() if value is not None})
    started = time.monotonic()
    try:
        results, meta = asyncio.run(_evaluate(task, args, options))
    except DatasetError as exc:
        _fail(str(exc), 2)
        return
    except EvalError as exc:  # the server unreachable, or answering an error
        _fail(str(exc), 1)
        return
    meta["seconds"] = round(time.monotonic() - started, 3)
    print_table(results)
    output = args.output or default_output(task.name)
    write_json(output, task.name, results, meta)
    print(f"wrote {output}")


async def _evaluate(
    task: Task, args: argparse.Namespace, options: EvalOptions
) -> tuple[list[TaskResult], dict[str, Any]]:
    from spiritserve.evaluation.client import EvalClient, EvalServerError

    async with EvalClient(args.url, args.api_key, args.concurrency, args.timeout) as client:
        try:
            server = await client.server_info()
        except EvalServerError as exc:
            if exc.status in (401, 403):
                raise
            logger.warning("GET /v1/server answered %d: the paper column is --variant's (or base)", exc.status)
            server = {}
        variant = args.variant if args.variant != "auto" else str(server.get("variant") or "base")
        if variant not in ("base", "expressive"):
            variant = "base"
        options.variant = variant
        if server.get("random_weights"):
            logger.warning("the server runs random weights (a tiny bundle): expect accuracies near chance")
        runner = task.load()
        results = await runner(client, args.data, options)
        meta: dict[str, Any] = {
            "url": client.url,
            "server": server,
            "variant": variant,
            "data": str(args.data),
            "options": {
                "limit": options.limit,
                "seed": options.seed,
                "concurrency": options.concurrency,
                "modalities": list(options.modalities) if options.modalities else None,
                "shots": list(options.shots) if options.shots else None,
                "runs": options.runs,
                "split": options.split,
                "answers": options.answers,
                "subjects": list(options.subjects) if options.subjects else None,
                **options.extra,
            },
            "requests": client.requests,
            "retries": client.retries,
        }
        return results, meta
