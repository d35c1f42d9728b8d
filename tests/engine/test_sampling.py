"""Top-k and top-p over the allowed ids keep exactly the tokens the reference keeps (Hugging Face's top-k then
top-p warpers, which its `generate` applies) and vLLM's own sort-based sampler keeps, on rows where only an
allowed subset of the vocabulary is finite, as it is for every speech request."""

import pytest
import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper
from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

from spiritserve.engine.sampling import top_k_top_p_mask

VOCAB = 32_512
ALLOWED = 501
ROWS = 16


def _masked_rows(rows: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.full((rows, VOCAB), float("-inf"))
    for row in range(rows):
        allowed = torch.randperm(VOCAB, generator=generator)[:ALLOWED]
        scale = 0.5 + 4 * torch.rand((), generator=generator)  # flat to peaked distributions
        logits[row, allowed] = scale * torch.randn(ALLOWED, generator=generator)
    return logits


def _reference(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k:
        logits = TopKLogitsWarper(top_k)(None, logits)
    return TopPLogitsWarper(top_p)(None, logits)


@pytest.mark.parametrize("top_k", [0, 50])
@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.95, 0.99])
def test_the_cut_keeps_what_the_reference_and_vllm_keep(top_k: int, top_p: float):
    logits = _masked_rows(ROWS, seed=int(top_p * 100) + top_k)
    candidates = top_k or ALLOWED
    ours = top_k_top_p_mask(logits.clone(), torch.full((ROWS,), top_k), torch.full((ROWS,), top_p), candidates)
    vllm_k = torch.full((ROWS,), top_k) if top_k else None
    vllm = apply_top_k_top_p_pytorch(logits.clone(), vllm_k, torch.full((ROWS,), top_p))
    kept = ours.isfinite()
    assert (kept.sum(dim=1) > 1).any() and (kept.sum(dim=1) < (top_k or ALLOWED)).any()  # real cuts
    assert torch.equal(kept, _reference(logits.clone(), top_k, top_p).isfinite())
    assert torch.equal(kept, vllm.isfinite())
    assert torch.equal(ours[kept], logits[kept])  # kept logits are untouched


def test_rows_differ_in_their_cuts_and_the_top_token_always_stays():
    logits = _masked_rows(4, seed=7)
    logits[1, :] = float("-inf")
    logits[1, [3, 9]] = torch.tensor([10.0, 0.0])  # only two allowed ids, one holding ~all the mass
    top_k, top_p = torch.tensor([0, 0, 0, 5]), torch.tensor([0.9, 0.9, 1.0, 1.0])
    ours = top_k_top_p_mask(logits.clone(), top_k, top_p, candidates=ALLOWED)
    assert ours[1].isfinite().nonzero().flatten().tolist() == [3]  # never empty: the top token stays
    assert torch.equal(ours[2].isfinite(), logits[2].isfinite())  # top-p 1.0, no top-k: every allowed id
    assert ours[3].isfinite().sum() == 5  # top-k alone
    assert torch.equal(ours[0].isfinite(), _reference(logits[:1].clone(), 0, 0.9).isfinite()[0])
