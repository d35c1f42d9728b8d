"""What the gateway costs: one token workload through the running server, then straight into vLLM, alternated.

The server side is `/v1/generate` with a speech prompt given as unit tokens (so the speech tokenizer is not
involved) and speech output (so the per-delta duration clock, the vocoder and the JSON/base64 answer are), or
text output (the gateway alone: HTTP, pipeline, per-delta work). The direct side is
`InProcessEngine.stream` in this process, on the same checkpoint (read from the server's `/v1/server`),
with the same engine settings (this process's `SPIRITSERVE_*` environment, as the server's), prompt ids,
allowed ids, sampling and delta size. Both sides run `concurrency` requests at once; rounds alternate so that
drift of the host's speed hits both. The ratio of tokens/s (server ÷ direct) is the gateway's efficiency:
1.0 means serving through it costs the engine nothing.

The server must run on this machine (the checkpoint is opened by path). While the direct rounds run, the
server's engine is idle.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from spiritserve.engine.engine import InProcessEngine, TokenRequest
    from spiritserve.tokens import OutputModality


@dataclass(frozen=True)
class GatewayRound:
    path: str  # "server" or "direct"
    requests: int
    tokens: int
    wall_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s


@dataclass
class GatewayCost:
    output_modality: str
    concurrency: int
    max_new_tokens: int
    rounds: list[GatewayRound] = field(default_factory=list)

    def median_tokens_per_s(self, path: str) -> float:
        return statistics.median(r.tokens_per_s for r in self.rounds if r.path == path)

    @property
    def ratio(self) -> float:
        """Server tokens/s over direct engine tokens/s (medians over the rounds)."""
        return self.median_tokens_per_s("server") / self.median_tokens_per_s("direct")

    def to_dict(self) -> dict[str, Any]:
        return {
            "output_modality": self.output_modality,
            "concurrency": self.concurrency,
            "max_new_tokens": self.max_new_tokens,
            "server_tokens_per_s": self.median_tokens_per_s("server"),
            "direct_tokens_per_s": self.median_tokens_per_s("direct"),
            "ratio": self.ratio,
            "rounds": [asdict(r) | {"tokens_per_s": r.tokens_per_s} for r in self.rounds],
        }


@dataclass(frozen=True)
class ServedModel:
    """The server's checkpoint, opened in this process the way the server opens it."""

    engine: InProcessEngine
    tokenizer: Any  # SpiritTextTokenizer
    vocoder_sizes: dict[Any, int]  # unit kind -> vocoder rows (0: stream absent)

    def request(
        self, unit_tokens: str, output: OutputModality, max_new_tokens: int, temperature: float, top_p: float
    ) -> TokenRequest:
        """What the server asks its engine for on `/v1/generate` of a speech-token prompt (seed 0)."""
        from spiritserve.engine.engine import TokenRequest
        from spiritserve.engine.modality import allowed_token_ids
        from spiritserve.pipeline import OFFLINE_DELTA_TOKENS
        from spiritserve.tokens import Modality, OutputModality, PromptSegment, build_prompt

        prompt = build_prompt([PromptSegment(Modality.SPEECH, unit_tokens)], output)
        return TokenRequest(
            prompt_ids=self.tokenizer.encode_prompt(prompt),
            max_tokens=max_new_tokens,
            allowed_token_ids=allowed_token_ids(self.tokenizer, output, self.vocoder_sizes),
            stop_token_ids=[] if output == OutputModality.SPEECH else [self.tokenizer.eos_id],
            temperature=temperature,
            top_p=top_p,
            seed=0,
            delta_tokens=OFFLINE_DELTA_TOKENS,
        )


def open_served_model(checkpoint_root: Path, variant: str) -> ServedModel:
    import torch

    from spiritserve.checkpoints import open_checkpoint
    from spiritserve.engine.engine import InProcessEngine
    from spiritserve.engine.tokenizer import SpiritTextTokenizer
    from spiritserve.preflight import unit_tables
    from spiritserve.settings import Settings

    checkpoint = open_checkpoint(checkpoint_root, "expressive" if variant == "expressive" else "base")
    vocoded = unit_tables(checkpoint)[1]
    vocoder_sizes = {kind: vocoded[kind].size if kind in vocoded else 0 for kind in ("Hu", "Pi", "St")}
    tokenizer = SpiritTextTokenizer(checkpoint.language_model.tokenizer_path)
    settings = Settings().engine_settings(on_cpu=not torch.cuda.is_available())
    engine = InProcessEngine.start(checkpoint.language_model.path, settings)
    return ServedModel(engine, tokenizer, vocoder_sizes)


async def _direct_round(engine: InProcessEngine, requests: list[TokenRequest], timeout_s: float) -> GatewayRound:
    async def one(index: int, request: TokenRequest) -> int:
        count = 0
        async for delta in engine.stream(request, f"gateway-direct-{time.monotonic_ns()}-{index}", timeout_s):
            count += len(delta.token_ids)
        return count

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
    return GatewayRound("direct", len(requests), sum(counts), time.perf_counter() - started)


async def _server_round(http: httpx.AsyncClient, bodies: list[dict[str, Any]]) -> GatewayRound:
    async def one(body: dict[str, Any]) -> int:
        response = await http.post("/v1/generate", json=body)
        response.raise_for_status()
        return int(response.json()["usage"]["generated_tokens"])

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(body) for body in bodies))
    return GatewayRound("server", len(bodies), sum(counts), time.perf_counter() - started)


async def measure_gateway_cost(
    http: httpx.AsyncClient,
    model: ServedModel,
    unit_tokens: str,
    output: OutputModality,
    concurrency: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    rounds: int,
    timeout_s: float = 300.0,
) -> GatewayCost:
    """Alternate `rounds` server rounds and `rounds` direct rounds of `concurrency` requests each (seeds 0..n-1)."""
    request = model.request(unit_tokens, output, max_new_tokens, temperature, top_p)
    requests = [replace(request, seed=seed) for seed in range(concurrency)]
    body = {
        "inputs": [{"type": "speech", "tokens": unit_tokens}],
        "output_modality": output.value,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
    }
    bodies = [body | {"seed": seed} for seed in range(concurrency)]
    cost = GatewayCost(output.value, concurrency, max_new_tokens)
    await _direct_round(model.engine, requests[:1], timeout_s)  # warm-up, not counted
    for _ in range(rounds):
        cost.rounds.append(await _server_round(http, bodies))
        cost.rounds.append(await _direct_round(model.engine, requests, timeout_s))
    return cost
