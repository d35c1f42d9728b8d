"""An async client for the scoring and generation routes of a running spiritserve server, shared by the tasks
of `spiritserve eval`.

`EvalClient.score` sends one `POST /v1/score` (a prompt and its candidate continuations) and returns each
candidate's log-likelihood; `generate` sends one `POST /v1/generate`. A semaphore bounds how many requests are
in flight; 429 and 503 answers (admission control, a draining server) are retried after their Retry-After, a
bounded number of times; any other non-2xx answer raises `EvalServerError` with the server's own message.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

RETRY_STATUSES = (429, 503)
DEFAULT_RETRY_AFTER_S = 1.0
MAX_RETRY_AFTER_S = 60.0  # a server asking for longer is waited on this long, then asked again


class EvalError(Exception):
    """A failure that ends an evaluation run; its message is one line, meant for the user."""


class EvalConnectionError(EvalError):
    """The server could not be reached (refused, DNS, timeout)."""


class EvalServerError(EvalError):
    """The server answered with an error status: its status, error type and message."""

    def __init__(self, status: int, error_type: str, message: str, route: str) -> None:
        super().__init__(f"{route} answered {status} ({error_type}): {message}")
        self.status = status
        self.error_type = error_type
        self.message = message
        self.route = route


@dataclass(frozen=True)
class CandidateScore:
    index: int
    logprob: float  # sum of the LM's log-probabilities of the candidate's tokens (raw distribution)
    tokens: int  # how many tokens the candidate has after the prompt (a leading modality marker not counted)
    normalized_logprob: float  # logprob / tokens


@dataclass(frozen=True)
class ScoreResult:
    prompt_tokens: int
    scores: list[CandidateScore]  # one per candidate, in the order sent
    best: int  # index of the highest logprob
    best_normalized: int  # index of the highest normalized_logprob

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ScoreResult:
        scores = [
            CandidateScore(
                index=int(item["index"]),
                logprob=float(item["logprob"]),
                tokens=int(item["tokens"]),
                normalized_logprob=float(item["normalized_logprob"]),
            )
            for item in body["scores"]
        ]
        return cls(
            prompt_tokens=int(body["prompt_tokens"]),
            scores=scores,
            best=int(body["best"]),
            best_normalized=int(body["best_normalized"]),
        )


def text_item(text: str) -> dict[str, Any]:
    """A text input item, as /v1/score and /v1/generate take it."""
    return {"type": "text", "text": text}


def audio_item(path: str | Path) -> dict[str, Any]:
    """A speech input item from an audio file (any format the server decodes; it resamples to 16 kHz)."""
    return {"type": "speech", "audio_base64": base64.b64encode(Path(path).read_bytes()).decode("ascii")}


def units_item(tokens: str) -> dict[str, Any]:
    """A speech input item from unit tokens as the LM writes them (`[Hu12][Hu7]…`)."""
    return {"type": "speech", "tokens": tokens}


def retry_after_seconds(value: str | None) -> float:
    """Retry-After as seconds: delta-seconds or an HTTP date; missing or unreadable → 1 s; at most 60 s."""
    if value is None:
        return DEFAULT_RETRY_AFTER_S
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return DEFAULT_RETRY_AFTER_S
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """(type, message) from the server's `{"error": {"type", "message"}}`, else the status and the body's start."""
    try:
        error = response.json()["error"]
        return str(error.get("type", "error")), str(error.get("message", "")).replace("\n", " ")
    except (ValueError, KeyError, TypeError, AttributeError):
        return response.reason_phrase or "error", response.text[:200].replace("\n", " ")


class EvalClient:
    """Async client for one server. Use as `async with EvalClient(url) as client: ...`.

    `concurrency` bounds the requests in flight (the server batches what arrives together, so a few in flight
    keep its engine busy); `max_tries` bounds the attempts of one request refused with 429/503.
    `transport` replaces the network (tests pass an `httpx.MockTransport`).
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 600,
        max_tries: int = 10,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.url = url.rstrip("/")
        self.max_tries = max_tries
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=httpx.Timeout(timeout_s, connect=10), transport=transport
        )
        self._slots = asyncio.Semaphore(concurrency)
        self.requests = 0  # answered requests (any status), for the report
        self.retries = 0  # 429/503 answers waited out

    async def __aenter__(self) -> EvalClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, route: str, body: dict[str, Any] | None = None) -> Any:
        """One request, retried on 429/503 after Retry-After; the decoded JSON answer."""
        for attempt in range(1, self.max_tries + 1):
            async with self._slots:
                try:
                    response = await self._http.request(method, route, json=body)
                except httpx.TimeoutException as exc:
                    raise EvalConnectionError(
                        f"{route}: no answer from {self.url} in time ({type(exc).__name__})"
                    ) from exc
                except httpx.TransportError as exc:
                    raise EvalConnectionError(
                        f"cannot reach the server at {self.url}: {exc or type(exc).__name__}"
                    ) from exc
            self.requests += 1
            if response.is_success:
                try:
                    return response.json()
                except ValueError:
                    raise EvalServerError(
                        response.status_code, "bad_response", "the answer is not JSON", route
                    ) from None
            if response.status_code in RETRY_STATUSES and attempt < self.max_tries:
                self.retries += 1
                await asyncio.sleep(retry_after_seconds(response.headers.get("retry-after")))
                continue
            error_type, message = _error_of(response)
            if response.status_code in RETRY_STATUSES:
                message = f"{message} (still refused after {self.max_tries} tries)"
            raise EvalServerError(response.status_code, error_type, message, route)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def score(self, prompt: list[dict[str, Any]], candidates: list[dict[str, Any]]) -> ScoreResult:
        """Each candidate's log-likelihood as a continuation of the prompt (`POST /v1/score`)."""
        body = await self._request("POST", "/v1/score", {"prompt": prompt, "candidates": candidates})
        result = ScoreResult.from_json(body)
        if len(result.scores) != len(candidates):
            raise EvalServerError(
                200, "bad_response", f"{len(result.scores)} scores for {len(candidates)} candidates", "/v1/score"
            )
        return result

    async def generate(self, body: dict[str, Any]) -> dict[str, Any]:
        """`POST /v1/generate` with this JSON body (response_format json); the JSON answer."""
        answer: dict[str, Any] = await self._request("POST", "/v1/generate", body)
        return answer

    async def server_info(self) -> dict[str, Any]:
        """`GET /v1/server`: what is served (`model`, `variant`, `random_weights`, ...)."""
        answer: dict[str, Any] = await self._request("GET", "/v1/server")
        return answer
