"""`spiritserve soak`: a bounded run against a live server, above its capacity, then a disconnect storm.

What an operator wants to know before trusting a deployment under load: does overload get 429/503 with
Retry-After rather than errors or cut answers, does every admitted answer arrive whole, does the process
grow (memory, file descriptors), and how fast do abandoned requests give their engine slots back. This
prints those figures and writes them as JSON; it asserts nothing (tests/tools/test_soak.py checks the report).
httpx, psutil and soundfile are imported where used: the CLI imports this module to register the command.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import random
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

HOP = 640  # samples per vocoder frame at 16 kHz: a whole answer is a whole number of frames
SAMPLE_RATE = 16_000
_RUNNING = re.compile(r"^vllm:num_requests_running\{[^}]*\} (\S+)$", re.MULTILINE)
_IN_FLIGHT = re.compile(r"^spiritserve_in_flight_requests (\S+)$", re.MULTILINE)


@dataclass
class ProcessSample:
    """Resident memory and open file descriptors of the server process (and its children: vLLM's engine)."""

    at_s: float
    rss_bytes: int
    fds: int


@dataclass
class SoakReport:
    url: str
    seconds: float
    concurrency: int
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    whole_answers: int = 0
    truncated_answers: list[str] = field(default_factory=list)  # what was wrong with each, for the first few
    refusals_without_retry_after: int = 0
    transport_errors: int = 0
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    process: list[ProcessSample] = field(default_factory=list)
    rss_growth_percent: float | None = None
    fd_growth: int | None = None
    storm_clients: int = 0
    storm_slots_freed_after_s: float | None = None  # from the last hang-up until no engine request runs

    def summary(self) -> str:
        server_errors = sum(count for status, count in self.statuses.items() if status.startswith("5"))
        refused = self.statuses.get("429", 0) + self.statuses.get("503", 0)
        lines = [
            f"{self.requests} requests in {self.seconds:g} s at concurrency {self.concurrency}: "
            f"statuses {self.statuses}",
            f"  answers whole: {self.whole_answers}, truncated: {len(self.truncated_answers)}; "
            f"429/503: {refused} ({self.refusals_without_retry_after} without Retry-After); "
            f"5xx other than 503: {server_errors - self.statuses.get('503', 0)}; "
            f"transport errors: {self.transport_errors}",
            f"  latency p50 {self.latency_p50_s} s, p95 {self.latency_p95_s} s",
        ]
        if self.process:
            lines.append(
                f"  server RSS {self.process[0].rss_bytes / 2**20:.0f} → {self.process[-1].rss_bytes / 2**20:.0f} MiB "
                f"({self.rss_growth_percent:+.1f} %), open fds {self.process[0].fds} → {self.process[-1].fds}"
            )
        if self.storm_clients:
            lines.append(
                f"  disconnect storm: {self.storm_clients} clients hung up mid-answer; "
                f"engine slots free after {self.storm_slots_freed_after_s} s"
            )
        return "\n".join(lines)


def _sample_process(pid: int, started: float) -> ProcessSample:
    import psutil

    root = psutil.Process(pid)
    processes = [root, *root.children(recursive=True)]
    rss, fds = 0, 0
    for process in processes:
        try:
            rss += process.memory_info().rss
            fds += process.num_fds()
        except psutil.NoSuchProcess:  # a child that just ended
            continue
    return ProcessSample(round(time.monotonic() - started, 2), rss, fds)


def _check_wav(body: bytes, max_seconds: float) -> str | None:
    """Why a WAV answer is not whole (None: it is): a header that disagrees with the data, a length that is not
    whole vocoder frames, or more audio than the budget asked."""
    import soundfile

    try:
        audio, rate = soundfile.read(io.BytesIO(body), dtype="int16")
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        return f"unreadable WAV ({exc})"
    declared = int.from_bytes(body[40:44], "little") // 2
    if rate != SAMPLE_RATE or len(audio) != declared or len(audio) % HOP:
        return f"WAV of {len(audio)} samples at {rate} Hz, header says {declared}"
    if len(audio) > max_seconds * SAMPLE_RATE:
        return f"{len(audio) / SAMPLE_RATE:.2f} s of audio for a {max_seconds:g} s budget"
    return None


async def _over_capacity(
    http: httpx.AsyncClient, clip: bytes, report: SoakReport, deadline: float, latencies: list[float]
) -> None:
    """One client: ask for short speech continuations back to back until the deadline."""
    import httpx

    statuses: Counter[str] = Counter()
    while time.monotonic() < deadline:
        seconds = random.choice([0.5, 1.0, 2.0])
        started = time.monotonic()
        try:
            response = await http.post(
                "/v1/speech/continue",
                files={"audio": ("clip", clip)},
                data={"max_speech_seconds": str(seconds), "seed": str(random.randrange(1000))},
            )
        except httpx.TransportError:
            report.transport_errors += 1
            continue
        report.requests += 1
        statuses[str(response.status_code)] += 1
        if response.status_code == 200:
            latencies.append(time.monotonic() - started)
            problem = _check_wav(response.content, seconds)
            if problem is None:
                report.whole_answers += 1
            elif len(report.truncated_answers) < 20:
                report.truncated_answers.append(problem)
        elif response.status_code in (429, 503):
            report.refusals_without_retry_after += "retry-after" not in response.headers
            await asyncio.sleep(float(response.headers.get("retry-after", 1)) * random.random())
    for status, count in statuses.items():
        report.statuses[status] = report.statuses.get(status, 0) + count


async def _slots_in_use(http: httpx.AsyncClient) -> float:
    metrics = (await http.get("/metrics")).text
    running = sum(float(value) for value in _RUNNING.findall(metrics))
    in_flight = sum(float(value) for value in _IN_FLIGHT.findall(metrics))
    return running + in_flight


async def _disconnect_storm(http: httpx.AsyncClient, clip: bytes, clients: int, timeout_s: float) -> float | None:
    """`clients` streamed answers, each abandoned after its first bytes; seconds from the last hang-up until no
    engine request runs and nothing is in flight (None: not within timeout_s)."""

    async def hang_up_early() -> None:
        form = {"max_speech_seconds": "60", "stream": "true"}
        async with http.stream("POST", "/v1/speech/continue", files={"audio": ("clip", clip)}, data=form) as answer:
            received = 0
            async for chunk in answer.aiter_bytes():
                received += len(chunk)
                if received > 44:  # past the WAV header: the first audio arrived, hang up
                    break

    await asyncio.gather(*(hang_up_early() for _ in range(clients)), return_exceptions=True)
    hung_up = time.monotonic()
    while time.monotonic() - hung_up < timeout_s:
        if await _slots_in_use(http) == 0:
            return round(time.monotonic() - hung_up, 3)
        await asyncio.sleep(0.05)
    return None


async def soak(
    url: str, clip: bytes, seconds: float, concurrency: int, storm_clients: int, pid: int | None, api_key: str | None
) -> SoakReport:
    import httpx

    report = SoakReport(url=url, seconds=seconds, concurrency=concurrency, storm_clients=storm_clients)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency + storm_clients + 4)
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300, limits=limits) as http:
        sampling = True

        async def sample_process(pid: int) -> None:
            while sampling:
                report.process.append(_sample_process(pid, started))
                await asyncio.sleep(1)

        sampler = asyncio.create_task(sample_process(pid)) if pid else None
        latencies: list[float] = []
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(_over_capacity(http, clip, report, deadline, latencies) for _ in range(concurrency)))
        if storm_clients:
            report.storm_slots_freed_after_s = await _disconnect_storm(http, clip, storm_clients, timeout_s=60)
        sampling = False
        if sampler is not None and pid:
            await sampler
            report.process.append(_sample_process(pid, started))
    if latencies:
        latencies.sort()
        report.latency_p50_s = round(latencies[len(latencies) // 2], 3)
        report.latency_p95_s = round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))], 3)
    if report.process:
        first, last = report.process[0], report.process[-1]
        report.rss_growth_percent = round(100 * (last.rss_bytes - first.rss_bytes) / first.rss_bytes, 2)
        report.fd_growth = last.fds - first.fds
    return report


def run(args: argparse.Namespace) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    report = asyncio.run(
        soak(args.url.rstrip("/"), args.clip.read_bytes(), args.seconds, args.concurrency, args.storm, args.pid,
             args.api_key)
    )  # fmt: skip
    print(report.summary())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(asdict(report), indent=2) + "\n")
    print(f"wrote {args.out}")


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``soak`` on the CLI's subparsers."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "soak", help="load a running server above capacity, then hang up on it; report statuses, growth, slot release"
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default %(default)s)")
    parser.add_argument("--clip", type=Path, required=True, help="speech file to upload (any format the API takes)")
    parser.add_argument("--seconds", type=float, default=60, help="length of the overload phase (default 60)")
    parser.add_argument("--concurrency", type=int, default=32, help="clients sending back to back (default 32)")
    parser.add_argument("--storm", type=int, default=16, help="clients that hang up mid-answer afterwards (0: none)")
    parser.add_argument("--pid", type=int, help="the server's process id, to sample its RSS and open fds")
    parser.add_argument("--api-key", help="sent as a Bearer token")
    parser.add_argument("--out", type=Path, default=Path("soak.json"), help="JSON report (default soak.json)")
    parser.set_defaults(run=run)
    return parser
