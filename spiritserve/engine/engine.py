"""The language-model engine: token-id prompts in, streamed token-id deltas out.

`LanguageModelEngine` is what the pipeline needs of it; two engines provide it: `InProcessEngine` hosts vLLM's
`AsyncLLM` in this process (the default), `engine.remote.RemoteEngine` calls a separate `vllm serve` (or a router
in front of several). The engine never sees strings: prompts are built and tokenized by
`spiritserve.engine.tokenizer` exactly as the reference does, so vLLM runs with `skip_tokenizer_init`. Output
modality is forced with `allowed_token_ids` (a static mask, the reference's `bad_words_ids` inverted). Every
request has a token budget and a wall-clock deadline, and is aborted in vLLM whenever its consumer stops listening.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from spiritserve.errors import EngineUnavailableError

logger = logging.getLogger(__name__)
# The reference's sampling defaults, which every API's defaults point to (temperature 0 means greedy). Top-k is
# transformers' GenerationConfig default: the reference never sets it, so its `generate` samples with top-k 50.
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.95
DEFAULT_TOP_K = 50


# vLLM's names for the LM's dtype and the bytes each weight then takes: "auto" runs a float32 or float16 checkpoint
# in float16 and a bfloat16 one in bfloat16 (vLLM's rule), so 16 bits either way.
EngineDtype = Literal["auto", "bfloat16", "float16", "half", "float32", "float"]
WEIGHT_BYTES: dict[str, int] = {"auto": 2, "bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4}


@dataclass(frozen=True)
class EngineSettings:
    """How vLLM is started. Defaults suit the 7B model on one GPU; the CPU values suit tiny test bundles."""

    dtype: EngineDtype = "bfloat16"
    max_model_len: int = 4096
    max_num_seqs: int = 64
    kv_cache_memory_bytes: int | None = None
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False
    enable_prefix_caching: bool = True


@dataclass(frozen=True)
class TokenRequest:
    """One generation: the prompt ids, what may be sampled, and when to stop."""

    prompt_ids: list[int]
    max_tokens: int
    allowed_token_ids: list[int] | None
    stop_token_ids: list[int] = field(default_factory=list)
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    top_k: int = DEFAULT_TOP_K  # 0: off
    seed: int | None = None
    # Tokens vLLM gathers before handing over a delta (its `stream_interval`; the first token always comes at
    # once). The gateway's per-delta work (stop scans, the duration clock, the thread hop to the speech worker)
    # then runs once per this many tokens: the consumer sets it to what it can wait for.
    delta_tokens: int = 1
    # Requests with the same key should reach the same engine replica, which holds their common prefix in its
    # KV cache (a realtime session's conversation). Only a remote engine behind a router uses it.
    affinity_key: str | None = None


@dataclass(frozen=True)
class TokenDelta:
    """Tokens produced since the previous delta; `finish_reason` is set on the last one."""

    token_ids: list[int]
    finish_reason: str | None = None


class LanguageModelEngine(Protocol):
    """What the pipeline and the server need of an engine, wherever it runs."""

    @property
    def is_healthy(self) -> bool:
        """It takes requests now (readiness)."""
        ...

    @property
    def has_failed(self) -> bool:
        """It will never take requests again: only restarting this process helps (liveness)."""
        ...

    def stream(self, request: TokenRequest, request_id: str, timeout_s: float) -> AsyncIterator[TokenDelta]:
        """Token deltas until the budget, a stop token or the deadline (then finish_reason "timeout"); the
        request is aborted in the engine when the iterator is closed early. Raises EngineUnavailableError
        when the engine cannot take it."""
        ...

    async def prompt_logprobs(self, prompt_ids: list[int], first: int, request_id: str, timeout_s: float) -> (
        list[float]
    ):  # fmt: skip
        """The model's log-probability of each prompt token from position `first` on (1 or more) given the tokens
        before it, in its raw distribution (no allowed-ids mask, no temperature): `len(prompt_ids) - first`
        values. The tokens before `first` may come from the engine's prefix cache. Raises EngineUnavailableError
        when the engine cannot take it or does not answer within `timeout_s`."""
        ...

    async def close(self) -> None: ...


class InProcessEngine:
    """Owns one vLLM `AsyncLLM`. Create with `start()` inside the server's lifespan, end with `close()`."""

    def __init__(self, llm: Any, model_path: Path) -> None:
        self._llm = llm
        self.model_path = model_path

    @classmethod
    def start(cls, model_path: Path, settings: EngineSettings) -> "InProcessEngine":
        # vLLM is imported here, not at module level: importing spiritserve must stay cheap and side-effect free.
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from spiritserve.engine.sampling import AllowedIdsTopKTopP

        started = time.perf_counter()
        args = AsyncEngineArgs(
            model=str(model_path),
            # vLLM labels its metrics with this name (default: the model path, which /metrics would expose).
            served_model_name=model_path.name,
            skip_tokenizer_init=True,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            max_num_seqs=settings.max_num_seqs,
            kv_cache_memory_bytes=settings.kv_cache_memory_bytes,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            enforce_eager=settings.enforce_eager,
            enable_prefix_caching=settings.enable_prefix_caching,
            logits_processors=[AllowedIdsTopKTopP],
        )
        llm = AsyncLLM.from_engine_args(args)
        logger.info("vLLM engine for %s started in %.1f s", model_path, time.perf_counter() - started)
        return cls(llm, model_path)

    @property
    def is_healthy(self) -> bool:
        return not self._llm.errored

    @property
    def has_failed(self) -> bool:
        return bool(self._llm.errored)  # a dead in-process engine never comes back

    async def stream(self, request: TokenRequest, request_id: str, timeout_s: float) -> AsyncIterator[TokenDelta]:
        """A deadline ends the stream with finish_reason "timeout" and the tokens produced so far, rather
        than an error: for speech, the audio generated until then is still worth returning."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        from spiritserve.engine.sampling import TOP_K_ARG, TOP_P_ARG

        if self._llm.errored:
            raise EngineUnavailableError("the language-model engine has stopped; the server needs a restart")
        params = SamplingParams(
            max_tokens=request.max_tokens,
            allowed_token_ids=request.allowed_token_ids,
            stop_token_ids=request.stop_token_ids,
            temperature=request.temperature,
            # top-k and top-p are applied by AllowedIdsTopKTopP, over the allowed ids only
            top_p=1.0,
            top_k=0,
            extra_args={TOP_K_ARG: request.top_k, TOP_P_ARG: request.top_p},
            seed=request.seed,
            detokenize=False,
            stream_interval=request.delta_tokens,
            output_kind=RequestOutputKind.DELTA,
        )
        outputs = self._llm.generate(TokensPrompt(prompt_token_ids=request.prompt_ids), params, request_id)
        deadline = asyncio.get_running_loop().time() + timeout_s
        finished = False
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        output = await anext(outputs)
                except StopAsyncIteration:
                    finished = True
                    return
                except TimeoutError:
                    logger.warning("request %s hit its %.1f s deadline; aborting", request_id, timeout_s)
                    yield TokenDelta([], finish_reason="timeout")
                    return
                completion = output.outputs[0]
                finished = output.finished
                yield TokenDelta(list(completion.token_ids), completion.finish_reason if finished else None)
                if finished:
                    return
        finally:
            if not finished:
                await self._llm.abort(request_id)
            await outputs.aclose()

    async def prompt_logprobs(self, prompt_ids: list[int], first: int, request_id: str, timeout_s: float) -> (
        list[float]
    ):  # fmt: skip
        """One prefill with vLLM's `prompt_logprobs` (0: only the prompt's own token per position) and a single
        greedy token that is thrown away. vLLM would recompute the whole prompt of such a request by default;
        here it reads its prefix cache. A token's log-probability comes from the logits of the position before
        it, and cached positions have none (their entries are left unfilled), so the first `num_cached_tokens + 1`
        entries are unusable: a request whose cache hit reaches `first` is run once more without the cache."""
        output = await self._prefill(prompt_ids, request_id, timeout_s, use_cache=True)
        if output.num_cached_tokens >= first:
            output = await self._prefill(prompt_ids, f"{request_id}-uncached", timeout_s, use_cache=False)
        positions = output.prompt_logprobs
        return [positions[index][prompt_ids[index]].logprob for index in range(first, len(prompt_ids))]

    async def _prefill(self, prompt_ids: list[int], request_id: str, timeout_s: float, use_cache: bool) -> Any:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        if self._llm.errored:
            raise EngineUnavailableError("the language-model engine has stopped; the server needs a restart")
        params = SamplingParams(
            max_tokens=1,
            temperature=0.0,
            prompt_logprobs=0,
            skip_reading_prefix_cache=not use_cache,
            detokenize=False,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        outputs = self._llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, request_id)
        final, finished = None, False
        try:
            async with asyncio.timeout(timeout_s):
                async for output in outputs:
                    final = output
            finished = True
        except TimeoutError:
            raise EngineUnavailableError(f"scoring did not finish within {timeout_s:.0f} s") from None
        finally:
            if not finished:  # a deadline, or the caller went away
                await self._llm.abort(request_id)
            await outputs.aclose()
        if final is None or final.prompt_logprobs is None:
            raise EngineUnavailableError("the language-model engine returned no prompt log-probabilities")
        return final

    async def close(self) -> None:
        self._llm.shutdown()
