"""The `/v1/realtime` websocket protocol: OpenAI's GA Realtime events (docs/realtime.md's subset) as pydantic models.

Every message is one JSON object with a `type`. Client events are validated here; anything unknown or
malformed is answered with an `error` event (never a dropped socket). Fields OpenAI defines that this server
does not act on (tools, tracing, ...) are accepted, ignored and named in `session.updated`. Audio travels as
base64 in the session's formats: `audio/pcm` (PCM16 LE mono, 24 kHz), `audio/pcmu` / `audio/pcma` (G.711, 8 kHz).
The model works at 16 kHz; the server resamples. The server's events are models here too, in the shapes of
`openai.types.realtime` (the tests check them against the SDK), so a client such as `spiritserve chat` can
parse them with `SERVER_EVENTS`.
"""

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from spiritserve.engine.engine import DEFAULT_TEMPERATURE, DEFAULT_TOP_P
from spiritserve.voices import VOICE_DESCRIPTION

PROTOCOL = "spiritserve.realtime.v1"  # also the subprotocol browsers offer beside their key (admission.py)

# OpenAI session fields accepted and ignored (not yet acted on), per level of the session object.
IGNORED_SESSION_FIELDS = ("tools", "tool_choice", "tracing", "include", "prompt", "truncation",
                          "parallel_tool_calls", "reasoning")  # fmt: skip
IGNORED_INPUT_FIELDS = ("noise_reduction", "transcription")
IGNORED_OUTPUT_FIELDS = ("speed",)
IGNORED_TURN_DETECTION_FIELDS = ("idle_timeout_ms",)
IGNORED_RESPONSE_FIELDS = ("tools", "tool_choice", "prompt", "parallel_tool_calls", "reasoning")


TokenLimit = Annotated[int, Field(ge=1, le=4096)] | Literal["inf"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PcmFormat(_Strict):
    """PCM16 little-endian mono at 24 kHz (OpenAI's only PCM rate)."""

    type: Literal["audio/pcm"]
    rate: Literal[24000] = 24000


class PcmuFormat(_Strict):
    """G.711 μ-law, 8 kHz."""

    type: Literal["audio/pcmu"]


class PcmaFormat(_Strict):
    """G.711 A-law, 8 kHz."""

    type: Literal["audio/pcma"]


AudioFormat = Annotated[PcmFormat | PcmuFormat | PcmaFormat, Field(discriminator="type")]


def format_rate(audio_format: PcmFormat | PcmuFormat | PcmaFormat) -> int:
    return audio_format.rate if isinstance(audio_format, PcmFormat) else 8_000


def bytes_per_sample(audio_format: PcmFormat | PcmuFormat | PcmaFormat) -> int:
    return 2 if isinstance(audio_format, PcmFormat) else 1


class ServerVad(_Strict):
    """End-of-turn detection with Silero VAD (spiritserve/vad.py): `threshold` is the speech probability a 32 ms
    window needs to start speech, as at OpenAI; the turn ends after `silence_duration_ms` below `threshold` − 0.15.
    Where Silero cannot load, an energy gate stands in (logged at start-up): RMS above 0.04 × `threshold`."""

    type: Literal["server_vad"]
    threshold: float = Field(0.5, gt=0, le=1, description="speech probability that starts speech (Silero's)")
    prefix_padding_ms: int = Field(300, ge=0, le=5000, description="audio kept before the speech start")
    silence_duration_ms: int = Field(500, ge=100, le=5000, description="silence that ends the user's turn")
    create_response: bool = Field(True, description="start a response when the turn ends")
    interrupt_response: bool = Field(True, description="cancel the running response when speech starts")
    idle_timeout_ms: int | None = None  # accepted, ignored


class AudioInput(_Strict):
    format: AudioFormat = PcmFormat(type="audio/pcm")
    turn_detection: ServerVad | None = ServerVad(type="server_vad")
    noise_reduction: Any = None  # accepted, ignored
    transcription: Any = None  # accepted, ignored


class AudioOutput(_Strict):
    format: AudioFormat = PcmFormat(type="audio/pcm")
    voice: str | int | None = Field(None, description=VOICE_DESCRIPTION)
    speed: float | None = None  # accepted, ignored


class AudioConfig(_Strict):
    input: AudioInput = AudioInput()
    output: AudioOutput = AudioOutput()


class _IgnoredOpenAIFields(_Strict):
    """Valid OpenAI fields of sessions and responses that are accepted and left unused (no function calling,
    stored prompts or reasoning here), so clients that send them are not refused."""

    tools: Any = None
    tool_choice: Any = None
    prompt: Any = None
    parallel_tool_calls: Any = None
    reasoning: Any = None


class SessionConfig(_IgnoredOpenAIFields):
    """The effective session (`session.update` changes parts of it; omitted fields keep their value)."""

    type: Literal["realtime"] = "realtime"
    model: str | None = Field(None, max_length=256, description="ignored: the server's model answers")
    output_modalities: list[Literal["audio", "text"]] = Field(["audio"], min_length=1, max_length=1)
    instructions: str = Field("", max_length=20_000, description="text put first in every prompt")
    max_output_tokens: TokenLimit = Field("inf", description="generated tokens per response")
    audio: AudioConfig = AudioConfig()
    # spiritserve extensions (the SDK's types tolerate extra fields)
    temperature: float = Field(DEFAULT_TEMPERATURE, ge=0, le=2)
    top_p: float = Field(DEFAULT_TOP_P, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)  # the engine takes 64-bit seeds
    max_response_seconds: float = Field(10.0, gt=0, le=120, description="speech per response")
    # more OpenAI fields accepted and ignored
    tracing: Any = None
    include: Any = None
    truncation: Any = None


class _Event(_Strict):
    event_id: str | None = Field(None, max_length=128, description="echoed back in errors about this event")


class SessionUpdate(_Event):
    type: Literal["session.update"]
    session: dict = Field(description="parts of the session to change")


class InputAudioAppend(_Event):
    type: Literal["input_audio_buffer.append"]
    audio: str = Field(description="base64 audio in the session's input format")


class InputAudioCommit(_Event):
    type: Literal["input_audio_buffer.commit"]


class InputAudioClear(_Event):
    type: Literal["input_audio_buffer.clear"]


class ResponseCancel(_Event):
    type: Literal["response.cancel"]
    response_id: str | None = Field(None, max_length=128)


class MessageContent(_Strict):
    """One part of a message: text (`output_text` in an assistant's), or audio (base64, in the session's input
    format)."""

    type: Literal["input_text", "output_text", "input_audio"]
    text: str | None = Field(None, min_length=1, max_length=20_000)
    audio: str | None = Field(None, min_length=1)
    transcript: str | None = Field(None, max_length=20_000)  # kept for reference only, as at OpenAI


class MessageItem(_Strict):
    """A message added to the conversation. Spirit LM is a base model: the parts of every message, in order,
    continue the prompt whatever the role."""

    type: Literal["message"]
    role: Literal["user", "system", "assistant"]
    content: list[MessageContent] = Field(min_length=1, max_length=64)
    id: str | None = Field(None, min_length=1, max_length=64)
    object: Literal["realtime.item"] | None = None
    status: Literal["completed", "incomplete", "in_progress"] | None = None


class ItemReference(_Strict):
    """An item of the conversation, by id, in `response.input`."""

    type: Literal["item_reference"]
    id: str = Field(min_length=1, max_length=64)


class ResponseOverrides(_IgnoredOpenAIFields):
    """`response.create`'s `response`: per-response changes (`audio` is not supported yet)."""

    output_modalities: list[Literal["audio", "text"]] | None = Field(None, min_length=1, max_length=1)
    instructions: str | None = Field(None, max_length=20_000)
    max_output_tokens: TokenLimit | None = None
    conversation: Literal["auto", "none"] | None = Field(None, description="none: the answer stays out of it")
    input: list[Annotated[MessageItem | ItemReference, Field(discriminator="type")]] | None = Field(
        None, max_length=256, description="the prompt's items instead of the conversation"
    )
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = Field(
        None, max_length=16, description="echoed in the response object"
    )


class ResponseCreate(_Event):
    type: Literal["response.create"]
    response: ResponseOverrides | None = None


class ConversationItemCreate(_Event):
    type: Literal["conversation.item.create"]
    item: MessageItem
    previous_item_id: str | None = Field(None, max_length=64, description='insert after this item ("root": first)')


class ConversationItemDelete(_Event):
    type: Literal["conversation.item.delete"]
    item_id: str = Field(max_length=64)


class ConversationItemRetrieve(_Event):
    type: Literal["conversation.item.retrieve"]
    item_id: str = Field(max_length=64)


class ConversationItemTruncate(_Event):
    """Cut an assistant's spoken answer to the audio the user heard (`audio_end_ms` into it)."""

    type: Literal["conversation.item.truncate"]
    item_id: str = Field(max_length=64)
    content_index: Literal[0]
    audio_end_ms: int = Field(ge=0)


ClientEvent = Annotated[
    SessionUpdate | InputAudioAppend | InputAudioCommit | InputAudioClear | ResponseCreate | ResponseCancel
    | ConversationItemCreate | ConversationItemDelete | ConversationItemRetrieve | ConversationItemTruncate,
    Field(discriminator="type"),
]  # fmt: skip
CLIENT_EVENTS = TypeAdapter(ClientEvent)


def merge_session(current: dict, update: dict) -> dict:
    """`current` with `update`'s fields: `audio`, `audio.input` and `audio.output` merge field by field; other
    values (a format, turn_detection) are replaced whole."""
    merged = {**current, **update}
    if isinstance(current.get("audio"), dict) and isinstance(update.get("audio"), dict):
        audio = {**current["audio"], **update["audio"]}
        for side in ("input", "output"):
            if isinstance(current["audio"].get(side), dict) and isinstance(update["audio"].get(side), dict):
                audio[side] = {**current["audio"][side], **update["audio"][side]}
        merged["audio"] = audio
    return merged


def ignored_fields(update: dict) -> list[str]:
    """The OpenAI fields in a `session.update` that this server accepts but does not act on."""
    names = [name for name in IGNORED_SESSION_FIELDS if name in update]
    audio = update.get("audio") if isinstance(update.get("audio"), dict) else {}
    for side, fields in (("input", IGNORED_INPUT_FIELDS), ("output", IGNORED_OUTPUT_FIELDS)):
        part = audio.get(side) if isinstance(audio.get(side), dict) else {}
        names += [f"audio.{side}.{name}" for name in fields if name in part]
    turn = (audio.get("input") or {}).get("turn_detection") if isinstance(audio.get("input"), dict) else None
    if isinstance(turn, dict):
        names += [f"audio.input.turn_detection.{name}" for name in IGNORED_TURN_DETECTION_FIELDS if name in turn]
    return names


def new_id(prefix: str) -> str:
    """An id in OpenAI's shape (`sess_…`, `item_…`, `resp_…`, `event_…`)."""
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


class RealtimeError(Exception):
    """A client event that cannot be applied: answered with an `error` event carrying `code` and `param`."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.param = code, param


def describe_session(config: SessionConfig, session_id: str, model: str, voice: str | None) -> dict[str, Any]:
    """The effective session, in the GA shape (OpenAI fields accepted but not acted on are left out)."""
    session = config.model_dump(exclude=set(IGNORED_SESSION_FIELDS))
    session["audio"]["input"] = {key: session["audio"]["input"][key] for key in ("format", "turn_detection")}
    if session["audio"]["input"]["turn_detection"]:
        session["audio"]["input"]["turn_detection"].pop("idle_timeout_ms")
    session["audio"]["output"] = {"format": session["audio"]["output"]["format"], "voice": voice}
    return {**session, "id": session_id, "object": "realtime.session", "model": model}


# Server events. Every field is sent, nulls included: the SDK's types require several of them.


class AudioPart(_Strict):
    """Audio content. Spirit LM speaks units, not words: an answer has no transcript (a client's audio keeps the
    transcript it was sent with)."""

    type: Literal["input_audio", "output_audio", "audio"]
    transcript: str | None = None


class TextPart(_Strict):
    type: Literal["input_text", "output_text", "text"]
    text: str


ContentPart = Annotated[AudioPart | TextPart, Field(discriminator="type")]


class Item(_Strict):
    """A conversation item as the client sees it (audio data left out)."""

    id: str
    object: Literal["realtime.item"] = "realtime.item"
    type: Literal["message"] = "message"
    role: Literal["user", "system", "assistant"]
    status: Literal["completed", "incomplete", "in_progress"]
    content: list[ContentPart]


class ResponseAudioOutput(_Strict):
    format: AudioFormat
    voice: str | None


class ResponseAudio(_Strict):
    output: ResponseAudioOutput


class ResponseError(_Strict):
    type: Literal["server_error"] = "server_error"
    code: str
    message: str


class StatusDetails(_Strict):
    type: Literal["cancelled", "failed"]
    reason: str | None
    error: ResponseError | None


class InputTokenDetails(_Strict):
    audio_tokens: int = 0
    text_tokens: int = 0
    cached_tokens: int = 0


class OutputTokenDetails(_Strict):
    audio_tokens: int
    text_tokens: int


class Usage(_Strict):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_token_details: InputTokenDetails = InputTokenDetails()
    output_token_details: OutputTokenDetails
    output_audio_seconds: float  # a spiritserve extension


class Timings(_Strict):
    """A spiritserve extension: seconds from the response's start to its first delta, and to its end."""

    first_delta_s: float | None
    total_s: float


class ResponseObject(_Strict):
    """A response as `response.created` describes it."""

    id: str
    object: Literal["realtime.response"] = "realtime.response"
    output_modalities: list[Literal["audio", "text"]]
    max_output_tokens: TokenLimit
    metadata: dict[str, str] | None
    conversation_id: str | None
    audio: ResponseAudio
    status: Literal["in_progress", "completed", "cancelled", "failed"]
    output: list[Item]


class FinishedResponse(ResponseObject):
    """A response as `response.done` describes it; `units` and `timings` are spiritserve extensions."""

    status_details: StatusDetails | None
    usage: Usage
    units: str | None  # a spoken answer's unit string
    timings: Timings


class _ServerEvent(_Strict):
    event_id: str = Field(default_factory=lambda: new_id("event"))
    type: str


class SessionCreated(_ServerEvent):
    type: Literal["session.created"] = "session.created"
    protocol: str = PROTOCOL
    session: dict[str, Any]


class SessionUpdated(_ServerEvent):
    type: Literal["session.updated"] = "session.updated"
    session: dict[str, Any]
    ignored_fields: list[str]  # OpenAI fields accepted and not acted on


class InputAudioBufferCleared(_ServerEvent):
    type: Literal["input_audio_buffer.cleared"] = "input_audio_buffer.cleared"


class SpeechStarted(_ServerEvent):
    type: Literal["input_audio_buffer.speech_started"] = "input_audio_buffer.speech_started"
    audio_start_ms: int
    item_id: str


class SpeechStopped(_ServerEvent):
    type: Literal["input_audio_buffer.speech_stopped"] = "input_audio_buffer.speech_stopped"
    audio_end_ms: int
    item_id: str


class InputAudioBufferCommitted(_ServerEvent):
    type: Literal["input_audio_buffer.committed"] = "input_audio_buffer.committed"
    item_id: str
    previous_item_id: str | None


class ConversationItemAdded(_ServerEvent):
    type: Literal["conversation.item.added"] = "conversation.item.added"
    item: Item
    previous_item_id: str | None


class ConversationItemDone(_ServerEvent):
    type: Literal["conversation.item.done"] = "conversation.item.done"
    item: Item
    previous_item_id: str | None


class ConversationItemDeleted(_ServerEvent):
    type: Literal["conversation.item.deleted"] = "conversation.item.deleted"
    item_id: str


class ConversationItemRetrieved(_ServerEvent):
    type: Literal["conversation.item.retrieved"] = "conversation.item.retrieved"
    item: Item


class ConversationItemTruncated(_ServerEvent):
    type: Literal["conversation.item.truncated"] = "conversation.item.truncated"
    item_id: str
    content_index: int
    audio_end_ms: int


class ResponseCreated(_ServerEvent):
    type: Literal["response.created"] = "response.created"
    response: ResponseObject


class ResponseOutputItemAdded(_ServerEvent):
    type: Literal["response.output_item.added"] = "response.output_item.added"
    response_id: str
    output_index: int
    item: Item


class ResponseOutputItemDone(_ServerEvent):
    type: Literal["response.output_item.done"] = "response.output_item.done"
    response_id: str
    output_index: int
    item: Item


class _ContentEvent(_ServerEvent):
    """An event about one content part of a response's output item."""

    response_id: str
    item_id: str
    output_index: int
    content_index: int


class ResponseContentPartAdded(_ContentEvent):
    type: Literal["response.content_part.added"] = "response.content_part.added"
    part: ContentPart


class ResponseContentPartDone(_ContentEvent):
    type: Literal["response.content_part.done"] = "response.content_part.done"
    part: ContentPart


class ResponseOutputAudioDelta(_ContentEvent):
    type: Literal["response.output_audio.delta"] = "response.output_audio.delta"
    delta: str  # base64 audio in the session's output format


class ResponseOutputAudioDone(_ContentEvent):
    type: Literal["response.output_audio.done"] = "response.output_audio.done"


class ResponseOutputTextDelta(_ContentEvent):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    delta: str


class ResponseOutputTextDone(_ContentEvent):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    text: str


class ResponseDone(_ServerEvent):
    type: Literal["response.done"] = "response.done"
    response: FinishedResponse


class ErrorDetail(_Strict):
    type: Literal["invalid_request_error"] = "invalid_request_error"
    code: str
    message: str
    event_id: str | None  # the client event at fault
    param: str | None  # the field at fault


class ErrorEvent(_ServerEvent):
    type: Literal["error"] = "error"
    error: ErrorDetail


ServerEvent = Annotated[
    SessionCreated | SessionUpdated | InputAudioBufferCleared | SpeechStarted | SpeechStopped
    | InputAudioBufferCommitted | ConversationItemAdded | ConversationItemDone | ConversationItemDeleted
    | ConversationItemRetrieved | ConversationItemTruncated | ResponseCreated | ResponseOutputItemAdded
    | ResponseOutputItemDone | ResponseContentPartAdded | ResponseContentPartDone | ResponseOutputAudioDelta
    | ResponseOutputAudioDone | ResponseOutputTextDelta | ResponseOutputTextDone | ResponseDone | ErrorEvent,
    Field(discriminator="type"),
]  # fmt: skip
SERVER_EVENTS = TypeAdapter(ServerEvent)


def validation_message(exc: ValidationError) -> str:
    """A pydantic error as one line: each bad field's location and what is wrong with it."""
    parts = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "a message must be a JSON object"
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)


def error_event(code: str, message: str, event_id: str | None = None, param: str | None = None) -> ErrorEvent:
    return ErrorEvent(error=ErrorDetail(code=code, message=message, event_id=event_id, param=param))
