"""Request and response bodies of the OpenAI-compatible routes (`/v1/chat/completions`, `/v1/audio/*`, `/v1/models`).

Field names and shapes follow OpenAI's API so that its SDKs parse the answers; what Spirit LM cannot do
(tools, logprobs, n > 1, stop strings, penalties) is accepted only at its neutral value and refused otherwise
with a 400 that names the field.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from spiritserve.engine.engine import DEFAULT_TEMPERATURE, DEFAULT_TOP_P
from spiritserve.server.schemas import MAX_SEED
from spiritserve.voices import VOICE_DESCRIPTION

MAX_MESSAGES = 64
AudioFormat = Literal["wav", "pcm16", "mp3", "flac", "opus"]
SpeechResponseFormat = Literal["wav", "pcm", "mp3", "flac", "opus"]
TranscriptionFormat = Literal["json", "text", "verbose_json"]


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    error: OpenAIErrorBody


# --- chat completions -------------------------------------------------------------------------------------------


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class InputAudio(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: str = Field(min_length=1, description="base64 audio bytes")
    format: str = Field("wav", description="wav, mp3, flac, ogg, …: the decoder reads the bytes, this is a hint")


class InputAudioPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["input_audio"]
    input_audio: InputAudio


ContentPart = Annotated[TextPart | InputAudioPart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    """A message; its parts, in order, join the interleaved prompt (the role only orders it: system first)."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | Annotated[list[ContentPart], Field(max_length=MAX_MESSAGES)] | None = None
    name: str | None = Field(None, description="accepted and ignored")


class AudioOutputOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    voice: str | int | None = Field(None, description=VOICE_DESCRIPTION)
    format: AudioFormat = "wav"


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ResponseFormatText(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="the served model's id or an alias (GET /v1/models); default: it")
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    modalities: list[Literal["text", "audio"]] = Field(
        default_factory=lambda: ["text"], min_length=1, description='["text"]: text answer; with "audio": speech'
    )
    audio: AudioOutputOptions | None = None
    temperature: float | None = Field(
        None, ge=0.0, le=2.0, description=f"default {DEFAULT_TEMPERATURE} (the reference's)"
    )
    top_p: float | None = Field(None, gt=0.0, le=1.0, description=f"default {DEFAULT_TOP_P} (the reference's)")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    max_completion_tokens: int | None = Field(None, ge=1, le=8192)
    max_tokens: int | None = Field(None, ge=1, le=8192, description="the older name of max_completion_tokens")
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Accepted only at their neutral values: Spirit LM is a base LM with one answer and no tools.
    n: int = Field(1, ge=1, le=1, description="only 1")
    logprobs: bool | None = Field(None, description="not supported: false or absent")
    top_logprobs: int | None = Field(None, ge=0, le=0, description="not supported")
    frequency_penalty: float = Field(0.0, ge=0.0, le=0.0, description="not supported: 0")
    presence_penalty: float = Field(0.0, ge=0.0, le=0.0, description="not supported: 0")
    tools: list[dict] | None = Field(None, max_length=0, description="not supported: absent or empty")
    tool_choice: Literal["none"] | None = None
    stop: str | list[str] | None = Field(None, max_length=0, description="not supported")
    response_format: ResponseFormatText | None = None
    user: str | None = Field(None, description="accepted and ignored")
    store: bool | None = Field(None, description="accepted and ignored (nothing is stored)")
    metadata: dict[str, str] | None = Field(None, description="accepted and ignored")

    @model_validator(mode="after")
    def _neutral_values_only(self):
        if self.logprobs:
            raise ValueError("logprobs are not supported")
        if self.stop:  # a plain string gets past max_length
            raise ValueError("stop sequences are not supported")
        return self


class ChatCompletionAudio(BaseModel):
    id: str
    data: str = Field(description="base64 audio in the asked format (16 kHz mono)")
    expires_at: int
    transcript: str = Field(description="always empty: Spirit LM answers in one modality")


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    audio: ChatCompletionAudio | None = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage


# --- audio ------------------------------------------------------------------------------------------------------


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="the served model's id or an alias; default: it")
    input: str = Field(min_length=1, description="the text; the answer is Spirit LM's speech after it")
    voice: str | int | None = Field(None, description=VOICE_DESCRIPTION)
    response_format: SpeechResponseFormat = "wav"
    speed: float = Field(1.0, ge=0.25, le=4.0, description="only 1.0")
    stream_format: Literal["audio", "sse"] = "audio"
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    max_speech_seconds: float | None = Field(None, gt=0, description="speech budget (default: the server's)")

    @model_validator(mode="after")
    def _supported(self):
        if self.speed != 1.0:
            raise ValueError("only speed 1.0 is supported")
        return self


class TranscriptionSegment(BaseModel):
    id: int
    start: float
    end: float
    text: str


class TranscriptionResponse(BaseModel):
    text: str
    task: Literal["transcribe"] | None = Field(None, description="verbose_json only")
    language: str | None = Field(None, description="verbose_json only")
    duration: float | None = Field(None, description="verbose_json only: the audio's length in seconds")
    segments: list[TranscriptionSegment] | None = Field(None, description="verbose_json only")


# --- models -----------------------------------------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
