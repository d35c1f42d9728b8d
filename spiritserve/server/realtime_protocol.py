"""The `/v1/realtime` websocket protocol: a documented subset of OpenAI Realtime events, as pydantic models.

Every message is one JSON object with a `type`. Client events are validated here; anything unknown or
malformed is answered with an `error` event (never a dropped socket). Audio travels as base64 PCM16
little-endian mono: input at the session's `input_sample_rate`, output at 16 kHz. Version: `PROTOCOL`.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

PROTOCOL = "spiritserve.realtime.v1"
OUTPUT_SAMPLE_RATE = 16_000


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_id: str | None = Field(None, max_length=128, description="echoed back in errors about this event")


class TurnDetection(BaseModel):
    """Server-side end-of-speech detection: energy over 20 ms frames; a turn ends after `silence_ms`."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["server_vad"] = "server_vad"
    threshold: float = Field(0.02, gt=0, le=1, description="RMS above which a 20 ms frame is speech")
    silence_ms: int = Field(500, ge=100, le=5000, description="silence that ends the user's turn")
    min_speech_ms: int = Field(200, ge=20, le=5000, description="speech needed before a turn can end")


class SessionConfig(BaseModel):
    """What a client may set with `session.update` (all optional; omitted fields keep their value)."""

    model_config = ConfigDict(extra="forbid")
    output_modality: Literal["speech", "text"] = "speech"
    speaker: int | None = Field(None, ge=0)
    temperature: float = Field(0.8, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)  # the engine takes 64-bit seeds
    max_response_seconds: float = Field(10.0, gt=0, le=120)
    max_response_tokens: int = Field(100, ge=1, le=4096, description="text responses")
    input_sample_rate: int = Field(16_000, ge=8_000, le=48_000)
    turn_detection: TurnDetection | None = None


class SessionUpdate(_Event):
    type: Literal["session.update"]
    session: dict = Field(description="fields of SessionConfig to change")


class InputAudioAppend(_Event):
    type: Literal["input_audio_buffer.append"]
    audio: str = Field(description="base64 PCM16 LE mono at the session's input_sample_rate")


class InputAudioCommit(_Event):
    type: Literal["input_audio_buffer.commit"]


class InputAudioClear(_Event):
    type: Literal["input_audio_buffer.clear"]


class ResponseCreate(_Event):
    type: Literal["response.create"]


class ResponseCancel(_Event):
    type: Literal["response.cancel"]


ClientEvent = Annotated[
    SessionUpdate | InputAudioAppend | InputAudioCommit | InputAudioClear | ResponseCreate | ResponseCancel,
    Field(discriminator="type"),
]
CLIENT_EVENTS = TypeAdapter(ClientEvent)


def error_event(code: str, message: str, event_id: str | None = None) -> dict:
    return {
        "type": "error",
        "error": {"type": "invalid_request_error", "code": code, "message": message, "event_id": event_id},
    }
