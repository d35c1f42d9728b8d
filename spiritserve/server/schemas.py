"""Request and response bodies of the REST API (pydantic), with limits that turn bad input into 422s."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from spiritserve.engine.engine import DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P
from spiritserve.tokens import OutputModality

MAX_SEED = 2**63 - 1  # a signed 64-bit integer: the engine cannot take a larger seed


class SamplingFields(BaseModel):
    """The reference's sampling defaults (0 temperature = greedy)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(DEFAULT_TEMPERATURE, ge=0.0, le=2.0)
    top_p: float = Field(DEFAULT_TOP_P, gt=0.0, le=1.0)
    top_k: int = Field(DEFAULT_TOP_K, ge=0, description="0 disables top-k")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="same seed, same prompt: same output")
    max_new_tokens: int | None = Field(None, ge=1, le=8192)
    max_speech_seconds: float | None = Field(None, gt=0, description="speech output budget (25 tokens/s)")
    speaker: int | None = Field(None, ge=0, description="vocoder speaker index (speakers.txt); default 2")
    style: int | None = Field(None, ge=0, description="base vocoder style index (styles.txt); default 8")


class TextInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str = Field(min_length=1)


class SpeechInput(BaseModel):
    """Speech as base64 audio bytes (any common format) or as a unit token string like `[Hu12][Hu7]`."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["speech"]
    audio_base64: str | None = Field(None, min_length=1)
    tokens: str | None = Field(None, min_length=1)


PromptItem = TextInput | SpeechInput
ResponseFormat = Literal["json", "wav", "pcm"]


class OutputFields(BaseModel):
    """How the answer is sent: whole (JSON, WAV, raw PCM16) or streamed while generated (WAV or PCM16)."""

    response_format: ResponseFormat
    stream: bool = Field(False, description="send audio as it is generated (speech output, wav or pcm)")

    @model_validator(mode="after")
    def _streams_audio_only(self):
        if self.stream and self.response_format == "json":
            raise ValueError("stream=true sends audio: use response_format 'wav' or 'pcm'")
        return self


class GenerateRequest(SamplingFields, OutputFields):
    inputs: list[PromptItem] = Field(min_length=1, max_length=64)
    output_modality: OutputModality = OutputModality.ARBITRARY
    response_format: ResponseFormat = "json"


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: list[PromptItem] = Field(default_factory=list, max_length=64, description="may be empty")
    candidates: list[PromptItem] = Field(min_length=1, max_length=64, description="continuations to score")


class CandidateScoreBody(BaseModel):
    index: int
    logprob: float = Field(description="sum of the LM's log-probabilities of the candidate's tokens")
    tokens: int = Field(description="the candidate's tokens (after the prompt; a leading modality marker excluded)")
    normalized_logprob: float = Field(description="logprob / tokens")


class ScoreResponse(BaseModel):
    prompt_tokens: int
    scores: list[CandidateScoreBody] = Field(description="one per candidate, in order")
    best: int = Field(description="index of the highest logprob")
    best_normalized: int = Field(description="index of the highest normalized_logprob")


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: list[PromptItem] = Field(min_length=1, max_length=64, description="what to classify")
    labels: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        None, min_length=2, max_length=64, description="default: the labels of the server's example pool"
    )
    shots: int | None = Field(None, ge=0, description="examples from the server's pool, in its order; default all")
    normalize: bool = Field(False, description="pick the label by token-normalised log-likelihood")


class LabelScore(BaseModel):
    label: str
    logprob: float
    tokens: int
    normalized_logprob: float


class ClassifyResponse(BaseModel):
    label: str = Field(description="the most likely label")
    scores: list[LabelScore] = Field(description="one per label, in order")
    shots: int = Field(description="examples from the pool in the prompt")
    prompt_tokens: int


class UnitStreams(BaseModel):
    """Raw units as `/v1/tokenize` returns them: HuBERT 25 Hz, pitch 12.5 Hz, style 1 Hz (expressive)."""

    model_config = ConfigDict(extra="forbid")
    hubert: list[int] = Field(min_length=1, max_length=100_000)
    pitch: list[int] = Field(default_factory=list, max_length=50_000)
    style: list[int] = Field(default_factory=list, max_length=10_000)


class SynthesizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens: str | None = Field(None, min_length=1, description="unit tokens, e.g. [Hu12][Hu7] or [St3][Pi9][Hu12]")
    units: UnitStreams | None = Field(None, description="raw unit streams instead of tokens (resynthesis)")
    speaker: int | None = Field(None, ge=0, description="vocoder speaker index (speakers.txt); default 2")
    style: int | None = Field(None, ge=0, description="base vocoder's global style (styles.txt); default 8")
    predict_durations: bool = Field(True, description="false for raw undeduplicated 25 Hz units")
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="picks the fallback style when expressive tokens have none"
    )


class OutputSegmentBody(BaseModel):
    modality: Literal["text", "speech"]
    text: str | None = None
    tokens: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    generated_tokens: int
    audio_seconds: float


class GenerationResponse(BaseModel):
    text: str
    tokens: str = Field(description="generated speech as a unit-token string")
    units: list[int] = Field(description="generated HuBERT units (deduplicated, as the LM writes them)")
    pitch: list[int] | None = Field(None, description="expressive: pitch unit per HuBERT unit")
    style: list[int] | None = Field(None, description="expressive: style unit per HuBERT unit")
    durations: list[int] | None = Field(None, description="vocoder frames (40 ms) per unit, when audio was made")
    segments: list[OutputSegmentBody]
    audio_base64: str | None = Field(None, description="16 kHz mono 16-bit WAV, when speech was generated")
    finish_reason: str
    usage: Usage


class TokenizeResponse(BaseModel):
    tokens: str = Field(description="the interleaved token string the LM sees (deduplicated)")
    units: dict[str, list[int]] = Field(
        description="raw undeduplicated units per stream: hubert (25 Hz); expressive also pitch (12.5 Hz), style (1 Hz)"
    )
    duration_seconds: float


class ErrorBody(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class Liveness(BaseModel):
    status: Literal["ok", "engine_failed"]


class Readiness(BaseModel):
    ready: bool
    draining: bool | None = Field(None, description="true while a SIGTERM drain refuses new work")
    variant: Literal["base", "expressive"] | None = None
    speakers: list[str] | None = Field(None, description="the vocoder's speakers (index = `speaker`)")
    gpu_memory: dict[str, float] | None = Field(
        None, description="GiB of the GPU shared by the speech stages and the in-process vLLM: total, speech, engine"
    )


class ServerDescription(BaseModel):
    """What this server serves, for clients (the voice page) to show."""

    model: str = Field(description="the served model's id, as `/v1/models` lists it")
    variant: Literal["base", "expressive"]
    checkpoint_root: str = Field(description="the checkpoint root the server was started on")
    random_weights: bool = Field(description="a tiny bundle of random weights (its speech is noise), not Spirit LM")
