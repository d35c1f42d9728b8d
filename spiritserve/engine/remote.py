"""The language model in a separate `vllm serve`, or a pool of them behind `vllm-router`, instead of in this process.

Talks vLLM's OpenAI-compatible completions API, which takes everything a `TokenRequest` says: a token-id prompt,
`allowed_token_ids`, `stop_token_ids`, seed, top-k/top-p, the delta size (`stream_interval`), and streams the
generated ids back (`return_token_ids`). The engine must run with `--skip-tokenizer-init` (prompts are ids) on
the same LM folder as this gateway's checkpoint. Closing the stream aborts the request there: vLLM aborts a
request whose client went away. A realtime session's requests carry `X-Session-ID`, which `vllm-router`'s
`consistent_hash` policy routes on, so a conversation stays on the replica holding its prefix.

Top-k/top-p are vLLM's own here (the in-process engine's `AllowedIdsTopKTopP` would need the processor loaded
in the engine): the same distribution, since vLLM masks the disallowed ids before it filters, at the cost of a
full-vocabulary sort on CPU engines (GPU engines sample with FlashInfer kernels).

Failures: a request that cannot reach the engine, or gets a 5xx, before anything was generated, is retried for up
to `failover_s` (a router keeps sending to a dead replica until its health check takes it out); after that, and
whenever the probe of `/v1/models` (every `probe_interval_s`; through a router it reaches some healthy worker)
fails, the engine counts as unhealthy: the server answers 503 with Retry-After and is not ready, and recovers by
itself once a probe succeeds. A remote engine never `has_failed`: restarting the gateway would not bring it back.
"""

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from spiritserve.engine.engine import TokenDelta, TokenRequest
from spiritserve.errors import BadRequestError, EngineUnavailableError

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 5.0
FIRST_RETRY_PAUSE_S = 0.25
MAX_RETRY_PAUSE_S = 2.0
# Affinity header of vllm-router's consistent_hash policy (its first hash key).
SESSION_HEADER = "X-Session-ID"


class RemoteEngine:
    """A vLLM OpenAI-compatible server at `base_url` (ending in /v1). Create with `connect()`, end with `close()`."""

    def __init__(self, base_url: str, client: httpx.AsyncClient, probe_interval_s: float, failover_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client
        self._probe_interval_s = probe_interval_s
        self._failover_s = failover_s
        self._healthy = False
        self._prober: asyncio.Task[None] | None = None
        self.model_id = ""
        self.max_model_len: int | None = None

    @classmethod
    async def connect(
        cls, base_url: str, wait_s: float, failover_s: float, probe_interval_s: float = 2.0
    ) -> "RemoteEngine":
        """Wait up to `wait_s` for the engine to answer (it may still be loading), then watch its health."""
        timeout = httpx.Timeout(CONNECT_TIMEOUT_S, read=None)  # a stream's gaps are bounded by its own deadline
        # Uncompressed: a proxy that compressed the event stream would hold deltas back until a block filled.
        client = httpx.AsyncClient(timeout=timeout, headers={"Accept-Encoding": "identity"})
        engine = cls(base_url, client, probe_interval_s, failover_s)
        deadline = time.monotonic() + wait_s
        while not await engine.probe():
            if time.monotonic() > deadline:
                await engine.close()
                raise EngineUnavailableError(f"no vLLM engine answered at {engine.base_url} within {wait_s:.0f} s")
            await asyncio.sleep(min(probe_interval_s, 1.0))
        logger.info("remote engine at %s serves %s (context %s)", engine.base_url, engine.model_id,
                    engine.max_model_len)  # fmt: skip
        engine._prober = asyncio.create_task(engine._watch(), name="remote-engine-probe")
        return engine

    @property
    def is_healthy(self) -> bool:
        return self._healthy

    @property
    def has_failed(self) -> bool:
        return False

    async def probe(self) -> bool:
        """Ask the engine which model it serves; healthy when it answers."""
        try:
            response = await self._client.get(f"{self.base_url}/models", timeout=PROBE_TIMEOUT_S)
            response.raise_for_status()
            model = response.json()["data"][0]
        except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
            if self._healthy:
                logger.warning("remote engine at %s is unavailable: %r", self.base_url, exc)
            self._healthy = False
            return False
        if not self._healthy:
            logger.info("remote engine at %s is available", self.base_url)
        self.model_id, self.max_model_len = model["id"], model.get("max_model_len")
        self._healthy = True
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._probe_interval_s)
            await self.probe()

    def _unavailable(self, reason: str) -> EngineUnavailableError:
        logger.warning("remote engine at %s: %s", self.base_url, reason)
        self._healthy = False
        return EngineUnavailableError(f"the language-model engine is unavailable ({reason})")

    def _body(self, request: TokenRequest, request_id: str) -> dict[str, Any]:
        return {
            "model": self.model_id,
            "prompt": request.prompt_ids,
            "max_tokens": request.max_tokens,
            "allowed_token_ids": request.allowed_token_ids,
            "stop_token_ids": request.stop_token_ids,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "top_k": request.top_k or -1,  # vLLM's "off"
            "seed": request.seed,
            "stream": True,
            "stream_interval": request.delta_tokens,
            "return_token_ids": True,
            "request_id": request_id,
        }

    async def stream(self, request: TokenRequest, request_id: str, timeout_s: float) -> AsyncIterator[TokenDelta]:
        if not self._healthy:
            raise EngineUnavailableError("the language-model engine is unavailable")
        deadline = asyncio.get_running_loop().time() + timeout_s
        response = await self._open(request, request_id, deadline)
        try:
            lines = response.aiter_lines()
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        line = await anext(lines)
                except StopAsyncIteration:
                    raise self._unavailable("the stream ended without a finish reason") from None
                except TimeoutError:
                    logger.warning("request %s hit its %.1f s deadline; aborting", request_id, timeout_s)
                    yield TokenDelta([], finish_reason="timeout")
                    return
                delta = _parse_event(line)
                if delta is not None:
                    yield delta
                    if delta.finish_reason is not None:
                        return
        except httpx.HTTPError as exc:
            raise self._unavailable(repr(exc)) from exc
        finally:
            await response.aclose()  # before the end: the engine sees the client leave and aborts the request

    async def prompt_logprobs(self, prompt_ids: list[int], first: int, request_id: str, timeout_s: float) -> (
        list[float]
    ):  # fmt: skip
        """vLLM's `prompt_logprobs` (0: only the prompt's own token per position) on one non-streamed completion
        of a single greedy token, which is thrown away. The OpenAI API cannot ask vLLM to read its prefix cache
        for such a request, so the engine recomputes the whole prompt."""
        if not self._healthy:
            raise EngineUnavailableError("the language-model engine is unavailable")
        body = {"model": self.model_id, "prompt": prompt_ids, "max_tokens": 1, "temperature": 0.0,
                "prompt_logprobs": 0, "request_id": request_id}  # fmt: skip
        deadline = asyncio.get_running_loop().time() + timeout_s
        response = await self._send(self._client.build_request("POST", f"{self.base_url}/completions", json=body),
                                    request_id, deadline)  # fmt: skip
        try:
            async with asyncio.timeout_at(deadline):
                await response.aread()
            positions = response.json()["choices"][0]["prompt_logprobs"]
            # JSON object keys are strings: each position maps the prompt's token id to its log-probability
            return [positions[index][str(prompt_ids[index])]["logprob"] for index in range(first, len(prompt_ids))]
        except TimeoutError:
            raise self._unavailable("no answer before the request's deadline") from None
        except httpx.HTTPError as exc:
            raise self._unavailable(repr(exc)) from exc
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise self._unavailable(f"unexpected prompt_logprobs in the answer: {exc!r}") from exc
        finally:
            await response.aclose()

    async def _open(self, request: TokenRequest, request_id: str, deadline: float) -> httpx.Response:
        headers = {SESSION_HEADER: request.affinity_key} if request.affinity_key else {}
        post = self._client.build_request("POST", f"{self.base_url}/completions", json=self._body(request, request_id),
                                          headers=headers)  # fmt: skip
        return await self._send(post, request_id, deadline)

    async def _send(self, post: httpx.Request, request_id: str, deadline: float) -> httpx.Response:
        """Send a request (its body not yet read); while nothing was generated, retry an engine that cannot take
        it (a replica that just died, which the router has not yet taken out) for up to `failover_s`."""
        loop = asyncio.get_running_loop()
        give_up = min(deadline, loop.time() + self._failover_s)
        pause = FIRST_RETRY_PAUSE_S
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    response = await self._client.send(post, stream=True)
            except TimeoutError:
                raise self._unavailable("no answer before the request's deadline") from None
            except httpx.TransportError as exc:
                failure = repr(exc)
            else:
                if response.status_code == 200:
                    return response
                await response.aread()
                await response.aclose()
                if 400 <= response.status_code < 500:
                    raise BadRequestError(f"the language-model engine refused the request: {_message(response)}")
                failure = f"HTTP {response.status_code}: {_message(response)}"
            if loop.time() + pause > give_up:
                raise self._unavailable(failure)
            logger.info("request %s: engine failed (%s); retrying in %.2f s", request_id, failure, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_RETRY_PAUSE_S)

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        await self._client.aclose()


def _message(response: httpx.Response) -> str:
    try:
        message = str(response.json().get("error", {}).get("message") or response.text)
    except (ValueError, AttributeError):
        message = response.text
    return message[:500]


def _parse_event(line: str) -> TokenDelta | None:
    """One server-sent-event line of a streamed completion: the delta it carries, None for other lines."""
    if not line.startswith("data:"):
        return None
    data = line[len("data:") :].strip()
    if data == "[DONE]":
        return None
    event = json.loads(data)
    if "error" in event:
        raise EngineUnavailableError(f"the language-model engine failed the request: {event['error']}")
    choice = event["choices"][0]
    return TokenDelta(list(choice.get("token_ids") or []), choice.get("finish_reason"))
