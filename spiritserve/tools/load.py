"""`spiritserve bench`: a load generator against a running server — latency, throughput and gateway CPU per point.

Each point is one workload at one closed-loop concurrency (N clients, each sending its next request when its
last one ended) or at one open-loop rate (Poisson arrivals, each a new request whatever is outstanding). Per
point: requests completed, errors by kind, refusals (429/503 with Retry-After, which a closed-loop client
waits out before its next request; a realtime session refused with close code 1013 waits 1 s), latency
percentiles, real-time factor, audio seconds out per wall second, tokens per second, and from the server's
`/metrics` before and after the point: the gateway process's CPU per generated token, per second of audio out,
and the speech worker's seconds per stage (`spiritserve_stage_seconds_total`).

What each workload reports (times from the request's start; "audio" is the answer's speech):

- `continue`: POST /v1/speech/continue, a WAV answered whole. TTFA = end-to-end (the audio arrives whole);
  no token count in the answer (tokens/s comes from the server's counter).
- `continue-stream`: the same, `stream=true`, raw PCM: TTFA = first audio byte, the gaps between chunks as
  received, end-to-end; no token count in the answer.
- `generate`: POST /v1/generate on the clip's unit tokens (from /v1/tokenize, once), JSON answer: end-to-end
  (= TTFA), tokens and audio seconds from its `usage`; no TPOT (the answer arrives whole), but end-to-end per
  token.
- `realtime`: simulated talkers on WS /v1/realtime (manual turns: no VAD), each streaming the clip at 24 kHz in
  100 ms appends paced in real time (`--talk-speed`), then commit + response.create: TTFA = commit → first
  `response.output_audio.delta`, end-to-end = commit → `response.done`, tokens from its `usage` (so end-to-end
  per token; no TPOT: how many tokens the first audio chunk held is not said). A talker keeps its session and
  speaks again until the point's time is up.
- `text-stream` (not in the default list): POST /v1/chat/completions streamed in text (SSE) with the clip as
  `input_audio`: TTFT = first content delta, TPOT = (last delta − first delta) / (tokens − 1), tokens from
  the final usage chunk; no audio.

Real-time factor = end-to-end / audio seconds of that answer. Tokens per second and CPU per token use the
server's `spiritserve_generated_tokens_total`; where it did not move (streamed chat completions are not counted
there) the tokens the answers reported are used instead (`tokens_source`: "server" or "client").

httpx, websockets, numpy, soundfile, matplotlib and prometheus_client are imported where used: the CLI imports
this module at start-up to register the command.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import logging
import math
import os
import platform
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

SCHEMA = "spiritserve.bench/1"
WORKLOADS = ("continue", "continue-stream", "generate", "realtime", "text-stream")
DEFAULT_WORKLOADS = "continue,continue-stream,generate,realtime"
# The committed prompt (about 9 s of speech); the installed package has no tests/, so there --clip is needed.
DEFAULT_CLIP = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "bench_9s_16k_mono.flac"
MODEL_RATE = 16_000  # PCM answers of the REST routes
REALTIME_RATE = 24_000  # audio/pcm both ways on /v1/realtime
REALTIME_CHUNK_S = 0.1
REALTIME_REFUSED_WAIT_S = 1.0  # a refused websocket gets no Retry-After
ERROR_PAUSE_S = 0.5  # a closed-loop client waits this long after an error (no hot loop on a dead server)
TRY_AGAIN_LATER = 1013
STAGE_COUNTER = "spiritserve_stage_seconds_total"  # the speech worker's seconds, by `stage` label
log = logging.getLogger(__name__)


# --- one request ---------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One request (or realtime turn): its outcome and timings in seconds from its start."""

    error: str | None = None  # the kind, e.g. "http_500", "timeout", "ws_closed_1011"; None with refused too
    refused: bool = False
    retry_after_s: float = 0.0
    e2e_s: float | None = None
    ttfa_s: float | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None  # decode time per token after the first (text-stream)
    tokens: int | None = None
    audio_s: float = 0.0
    chunk_gaps_s: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.refused


def _refusal(headers: Any) -> Sample:
    """A 429/503 (or a handshake refused with one): wait Retry-After seconds (1 when it is absent)."""
    try:
        wait = float(headers.get("retry-after", 1))
    except ValueError:  # an HTTP date: not what this server sends
        wait = 1.0
    return Sample(refused=True, retry_after_s=max(0.0, wait))


@dataclass
class Prompt:
    """The clip in the forms the workloads send it."""

    path: Path
    data: bytes
    seconds: float
    tokens: str  # the LM's unit-token string (/v1/tokenize)
    pcm24: list[bytes]  # 100 ms chunks of PCM16 at 24 kHz, for the realtime talkers


@dataclass
class Context:
    """What every request shares: the client, the prompt and the sampling settings."""

    args: argparse.Namespace
    http: httpx.AsyncClient
    prompt: Prompt
    headers: dict[str, str]
    counter: int = 0

    def next_seed(self) -> int:
        """Seeds vary by request (same run, same seeds), so answers differ as real traffic's would."""
        self.counter += 1
        return int(self.args.seed) + self.counter

    def sampling(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "max_new_tokens": self.args.max_new_tokens,
            "temperature": self.args.temperature,
            "top_p": self.args.top_p,
            "seed": self.next_seed(),
        }
        if self.args.max_speech_seconds is not None:
            fields["max_speech_seconds"] = self.args.max_speech_seconds
        return fields

    @property
    def ws_url(self) -> str:
        base = str(self.args.url).rstrip("/")
        return "ws" + base.removeprefix("http") + "/v1/realtime"


def _http_error(response: httpx.Response) -> Sample:
    if response.status_code in (429, 503):
        return _refusal(response.headers)
    return Sample(error=f"http_{response.status_code}")


def _audio_from_wav(body: bytes) -> float:
    import soundfile

    info = soundfile.info(io.BytesIO(body))
    return float(info.frames / info.samplerate)


class Talker:
    """One simulated client. `turn` sends one request (a realtime talker: one spoken turn) and never raises."""

    def __init__(self, ctx: Context, workload: str, index: int) -> None:
        self.ctx, self.workload, self.index = ctx, workload, index
        self.ws: Any = None
        self._turns = 0

    async def turn(self) -> Sample:
        import httpx
        from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

        requests: dict[str, Callable[[], Awaitable[Sample]]] = {
            "continue": self._continue,
            "continue-stream": self._continue_stream,
            "generate": self._generate,
            "realtime": self._realtime,
            "text-stream": self._text_stream,
        }
        timeout = float(self.ctx.args.timeout)
        if self.workload == "realtime":  # the clip is streamed in (about) real time before the timed part
            speed = float(self.ctx.args.talk_speed)
            timeout += self.ctx.prompt.seconds / speed if speed > 0 else 0
        try:
            async with asyncio.timeout(timeout):
                return await requests[self.workload]()
        except TimeoutError:
            await self.close()
            return Sample(error="timeout")
        except InvalidStatus as exc:
            self.ws = None
            status = exc.response.status_code
            return _refusal(exc.response.headers) if status in (429, 503) else Sample(error=f"http_{status}")
        except ConnectionClosed as exc:
            self.ws = None
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            if code == TRY_AGAIN_LATER:
                return Sample(refused=True, retry_after_s=REALTIME_REFUSED_WAIT_S)
            return Sample(error=f"ws_closed_{code}")
        except (httpx.TransportError, WebSocketException, OSError) as exc:
            await self.close()
            return Sample(error=f"transport_{type(exc).__name__}")
        except (ValueError, KeyError, TypeError) as exc:  # an answer not shaped as documented
            await self.close()
            return Sample(error=f"bad_answer_{type(exc).__name__}")

    async def close(self) -> None:
        ws, self.ws = self.ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)

    # --- REST ---

    def _form(self, **extra: str) -> dict[str, str]:
        return {key: str(value) for key, value in {**self.ctx.sampling(), **extra}.items()}

    def _upload(self) -> dict[str, tuple[str, bytes]]:
        return {"audio": (self.ctx.prompt.path.name, self.ctx.prompt.data)}

    async def _continue(self) -> Sample:
        started = time.perf_counter()
        response = await self.ctx.http.post(
            "/v1/speech/continue", files=self._upload(), data=self._form(response_format="wav")
        )
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            return _http_error(response)
        return Sample(e2e_s=elapsed, ttfa_s=elapsed, audio_s=_audio_from_wav(response.content))

    async def _continue_stream(self) -> Sample:
        started = time.perf_counter()
        form = self._form(response_format="pcm", stream="true")
        async with self.ctx.http.stream("POST", "/v1/speech/continue", files=self._upload(), data=form) as response:
            if response.status_code != 200:
                await response.aread()
                return _http_error(response)
            arrivals: list[float] = []
            received = 0
            async for chunk in response.aiter_raw():
                if chunk:
                    arrivals.append(time.perf_counter() - started)
                    received += len(chunk)
        elapsed = time.perf_counter() - started
        if not arrivals:
            return Sample(error="no_audio")
        gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:])]
        return Sample(e2e_s=elapsed, ttfa_s=arrivals[0], audio_s=received / 2 / MODEL_RATE, chunk_gaps_s=gaps)

    async def _generate(self) -> Sample:
        body = {
            "inputs": [{"type": "speech", "tokens": self.ctx.prompt.tokens}],
            "output_modality": "speech",
            "response_format": "json",
            "stream": False,
            **self.ctx.sampling(),
        }
        started = time.perf_counter()
        response = await self.ctx.http.post("/v1/generate", json=body)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            return _http_error(response)
        usage = response.json()["usage"]
        tokens = int(usage["generated_tokens"])
        return Sample(e2e_s=elapsed, ttfa_s=elapsed, tokens=tokens, audio_s=float(usage["audio_seconds"]))

    async def _text_stream(self) -> Sample:
        sampling = self.ctx.sampling()
        audio = {"data": base64.b64encode(self.ctx.prompt.data).decode(), "format": self.ctx.prompt.path.suffix[1:]}
        body = {
            "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": audio}]}],
            "modalities": ["text"],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_completion_tokens": sampling["max_new_tokens"],
            "temperature": sampling["temperature"],
            "top_p": sampling["top_p"],
            "seed": sampling["seed"],
        }
        started = time.perf_counter()
        deltas: list[float] = []
        tokens: int | None = None
        async with self.ctx.http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return _http_error(response)
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[len("data: ") :])
                if "error" in event:
                    return Sample(error=f"stream_error_{event['error'].get('type', 'unknown')}")
                if event.get("usage"):
                    tokens = int(event["usage"]["completion_tokens"])
                if any(choice["delta"].get("content") for choice in event.get("choices", [])):
                    deltas.append(time.perf_counter() - started)
        elapsed = time.perf_counter() - started
        if tokens is None:
            return Sample(error="no_usage")
        tpot = (deltas[-1] - deltas[0]) / (tokens - 1) if deltas and tokens > 1 else None
        return Sample(e2e_s=elapsed, ttft_s=deltas[0] if deltas else None, tpot_s=tpot, tokens=tokens)

    # --- realtime ---

    async def _send(self, event: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(event))

    async def _receive(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(await self.ws.recv())
        return event

    async def _connect(self) -> None:
        from websockets.asyncio.client import connect

        args = self.ctx.args
        self.ws = await connect(self.ctx.ws_url, additional_headers=self.ctx.headers, max_size=2**24,
                                open_timeout=args.timeout)  # fmt: skip
        pcm = {"type": "audio/pcm", "rate": REALTIME_RATE}
        session: dict[str, Any] = {
            "type": "realtime",
            "output_modalities": ["audio"],
            "audio": {"input": {"format": pcm, "turn_detection": None}, "output": {"format": pcm}},
            "max_output_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "seed": self.ctx.next_seed(),
        }
        if args.max_speech_seconds is not None:
            session["max_response_seconds"] = args.max_speech_seconds
        await self._send({"type": "session.update", "session": session, "event_id": "configure"})
        while (event := await self._receive())["type"] != "session.updated":
            if event["type"] == "error":
                raise ValueError(f"session.update refused: {event['error'].get('message')}")

    async def _realtime(self) -> Sample:
        if self.ws is None:
            await self._connect()
        self._turns += 1
        commit_id, create_id = f"commit-{self._turns}", f"create-{self._turns}"
        speed = float(self.ctx.args.talk_speed)
        talk_started = time.perf_counter()
        for index, chunk in enumerate(self.ctx.prompt.pcm24):
            if speed > 0:
                await asyncio.sleep(max(0.0, talk_started + index * REALTIME_CHUNK_S / speed - time.perf_counter()))
            await self._send({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})
        started = time.perf_counter()
        await self._send({"type": "input_audio_buffer.commit", "event_id": commit_id})
        await self._send({"type": "response.create", "event_id": create_id})
        first: float | None = None
        received, user_item, error = 0, None, None
        while True:
            event = await self._receive()
            kind = event["type"]
            if kind == "response.output_audio.delta":
                first = first if first is not None else time.perf_counter() - started
                received += len(base64.b64decode(event["delta"]))
            elif kind == "input_audio_buffer.committed":
                user_item = event["item_id"]
            elif kind == "error":
                error = error or f"realtime_{event['error'].get('code') or event['error'].get('type')}"
                if event["error"].get("event_id") == create_id:  # no response will come
                    return Sample(error=error)
            elif kind == "response.done":
                break
        elapsed = time.perf_counter() - started
        response = event["response"]
        if response["status"] != "completed":
            error = error or f"response_{response['status']}"
        answer_item = response["output"][0]["id"] if response.get("output") else None
        if self.ctx.args.realtime_context == "reset":
            await self._forget(item for item in (user_item, answer_item) if item)
        if error:
            return Sample(error=error)
        tokens = int(response["usage"]["output_tokens"])
        return Sample(e2e_s=elapsed, ttfa_s=first, tokens=tokens, audio_s=received / 2 / REALTIME_RATE)

    async def _forget(self, items: Any) -> None:
        """Delete this turn's items, so every turn's prompt is the clip alone (`--realtime-context reset`)."""
        pending = set()
        for item in items:
            pending.add(item)
            await self._send({"type": "conversation.item.delete", "item_id": item})
        while pending:
            event = await self._receive()
            if event["type"] == "conversation.item.deleted":
                pending.discard(event["item_id"])
            elif event["type"] == "error":
                raise ValueError(f"conversation.item.delete failed: {event['error'].get('message')}")


# --- one point -----------------------------------------------------------------------------------------------


def percentiles(values: Sequence[float], qs: Sequence[int] = (50, 90, 99)) -> dict[str, float] | None:
    """Linear-interpolated percentiles (numpy's default method), rounded; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    result = {}
    for q in qs:
        position = (len(ordered) - 1) * q / 100
        low = math.floor(position)
        high = min(low + 1, len(ordered) - 1)
        result[f"p{q}"] = round(ordered[low] + (ordered[high] - ordered[low]) * (position - low), 6)
    return result


@dataclass
class ServerCounters:
    """The counters of one `/metrics` scrape that a point's CPU figures are made of (None: not served)."""

    cpu_s: float | None
    tokens: float | None
    stage_s: dict[str, float] | None


@dataclass
class PointResult:
    workload: str
    mode: str  # "closed" (a fixed number of clients) or "open" (Poisson arrivals)
    concurrency: int | None
    rate: float | None  # requests/s asked (open loop)
    seconds: float  # the point's sending time asked
    wall_s: float  # until the last request ended
    requests: int  # completed without error
    errors: dict[str, int]
    refusals: int  # 429/503 (REST) and 1013 closes (realtime)
    dropped: int = 0  # open loop: arrivals not sent because too many were outstanding
    arrivals: int | None = None  # open loop: requests sent
    achieved_rate: float | None = None  # open loop: arrivals sent per second of sending time
    ttfa_s: dict[str, float] | None = None
    ttft_s: dict[str, float] | None = None
    tpot_s: dict[str, float] | None = None
    e2e_s: dict[str, float] | None = None
    e2e_per_token_s: dict[str, float] | None = None  # where the answers say their tokens
    chunk_gap_s: dict[str, float] | None = None
    rtf: dict[str, float] | None = None
    audio_s: float = 0.0  # seconds of audio received
    audio_s_per_s: float = 0.0  # audio seconds out per wall second
    client_tokens: int | None = None  # tokens the answers reported (None: the workload's answers do not say)
    server_tokens: float | None = None  # Δ spiritserve_generated_tokens_total (None: /metrics unreadable)
    tokens: float | None = None  # server_tokens, or client_tokens where the server's counter did not move
    tokens_source: str | None = None  # "server" or "client"
    tokens_per_s: float | None = None
    gateway_cpu_s: float | None = None  # Δ process_cpu_seconds_total of the gateway process
    cpu_us_per_token: float | None = None
    cpu_s_per_audio_s: float | None = None
    stage_s: dict[str, float] | None = None  # Δ STAGE_COUNTER by stage
    stage_us_per_token: dict[str, float] | None = None

    @property
    def x(self) -> float:
        value = self.concurrency if self.mode == "closed" else self.rate
        return float(value or 0)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        def rounded(value: Any) -> Any:
            if isinstance(value, float):
                return round(value, 6)
            return {key: rounded(item) for key, item in value.items()} if isinstance(value, dict) else value

        return {key: rounded(value) for key, value in asdict(self).items()}

    @classmethod
    def from_samples(
        cls, workload: str, mode: str, x: float, seconds: float, wall_s: float, samples: list[Sample],
        before: ServerCounters, after: ServerCounters, dropped: int = 0,
    ) -> PointResult:  # fmt: skip
        done = [sample for sample in samples if sample.ok]
        audio_s = sum(sample.audio_s for sample in done)
        point = cls(
            workload=workload, mode=mode, concurrency=int(x) if mode == "closed" else None,
            rate=x if mode == "open" else None, seconds=seconds, wall_s=wall_s, requests=len(done),
            errors=dict(Counter(sample.error for sample in samples if sample.error)),
            refusals=sum(sample.refused for sample in samples), dropped=dropped,
            ttfa_s=percentiles([s.ttfa_s for s in done if s.ttfa_s is not None]),
            ttft_s=percentiles([s.ttft_s for s in done if s.ttft_s is not None]),
            tpot_s=percentiles([s.tpot_s for s in done if s.tpot_s is not None]),
            e2e_s=percentiles([s.e2e_s for s in done if s.e2e_s is not None]),
            e2e_per_token_s=percentiles([s.e2e_s / s.tokens for s in done if s.e2e_s is not None and s.tokens]),
            chunk_gap_s=percentiles([gap for s in done for gap in s.chunk_gaps_s]),
            rtf=percentiles([s.e2e_s / s.audio_s for s in done if s.e2e_s is not None and s.audio_s > 0], (50, 90)),
            audio_s=audio_s, audio_s_per_s=audio_s / wall_s if wall_s > 0 else 0.0,
        )  # fmt: skip
        if mode == "open":
            point.arrivals = len(samples)
            point.achieved_rate = len(samples) / seconds
        if done and all(sample.tokens is not None for sample in done):
            point.client_tokens = sum(sample.tokens or 0 for sample in done)
        if before.tokens is not None and after.tokens is not None:
            point.server_tokens = point.tokens = after.tokens - before.tokens
            point.tokens_source = "server"
        if not point.tokens and point.client_tokens:
            point.tokens, point.tokens_source = float(point.client_tokens), "client"
        if point.tokens is not None and wall_s > 0:
            point.tokens_per_s = point.tokens / wall_s
        if before.cpu_s is not None and after.cpu_s is not None:
            point.gateway_cpu_s = after.cpu_s - before.cpu_s
            if point.tokens:
                point.cpu_us_per_token = 1e6 * point.gateway_cpu_s / point.tokens
            if audio_s > 0:
                point.cpu_s_per_audio_s = point.gateway_cpu_s / audio_s
        if before.stage_s is not None and after.stage_s is not None:
            stage_s = {stage: after.stage_s[stage] - before.stage_s.get(stage, 0.0) for stage in sorted(after.stage_s)}
            point.stage_s = stage_s
            if point.tokens:
                tokens = point.tokens
                point.stage_us_per_token = {stage: 1e6 * value / tokens for stage, value in stage_s.items()}
        return point


async def read_counters(ctx: Context) -> ServerCounters:
    """The gateway's CPU seconds, generated tokens (all modalities) and per-stage seconds from `/metrics`."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        response = await ctx.http.get(ctx.args.metrics_url or "/metrics")
    except httpx.TransportError as exc:
        log.warning("cannot read %s: %s", ctx.args.metrics_url or "/metrics", exc)
        return ServerCounters(None, None, None)
    if response.status_code != 200:
        log.warning("/metrics answered %d: no CPU figures", response.status_code)
        return ServerCounters(None, None, None)
    cpu: float | None = None
    tokens: float | None = None
    stages: dict[str, float] | None = None  # stage → seconds
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "process_cpu_seconds_total":
                cpu = (cpu or 0.0) + sample.value
            elif sample.name == "spiritserve_generated_tokens_total":
                tokens = (tokens or 0.0) + sample.value
            elif sample.name == STAGE_COUNTER:
                stages = stages or {}
                stage = sample.labels.get("stage", "")
                stages[stage] = stages.get(stage, 0.0) + sample.value
    return ServerCounters(cpu, tokens, stages)


async def _closed_loop(ctx: Context, workload: str, concurrency: int, seconds: float) -> list[Sample]:
    samples: list[Sample] = []
    deadline = time.monotonic() + seconds

    async def client(index: int) -> None:
        talker = Talker(ctx, workload, index)
        try:
            while time.monotonic() < deadline:
                sample = await talker.turn()
                samples.append(sample)
                if sample.refused:  # honour Retry-After before this client's next request
                    await asyncio.sleep(min(sample.retry_after_s, max(0.0, deadline - time.monotonic())))
                elif sample.error:
                    await asyncio.sleep(ERROR_PAUSE_S)
        finally:
            await talker.close()

    await asyncio.gather(*(client(index) for index in range(concurrency)))
    return samples


async def _open_loop(ctx: Context, workload: str, rate: float, seconds: float, cap: int) -> tuple[list[Sample], int]:
    """Poisson arrivals at `rate` for `seconds`, each a new client sending one request; arrivals while `cap`
    requests are outstanding are dropped (counted). Returns the samples and the number dropped."""
    rng = random.Random(int(ctx.args.seed) + int(rate * 1000))
    samples: list[Sample] = []
    outstanding: set[asyncio.Task[None]] = set()
    dropped = 0

    async def one(index: int) -> None:
        talker = Talker(ctx, workload, index)
        try:
            samples.append(await talker.turn())
        finally:
            await talker.close()

    started = time.monotonic()
    at = 0.0
    index = 0
    while True:
        at += rng.expovariate(rate)
        if at >= seconds:
            break
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        if len(outstanding) >= cap:
            dropped += 1
            continue
        index += 1
        task = asyncio.create_task(one(index))
        outstanding.add(task)
        task.add_done_callback(outstanding.discard)
    if outstanding:
        await asyncio.gather(*outstanding)
    return samples, dropped


async def run_point(ctx: Context, workload: str, mode: str, x: float, cap: int) -> PointResult:
    seconds = float(ctx.args.seconds)
    before = await read_counters(ctx)
    started = time.monotonic()
    dropped = 0
    if mode == "closed":
        samples = await _closed_loop(ctx, workload, int(x), seconds)
    else:
        samples, dropped = await _open_loop(ctx, workload, x, seconds, cap)
    wall_s = time.monotonic() - started
    after = await read_counters(ctx)
    return PointResult.from_samples(workload, mode, x, seconds, wall_s, samples, before, after, dropped)


# --- the run -------------------------------------------------------------------------------------------------


def _realtime_chunks(data: bytes) -> list[bytes]:
    """The clip as PCM16 at 24 kHz (the project's resampler), in 100 ms chunks."""
    import numpy as np

    from spiritserve.audio import SAMPLE_RATE, decode_audio
    from spiritserve.resample import resample

    audio = resample(decode_audio(data, max_seconds=3600), SAMPLE_RATE, REALTIME_RATE)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = int(REALTIME_CHUNK_S * REALTIME_RATE) * 2
    return [pcm[start : start + step] for start in range(0, len(pcm), step)]


async def _prepare(ctx_args: argparse.Namespace, http: httpx.AsyncClient) -> tuple[Prompt, dict[str, Any]]:
    """Tokenize the clip once (the `generate` prompt) and ask what is served."""
    path: Path = ctx_args.clip
    data = path.read_bytes()
    described = await http.get("/v1/server")
    if described.status_code != 200:
        sys.exit(f"{ctx_args.url}/v1/server answered {described.status_code}: {described.text[:200]}")
    tokenized = await http.post("/v1/tokenize", files={"audio": (path.name, data)})
    if tokenized.status_code != 200:
        sys.exit(f"/v1/tokenize refused the clip: {tokenized.status_code} {tokenized.text[:200]}")
    body = tokenized.json()
    chunks = await asyncio.to_thread(_realtime_chunks, data) if "realtime" in ctx_args.workloads else []
    prompt = Prompt(path, data, float(body["duration_seconds"]), body["tokens"], chunks)
    return prompt, described.json()


async def _warm_up(ctx: Context, workloads: list[str]) -> dict[str, float]:
    """One request per workload before the first point (not counted); a failure stops the run. Returns each
    request's whole time (a realtime turn's talking included)."""
    latencies: dict[str, float] = {}
    for workload in workloads:
        talker = Talker(ctx, workload, 0)
        try:
            for _ in range(10):
                started = time.monotonic()
                sample = await talker.turn()
                if not sample.refused:
                    break
                await asyncio.sleep(sample.retry_after_s)
        finally:
            await talker.close()
        if not sample.ok:
            sys.exit(f"warm-up request for {workload} failed: {sample.error or 'refused'}")
        latencies[workload] = round(time.monotonic() - started, 3)
    return latencies


async def bench(
    args: argparse.Namespace,
) -> tuple[dict[str, Any], list[PointResult], list[dict[str, Any]] | None]:
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    mode = "closed" if args.rate is None else "open"
    xs: list[float] = list(args.concurrency if mode == "closed" else args.rate)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)  # as many as the clients
    timeout = httpx.Timeout(args.timeout, connect=min(30.0, args.timeout))
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=timeout, limits=limits) as http:
        prompt, server = await _prepare(args, http)
        ctx = Context(args, http, prompt, headers)
        warm_up = await _warm_up(ctx, args.workloads)
        points = []
        for workload in args.workloads:
            for x in xs:
                cap = args.max_outstanding or _default_cap(x, warm_up[workload])
                label = f"concurrency {int(x)}" if mode == "closed" else f"rate {x:g}/s"
                print(f"{workload} at {label} for {args.seconds:g} s ...", file=sys.stderr, flush=True)
                points.append(await run_point(ctx, workload, mode, x, cap))
        gateway = await _gateway_cost(args, http, server, prompt.tokens) if args.gateway_cost else None
    meta = {
        "url": args.url,
        "server": server,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "args": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(args).items()
            if key not in ("run", "api_key")
        },
        "mode": mode,
        "clip": {"path": str(prompt.path), "seconds": prompt.seconds, "tokens": prompt.tokens.count("[")},
        "warm_up_s": warm_up,
    }
    return meta, points, gateway


async def _gateway_cost(
    args: argparse.Namespace, http: httpx.AsyncClient, server: dict[str, Any], unit_tokens: str
) -> list[dict[str, Any]]:
    """The same token workload through the server and straight into an engine of this process, alternated
    (spiritserve.tools.gateway_cost), for speech output (vocoder included) and text output (the gateway alone)."""
    from spiritserve.tokens import OutputModality
    from spiritserve.tools.gateway_cost import measure_gateway_cost, open_served_model

    print(f"gateway cost at concurrency {args.gateway_cost} ...", file=sys.stderr, flush=True)
    model = open_served_model(Path(server["checkpoint_root"]), server["variant"])
    try:
        return [
            (
                await measure_gateway_cost(
                    http, model, unit_tokens, output, args.gateway_cost, args.max_new_tokens, args.temperature,
                    args.top_p, args.gateway_rounds, args.timeout,
                )
            ).to_dict()
            for output in (OutputModality.SPEECH, OutputModality.TEXT)
        ]  # fmt: skip
    finally:
        await model.engine.close()


CONTINUATION_WORKLOADS = ("continue", "continue-stream", "generate")  # the baseline's workload, served


def _baseline(args: argparse.Namespace, server: dict[str, Any], points: Sequence[PointResult]) -> dict[str, Any]:
    """The reference's way of serving (spiritserve.tools.baseline) on the server's checkpoint, in this process,
    after the points (the server is idle then); each speech-continuation point's audio seconds per wall second
    over the baseline's."""
    from spiritserve.tools.baseline import run_baseline

    print(f"reference-style baseline, {args.baseline} requests one at a time ...", file=sys.stderr, flush=True)
    result = run_baseline(
        Path(server["checkpoint_root"]), server["variant"], args.clip, args.baseline, args.max_new_tokens,
        args.temperature, args.top_p, args.seed,
    ).to_dict()  # fmt: skip
    served = [point for point in points if point.workload in CONTINUATION_WORKLOADS]
    result["speedup"] = [
        {"workload": point.workload, "x": point.x, "audio_s_per_s": round(point.audio_s_per_s, 3),
         "speedup": round(point.audio_s_per_s / result["audio_per_wall_s"], 3)}
        for point in served
    ]  # fmt: skip
    return result


def _default_cap(rate: float, warm_up_s: float) -> int:
    """Open loop: four times the requests expected outstanding at this rate (warm-up time × rate), at least 16."""
    return max(16, math.ceil(4 * rate * warm_up_s))


# --- report --------------------------------------------------------------------------------------------------


def _fmt(value: float | None, scale: float = 1.0, digits: int = 3) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _p(stats: dict[str, float] | None, key: str) -> float | None:
    return stats.get(key) if stats else None


def format_table(points: Sequence[PointResult]) -> str:
    """One fixed-width row per point."""
    columns = [
        ("workload", 16), ("conc/rate", 9), ("req", 5), ("err", 4), ("refused", 7), ("ttfa50", 7), ("ttfa99", 7),
        ("ttft50", 7), ("tpot50ms", 8), ("e2e50", 7), ("e2e99", 7), ("rtf50", 6), ("audio/s", 8), ("tok/s", 8),
        ("cpu_us/tok", 10),
    ]  # fmt: skip
    lines = [" ".join(f"{name:>{width}}" if i else f"{name:<{width}}" for i, (name, width) in enumerate(columns))]
    for point in points:
        x = str(point.concurrency) if point.mode == "closed" else f"{point.rate:g}/s"
        cells = [
            point.workload, x, str(point.requests), str(point.error_count), str(point.refusals),
            _fmt(_p(point.ttfa_s, "p50")), _fmt(_p(point.ttfa_s, "p99")), _fmt(_p(point.ttft_s, "p50")),
            _fmt(_p(point.tpot_s, "p50"), 1000, 2), _fmt(_p(point.e2e_s, "p50")), _fmt(_p(point.e2e_s, "p99")),
            _fmt(_p(point.rtf, "p50"), digits=2),
            _fmt(point.audio_s_per_s, digits=2), _fmt(point.tokens_per_s, digits=1),
            _fmt(point.cpu_us_per_token, digits=0),
        ]  # fmt: skip
        lines.append(" ".join(f"{cell:>{width}}" if i else f"{cell:<{width}}"
                              for i, (cell, (_, width)) in enumerate(zip(cells, columns))))  # fmt: skip
    return "\n".join(lines)


def format_comparisons(baseline: dict[str, Any] | None, gateway: list[dict[str, Any]] | None) -> str:
    lines = []
    if baseline is not None:
        lines.append(
            f"reference-style baseline: {baseline['audio_per_wall_s']:.2f} audio s per wall s, "
            f"{baseline['tokens_per_s']:.1f} tok/s, latency p50 {baseline['latency_s']['p50']:.2f} s"
        )
        lines += [f"  speedup, {s['workload']} at {s['x']:g}: {s['speedup']:.2f}x" for s in baseline["speedup"]]
    for cost in gateway or []:
        lines.append(
            f"gateway, {cost['output_modality']} output at {cost['concurrency']}: server "
            f"{cost['server_tokens_per_s']:.0f} tok/s, direct engine {cost['direct_tokens_per_s']:.0f} tok/s, "
            f"ratio {cost['ratio']:.3f}"
        )
    return "\n".join(lines)


def write_json(
    path: Path,
    meta: dict[str, Any],
    points: Sequence[PointResult],
    baseline: dict[str, Any] | None,
    gateway: list[dict[str, Any]] | None,
) -> None:
    """`spiritserve.bench/1`: `run` (metadata), `points`, and where asked `baseline` (the reference-style run and
    each continuation point's speedup over it) and `gateway` (server vs direct engine tokens/s)."""
    document: dict[str, Any] = {"schema": SCHEMA, "run": meta, "points": [point.to_dict() for point in points]}
    document |= {"baseline": baseline, "gateway": gateway}
    path.write_text(json.dumps(document, indent=2) + "\n")


def plot(path: Path, points: Sequence[PointResult], title: str = "") -> None:
    """Four panels against concurrency (or rate), one line per workload: audio seconds out per wall second, TTFA
    p50 (solid) and p99 (dashed), tokens/s, gateway CPU µs per generated token."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    closed = all(point.mode == "closed" for point in points)
    xlabel = "concurrent clients" if closed else "offered rate (requests/s)"
    figure, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    panels: list[tuple[Any, str, Callable[[PointResult], list[float | None]]]] = [
        (axes[0][0], "audio s out per wall s", lambda p: [p.audio_s_per_s]),
        (axes[0][1], "time to first audio (text: token), s: p50 solid, p99 dashed",
         lambda p: [_p(p.ttfa_s or p.ttft_s, "p50"), _p(p.ttfa_s or p.ttft_s, "p99")]),
        (axes[1][0], "generated tokens/s", lambda p: [p.tokens_per_s]),
        (axes[1][1], "gateway CPU µs per generated token", lambda p: [p.cpu_us_per_token]),
    ]  # fmt: skip
    workloads = list(dict.fromkeys(point.workload for point in points))
    xs = sorted({point.x for point in points})
    for axis, label, values in panels:
        for index, workload in enumerate(workloads):
            mine = [point for point in points if point.workload == workload]
            series = list(zip(*[values(point) for point in mine]))
            for number, ys in enumerate(series):
                pairs = [(p.x, y) for p, y in zip(mine, ys) if y is not None]
                if pairs:
                    axis.plot(*zip(*pairs), marker="o", color=f"C{index}", linestyle="--" if number else "-",
                              label=None if number else workload)  # fmt: skip
        axis.set_title(label)
        axis.set_xlabel(xlabel)
        axis.grid(True, alpha=0.3)
        if len(xs) > 2 and xs[0] > 0 and xs[-1] / xs[0] >= 4:
            axis.set_xscale("log", base=2)
        axis.set_xticks(xs, [f"{x:g}" for x in xs])
        axis.set_ylim(bottom=0)
    axes[0][0].legend()
    if title:
        figure.suptitle(title)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def run(args: argparse.Namespace) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    args.url = args.url.rstrip("/")
    if args.clip is None:
        sys.exit(f"spiritserve bench: give --clip (the default {DEFAULT_CLIP} is not here)")
    meta, points, gateway = asyncio.run(bench(args))
    baseline = _baseline(args, meta["server"], points) if args.baseline else None
    print(format_table(points))
    print(format_comparisons(baseline, gateway))
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "bench.json", meta, points, baseline, gateway)
    server = meta["server"]
    title = f"{server.get('model')} ({server.get('variant')}) at {args.url}"
    if server.get("random_weights"):
        title += ": random weights"
    plot(args.out / "bench.png", points, title)
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.png'}")


def _list_of(kind: Callable[[str], Any], name: str) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        try:
            values = [kind(item) for item in text.split(",") if item.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{name}: a comma-separated list, got {text!r}") from exc
        if not values or any(value <= 0 for value in values):
            raise argparse.ArgumentTypeError(f"{name}: positive values, got {text!r}")
        return values

    return parse


def _workloads(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)}")
    return list(dict.fromkeys(names))


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``bench`` on the CLI's subparsers."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "bench",
        help="load a running server (closed-loop concurrency or open-loop Poisson rate): latency, throughput, "
        "gateway CPU per token → table, JSON, PNG",
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default %(default)s)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("SPIRITSERVE_API_KEY"),
        help="sent as a Bearer token, to /metrics too (default: env SPIRITSERVE_API_KEY)",
    )
    parser.add_argument(
        "--workloads",
        type=_workloads,
        default=_workloads(DEFAULT_WORKLOADS),
        help=f"comma-separated, from {', '.join(WORKLOADS)} (default {DEFAULT_WORKLOADS})",
    )
    loop = parser.add_mutually_exclusive_group()
    loop.add_argument(
        "--concurrency",
        type=_list_of(int, "--concurrency"),
        default=[1, 2, 4, 8, 16, 32],
        help="closed loop: clients per point, each sending back to back (default: 1,2,4,8,16,32)",
    )
    loop.add_argument(
        "--rate",
        type=_list_of(float, "--rate"),
        help="open loop instead: Poisson arrivals, requests/s per point (e.g. 0.5,1,2)",
    )
    parser.add_argument("--seconds", type=float, default=30, help="sending time per point (default 30)")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="answer budget in tokens (default 200)")
    parser.add_argument(
        "--max-speech-seconds",
        type=float,
        help="answer budget in seconds of speech, sent as max_speech_seconds (REST) and max_response_seconds "
        "(realtime). Default: not sent; then REST answers run to --max-new-tokens (the server caps them at its "
        "limit, 120 s) while realtime answers stop at the session's default 10 s",
    )
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0, help="request i is sent seed + i; Poisson arrivals too")
    parser.add_argument(
        "--clip",
        type=Path,
        default=DEFAULT_CLIP if DEFAULT_CLIP.exists() else None,
        help="the spoken prompt (any format the API takes). Default: the repository's "
        "tests/fixtures/bench_9s_16k_mono.flac (about 9 s), when run from a checkout; an installed package has "
        "no tests/, so give it there",
    )
    parser.add_argument(
        "--talk-speed",
        type=float,
        default=1.0,
        help="realtime: how fast talkers stream the clip, × real time (0: at once; default 1)",
    )
    parser.add_argument(
        "--realtime-context",
        choices=["keep", "reset"],
        default="keep",
        help="realtime: keep the conversation across a talker's turns (its prompt grows, as in a "
        "chat, up to the server's context limit) or delete each turn's items (every prompt "
        "is the clip alone)",
    )
    parser.add_argument(
        "--max-outstanding",
        type=int,
        help="open loop: arrivals beyond this many outstanding requests are dropped and counted "
        "(default: 4 × rate × the warm-up latency, at least 16)",
    )
    parser.add_argument(
        "--baseline",
        type=int,
        metavar="N",
        help="after the points, serve N speech continuations the reference's way (one at a time, transformers "
        "generate, fp32) on the server's checkpoint in this process, and report each continuation point's "
        "speedup over it (the server must run on this machine)",
    )
    parser.add_argument(
        "--gateway-cost",
        type=int,
        metavar="CONCURRENCY",
        help="after the points, run the same token workload through the server and straight into a vLLM engine "
        "of this process, alternated, at this concurrency: tokens/s server over direct (the server must run on "
        "this machine, with the same SPIRITSERVE_* settings as this process)",
    )
    parser.add_argument("--gateway-rounds", type=int, default=3, help="rounds per side for --gateway-cost")
    parser.add_argument("--timeout", type=float, default=300, help="per request, seconds (default 300)")
    parser.add_argument("--metrics-url", help="where /metrics is (default: URL/metrics; e.g. the metrics port)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        help="folder for bench.json and bench.png (default bench-results)",
    )
    parser.set_defaults(run=run)
    return parser
