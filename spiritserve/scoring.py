"""Likelihood scoring: how probable the model finds each of several continuations of one prompt, and
classification as the most probable label (`/v1/score`, `/v1/classify`, and the paper's zero-shot benchmarks).

A candidate is joined to the prompt as `/v1/generate` joins inputs (`tokens.build_prompt`: a modality marker
where the modality changes), and the whole sequence is tokenized as the reference tokenizes a prompt. The
candidate's tokens are those after the prompt's own ids, less a modality marker that starts them (and, after an
empty prompt, SentencePiece's lone leading "▁"): both are the same for every candidate of one modality and say
nothing about it. Its score is the sum of the LM's log-probabilities of those tokens (the raw distribution), and
the token-normalised score divides by their count (the paper's Table 4 uses the latter).

Every candidate is one engine request with vLLM's prompt log-probabilities; they go to the engine together and
run in the same batches, after one prefill of a long prompt that they then read from the engine's prefix cache.
"""

import asyncio
from dataclasses import dataclass

from spiritserve.engine.tokenizer import SpiritTextTokenizer
from spiritserve.errors import BadRequestError
from spiritserve.few_shot import Pool
from spiritserve.pipeline import GenerationInput, SpiritPipeline
from spiritserve.tokens import Modality, OutputModality, PromptSegment, build_prompt

LEADING_SPACE_PIECE = "▁"  # SentencePiece's dummy prefix: the reference's prompts start with it alone
# A prompt this long is prefilled once before its candidates, which then read it from the engine's prefix cache
# rather than each computing it again; a shorter one costs less to recompute than the extra round trip.
SHARED_PREFILL_TOKENS = 64


@dataclass(frozen=True)
class CandidateScore:
    logprob: float
    tokens: int

    @property
    def normalized_logprob(self) -> float:
        return self.logprob / self.tokens


@dataclass(frozen=True)
class Scores:
    prompt_tokens: int
    candidates: list[CandidateScore]

    def best(self, normalized: bool = False) -> int:
        """The index of the most likely candidate (the first of equals)."""
        values = [c.normalized_logprob if normalized else c.logprob for c in self.candidates]
        return values.index(max(values))


def candidate_span(
    tokenizer: SpiritTextTokenizer, prompt: list[PromptSegment], prompt_ids: list[int], candidate: PromptSegment
) -> tuple[list[int], int]:
    """The ids of the prompt joined with `candidate`, and the index of the candidate's first scored token."""
    ids = tokenizer.encode_prompt(build_prompt([*prompt, candidate], OutputModality.ARBITRARY))
    start = 0
    while start < min(len(ids), len(prompt_ids)) and ids[start] == prompt_ids[start]:
        start += 1
    if not prompt and start < len(ids) and tokenizer.pieces([ids[start]]) == [LEADING_SPACE_PIECE]:
        start += 1
    if start < len(ids) and tokenizer.classify(ids[start]).marker is not None:
        start += 1
    return ids, start


async def score(
    pipeline: SpiritPipeline, prompt: list[GenerationInput], candidates: list[GenerationInput], request_id: str
) -> Scores:
    """Each candidate's log-likelihood after `prompt`; speech inputs are tokenized together first."""
    segments = await pipeline.prompt_segments([*prompt, *candidates])
    return await score_segments(pipeline, segments[: len(prompt)], segments[len(prompt) :], request_id)


async def score_segments(
    pipeline: SpiritPipeline, prompt: list[PromptSegment], candidates: list[PromptSegment], request_id: str
) -> Scores:
    tokenizer = pipeline.tokenizer
    prompt_ids = tokenizer.encode_prompt(build_prompt(prompt, OutputModality.ARBITRARY))
    spans = [candidate_span(tokenizer, prompt, prompt_ids, candidate) for candidate in candidates]
    context = pipeline.limits.max_model_len
    for index, (ids, start) in enumerate(spans):
        if start == len(ids):
            raise BadRequestError(f"candidate {index} adds no tokens to the prompt (speech under 80 ms has none)")
        if len(ids) >= context:  # the engine needs room for the one token it generates
            raise BadRequestError(
                f"the prompt with candidate {index} is {len(ids)} tokens long; the model's context holds {context - 1}"
            )
    engine, timeout_s = pipeline.engine, pipeline.limits.generation_timeout_s
    if len(candidates) > 1 and len(prompt_ids) >= SHARED_PREFILL_TOKENS:
        await engine.prompt_logprobs(prompt_ids, len(prompt_ids), f"{request_id}-prompt", timeout_s)
    try:
        async with asyncio.TaskGroup() as group:  # a failure cancels the others, which aborts their engine requests
            tasks = [
                group.create_task(engine.prompt_logprobs(ids, start, f"{request_id}-{index}", timeout_s))
                for index, (ids, start) in enumerate(spans)
            ]
    except ExceptionGroup as failures:
        raise failures.exceptions[0] from None
    return Scores(
        len(prompt_ids),
        [CandidateScore(sum(task.result()), len(ids) - start) for task, (ids, start) in zip(tasks, spans, strict=True)],
    )


@dataclass(frozen=True)
class LabelledExample:
    """One classification example: its input as prompt segments, and its label."""

    segments: tuple[PromptSegment, ...]
    label: str


def classification_prompt(examples: list[LabelledExample], query: list[PromptSegment]) -> list[PromptSegment]:
    """Examples, then the query, each input followed by its label as text; the label candidates follow the query.

    Speech inputs are followed by `[Text]` and the label, the paper's intent-classification layout
    (`[Speech]<speech>[Text]<label>`, spiritlm-compat.md §11.1); a text input gets a newline before its label,
    and a text input after a label starts on a new line (consecutive texts would otherwise run together).
    """
    segments: list[PromptSegment] = []

    def add(items: tuple[PromptSegment, ...] | list[PromptSegment]) -> None:
        for item in items:
            if item.modality == Modality.TEXT and segments and segments[-1].modality == Modality.TEXT:
                item = PromptSegment(Modality.TEXT, "\n" + item.content)
            segments.append(item)
        if segments[-1].modality == Modality.TEXT:
            segments.append(PromptSegment(Modality.TEXT, "\n"))

    for example in examples:
        add(example.segments)
        segments.append(PromptSegment(Modality.TEXT, example.label))
    add(query)
    return segments


def label_candidates(labels: list[str]) -> list[PromptSegment]:
    return [PromptSegment(Modality.TEXT, label) for label in labels]


async def tokenize_examples(pipeline: SpiritPipeline, pool: Pool | None) -> list[LabelledExample]:
    """A classification pool's examples (audio + its label) as prompt segments, tokenized once at start-up."""
    if pool is None:
        return []
    inputs = [GenerationInput(Modality.SPEECH, audio=example.waveform) for example in pool.examples]
    segments = await pipeline.prompt_segments(inputs)
    return [LabelledExample((segment,), example.text) for segment, example in zip(segments, pool.examples, strict=True)]
