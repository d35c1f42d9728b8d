"""Top-k and top-p sampling over the allowed ids only: the reference's semantics, without sorting the vocabulary.

vLLM applies top-p by sorting every row of logits over the whole vocabulary (32 512 ids), although a speech
request may only produce its ~500 unit ids: every other logit is already -inf from `allowed_token_ids`. On
CPU that sort cost more than the rest of a decode step of the tiny bundle (16 concurrent speech requests: 765
tok/s with it, 1619 with this processor; docs/benchmarks.md). So the engine sends vLLM `top_p=1.0, top_k=0`
(its sampler then skips the sort) and the request's own top-k and top-p in `extra_args`; here each row keeps
its top-k tokens, then, renormalised over those, the smallest set of its most probable tokens whose
probability reaches top-p, found among the row's `candidates` largest logits (its allowed ids, or top-k if
smaller), and masks the rest. The kept set is the one the reference's Hugging Face warpers (top-k, then
top-p) and vLLM's sort-based sampler keep: a token stays when it is within the top k and the tokens ranked
strictly above it hold less than top-p of the probability (the top token always stays).

It runs in vLLM's argmax-invariant group, after temperature scaling, as top-p must (temperature changes the
distribution it cuts); greedy requests never reach it. Loaded by vLLM in the engine process from
`InProcessEngine.start`.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

if TYPE_CHECKING:
    from vllm.config import VllmConfig

# The keys in SamplingParams.extra_args that carry the request's top-k and top-p.
TOP_K_ARG = "spiritserve_top_k"
TOP_P_ARG = "spiritserve_top_p"


def top_k_top_p_mask(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, candidates: int) -> torch.Tensor:
    """Set to -inf, in place, every logit outside its row's top-k and then top-p nucleus (Hugging Face's order,
    which the reference samples with, and vLLM's), looking only at the `candidates` largest logits of each row
    (every other logit of the row must already be -inf). One `top_k` (0: off) and `top_p` per row."""
    values, _ = logits.topk(min(candidates, logits.shape[-1]), dim=-1)  # sorted, largest first
    rank = torch.arange(values.shape[-1], device=logits.device)
    within_k = (top_k.unsqueeze(1) == 0) | (rank < top_k.unsqueeze(1))
    probabilities = values.masked_fill(~within_k, float("-inf")).softmax(dim=-1)  # renormalised over the top k
    mass_above = probabilities.cumsum(dim=-1) - probabilities
    kept = ((mass_above < top_p.unsqueeze(1)) & within_k).sum(dim=-1, keepdim=True).clamp_(min=1)
    smallest_kept = values.gather(1, kept - 1)
    return logits.masked_fill_(logits < smallest_kept, float("-inf"))


@dataclass(frozen=True)
class _Cut:
    top_k: int  # 0: off
    top_p: float
    candidates: int  # how many logits of the row can be finite: its allowed ids, capped by top-k


class AllowedIdsTopKTopP(LogitsProcessor):  # type: ignore[misc]  # vLLM ships no type stubs mypy reads
    """Per-request top-k and top-p (from `extra_args`) over each request's allowed ids; see the module doc."""

    def __init__(self, vllm_config: "VllmConfig", device: torch.device, is_pin_memory: bool) -> None:
        self.vocab_size = vllm_config.model_config.get_vocab_size()
        self.requests: dict[int, _Cut] = {}  # batch index -> its cut

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        extra = sampling_params.extra_args or {}
        if not 0 < extra.get(TOP_P_ARG, 1) <= 1:
            raise ValueError(f"{TOP_P_ARG} must be in (0, 1], got {extra[TOP_P_ARG]}")
        if extra.get(TOP_K_ARG, 0) < 0:
            raise ValueError(f"{TOP_K_ARG} must be >= 0, got {extra[TOP_K_ARG]}")

    def is_argmax_invariant(self) -> bool:
        return True  # the most likely token is always kept

    def _request_state(self, params: SamplingParams, _prompt: list[int] | None, _output: list[int]) -> _Cut | None:
        extra = params.extra_args or {}
        top_k, top_p = int(extra.get(TOP_K_ARG, 0)), float(extra.get(TOP_P_ARG, 1))
        if top_p >= 1 and top_k == 0:
            return None
        candidates = len(params.allowed_token_ids or ()) or self.vocab_size
        return _Cut(top_k, top_p, min(candidates, top_k) if top_k else candidates)

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.requests, batch_update, self._request_state)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.requests:
            return logits
        rows = sorted(self.requests)
        cuts = [self.requests[row] for row in rows]
        top_k = torch.tensor([cut.top_k for cut in cuts], device=logits.device)
        top_p = torch.tensor([cut.top_p for cut in cuts], dtype=logits.dtype, device=logits.device)
        candidates = max(cut.candidates for cut in cuts)
        if rows == list(range(logits.shape[0])):
            return top_k_top_p_mask(logits, top_k, top_p, candidates)
        index = torch.tensor(rows, device=logits.device)
        logits[index] = top_k_top_p_mask(logits[index], top_k, top_p, candidates)
        return logits
