"""Likelihood routes: `/v1/score` (continuations of one prompt) and `/v1/classify` (the most likely label)."""

import uuid

from fastapi import APIRouter, Request

from spiritserve.errors import BadRequestError
from spiritserve.scoring import LabelledExample, classification_prompt, label_candidates, score, score_segments
from spiritserve.server.routes import (
    ANY_ROUTE_ERRORS,
    MODEL_ROUTE_ERRORS,
    Json,
    PipelineDep,
    SettingsDep,
    Slot,
    cancel_on_disconnect,
    generation_input,
)
from spiritserve.server.schemas import (
    CandidateScoreBody,
    ClassifyRequest,
    ClassifyResponse,
    LabelScore,
    ScoreRequest,
    ScoreResponse,
)

router = APIRouter(responses=ANY_ROUTE_ERRORS)


@router.post("/v1/score", dependencies=[Json, Slot], response_model=ScoreResponse, responses=MODEL_ROUTE_ERRORS)
async def score_candidates(
    request: Request, body: ScoreRequest, pipeline: PipelineDep, settings: SettingsDep
) -> ScoreResponse:
    """Each candidate's log-likelihood as a continuation of the prompt (joined as `/v1/generate` joins inputs).

    A candidate's tokens follow the prompt's own tokens; a modality marker that starts them is not counted.
    `normalized_logprob` divides by their number (the paper's token-normalised score)."""
    prompt = [await generation_input(item, settings, pipeline) for item in body.prompt]
    candidates = [await generation_input(item, settings, pipeline) for item in body.candidates]
    scores = await cancel_on_disconnect(request, score(pipeline, prompt, candidates, uuid.uuid4().hex))
    return ScoreResponse(
        prompt_tokens=scores.prompt_tokens,
        scores=[
            CandidateScoreBody(index=index, logprob=c.logprob, tokens=c.tokens, normalized_logprob=c.normalized_logprob)
            for index, c in enumerate(scores.candidates)
        ],
        best=scores.best(),
        best_normalized=scores.best(normalized=True),
    )


@router.post(
    "/v1/classify", dependencies=[Json, Slot], response_model=ClassifyResponse, responses=MODEL_ROUTE_ERRORS
)
async def classify(request: Request, body: ClassifyRequest, pipeline: PipelineDep, settings: SettingsDep) -> (
    ClassifyResponse
):  # fmt: skip
    """The most likely label for speech or text, by the likelihood of each label as its continuation.

    With a classification pool configured (`SPIRITSERVE_CLASSIFY_EXAMPLES`), its examples come first, each input
    followed by its label (`[Speech]<speech>[Text]<label>`, the paper's intent-classification layout); `shots`
    takes the first N of them, 0 none. `labels` defaults to the pool's labels."""
    pool: list[LabelledExample] = request.app.state.classify_examples
    examples = pool if body.shots is None else pool[: body.shots]
    if body.shots is not None and body.shots > len(pool):
        raise BadRequestError(f"shots={body.shots}, but the server's classification pool holds {len(pool)} examples")
    labels = body.labels if body.labels is not None else list(dict.fromkeys(example.label for example in pool))
    if len(labels) < 2:
        raise BadRequestError("give 'labels' (two or more): the server has no classification pool to take them from")
    if len(set(labels)) != len(labels):
        raise BadRequestError("'labels' must be distinct")
    query = await pipeline.prompt_segments([await generation_input(item, settings, pipeline) for item in body.input])
    prompt = classification_prompt(examples, query)
    scores = await cancel_on_disconnect(
        request, score_segments(pipeline, prompt, label_candidates(labels), uuid.uuid4().hex)
    )
    return ClassifyResponse(
        label=labels[scores.best(normalized=body.normalize)],
        scores=[
            LabelScore(label=label, logprob=c.logprob, tokens=c.tokens, normalized_logprob=c.normalized_logprob)
            for label, c in zip(labels, scores.candidates, strict=True)
        ],
        shots=len(examples),
        prompt_tokens=scores.prompt_tokens,
    )
