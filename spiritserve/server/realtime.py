"""`/v1/realtime`: streaming voice chat over a websocket (OpenAI-Realtime-style events, see docs/realtime.md).

One `RealtimeSession` per connection holds the input audio buffer, the conversation so far (user and model
turns as unit strings or text, trimmed oldest-first to a token budget) and at most one running response.
A response streams audio (or text) deltas while vLLM generates; `response.cancel`, a new commit, or —
with server VAD — new user speech cancels it at once, which aborts its engine request.
"""

import asyncio
import base64
import contextlib
import json
import logging
import time
import uuid
from typing import Literal

import numpy as np
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from spiritserve.errors import SpiritServeError
from spiritserve.pipeline import SamplingOptions, SpiritPipeline
from spiritserve.resample import resample
from spiritserve.server.audio_io import SAMPLE_RATE, decode_pcm16, encode_pcm16
from spiritserve.server.realtime_protocol import (
    CLIENT_EVENTS,
    OUTPUT_SAMPLE_RATE,
    PROTOCOL,
    InputAudioAppend,
    InputAudioClear,
    InputAudioCommit,
    ResponseCancel,
    ResponseCreate,
    SessionConfig,
    SessionUpdate,
    TurnDetection,
    error_event,
)
from spiritserve.tokens import Modality, OutputModality, PromptSegment, build_prompt

logger = logging.getLogger(__name__)
router = APIRouter()
TRY_AGAIN_LATER = 1013  # websocket close code: the server is at its session limit


class EnergyVad:
    """End-of-turn detection from frame energy: speech starts when a 20 ms frame's RMS passes the
    threshold, and stops after `silence_ms` of quiet following at least `min_speech_ms` of speech."""

    def __init__(self, config: TurnDetection, sample_rate: int) -> None:
        self.config = config
        self.frame = sample_rate // 50
        self._pending = np.zeros(0, dtype=np.float32)
        self._speaking = False
        self._speech_frames = 0
        self._silent_frames = 0

    def push(self, samples: np.ndarray) -> list[Literal["speech_started", "speech_stopped"]]:
        self._pending = np.concatenate([self._pending, samples])
        events: list[Literal["speech_started", "speech_stopped"]] = []
        while len(self._pending) >= self.frame:
            frame, self._pending = self._pending[: self.frame], self._pending[self.frame :]
            loud = float(np.sqrt(np.mean(frame**2))) > self.config.threshold
            if loud and not self._speaking:
                self._speaking, self._speech_frames, self._silent_frames = True, 0, 0
                events.append("speech_started")
            if self._speaking:
                self._speech_frames += 1
                self._silent_frames = 0 if loud else self._silent_frames + 1
                long_enough = self._speech_frames * 20 >= self.config.min_speech_ms + self.config.silence_ms
                if self._silent_frames * 20 >= self.config.silence_ms and long_enough:
                    self._speaking = False
                    events.append("speech_stopped")
        return events


class RealtimeSession:
    def __init__(self, websocket: WebSocket, pipeline: SpiritPipeline, settings, admission) -> None:
        self.websocket = websocket
        self.admission = admission
        self.pipeline = pipeline
        self.settings = settings
        self.id = f"sess_{uuid.uuid4().hex[:16]}"
        self.config = SessionConfig()
        self.buffer = bytearray()  # PCM16 LE mono at config.input_sample_rate
        self.context: list[PromptSegment] = []
        self.vad: EnergyVad | None = None
        self.response: asyncio.Task | None = None
        self._send_lock = asyncio.Lock()

    async def send(self, event: dict) -> None:
        async with self._send_lock:
            await self.websocket.send_json(event)

    async def run(self) -> None:
        await self.send({"type": "session.created", "protocol": PROTOCOL, "session": self._describe()})
        try:
            while True:
                try:
                    message = await asyncio.wait_for(self.websocket.receive(), self.settings.realtime_idle_timeout_s)
                except TimeoutError:
                    if self.response is not None and not self.response.done():
                        continue  # the client is listening to a response, not idle
                    await self.send(error_event("idle_timeout", "no message for too long; closing the session"))
                    await self.websocket.close(code=1000, reason="idle timeout")
                    return
                if message["type"] == "websocket.disconnect":
                    return
                await self._handle(message.get("text"), message.get("bytes"))
        finally:
            await self._cancel_response()

    async def _handle(self, text: str | None, data: bytes | None) -> None:
        if text is None:
            await self.send(error_event("binary_not_supported", "send JSON text messages; audio goes in base64"))
            return
        if len(text.encode()) > self.settings.realtime_max_message_bytes:
            limit = self.settings.realtime_max_message_bytes
            await self.send(error_event("message_too_large", f"a message may be at most {limit} bytes"))
            return
        try:
            payload = json.loads(text)
        except (ValueError, RecursionError) as exc:  # not JSON, nested too deep, an integer of 5000 digits, ...
            await self.send(error_event("invalid_json", f"the message is not valid JSON: {_reason(exc)}"))
            return
        try:
            event = CLIENT_EVENTS.validate_python(payload)
        except ValidationError as exc:
            await self.send(error_event("invalid_event", _describe(exc)))
            return
        try:
            await self._dispatch(event)
        except SpiritServeError as exc:
            await self.send(error_event(type(exc).__name__, str(exc), event.event_id))
        except WebSocketDisconnect:
            raise
        except Exception:  # a bug, not the client's fault: say so, and keep the session
            logger.exception("session %s: %s failed", self.id, event.type)
            await self.send(error_event("server_error", "the server failed to handle this event", event.event_id))

    async def _dispatch(self, event) -> None:
        if isinstance(event, SessionUpdate):
            try:
                self.config = SessionConfig.model_validate({**self.config.model_dump(), **event.session})
            except ValidationError as exc:
                await self.send(error_event("invalid_session", _describe(exc), event.event_id))
                return
            td = self.config.turn_detection
            self.vad = EnergyVad(td, self.config.input_sample_rate) if td else None
            await self.send({"type": "session.updated", "session": self._describe()})
        elif isinstance(event, InputAudioAppend):
            await self._append(event)
        elif isinstance(event, InputAudioCommit):
            await self._commit(event.event_id)
        elif isinstance(event, InputAudioClear):
            self.buffer.clear()
            await self.send({"type": "input_audio_buffer.cleared"})
        elif isinstance(event, ResponseCreate):
            if self.response is not None and not self.response.done():
                message = "a response is already running; cancel it first"
                await self.send(error_event("response_already_active", message, event.event_id))
            elif not self.context:
                await self.send(error_event("empty_conversation", "commit some audio first", event.event_id))
            else:
                self._start_response()
        elif isinstance(event, ResponseCancel):
            if self.response is None or self.response.done():
                await self.send(error_event("no_active_response", "there is no response to cancel", event.event_id))
            else:
                await self._cancel_response()

    async def _append(self, event: InputAudioAppend) -> None:
        try:
            chunk = base64.b64decode(event.audio, validate=True)
        except ValueError as exc:  # binascii.Error, or non-ASCII characters (a plain ValueError)
            await self.send(error_event("invalid_audio", f"'audio' is not valid base64: {exc}", event.event_id))
            return
        if len(chunk) % 2:
            await self.send(error_event("invalid_audio", "PCM16 audio needs an even byte count", event.event_id))
            return
        # PCM16 bytes within the seconds limit and, as float32 once committed (twice the bytes), the decoded-size limit.
        limit = min(
            int(self.settings.max_audio_seconds * self.config.input_sample_rate * 2),
            self.settings.max_decoded_bytes // 4 * 2,
        )
        if len(self.buffer) + len(chunk) > limit:
            seconds = limit / 2 / self.config.input_sample_rate
            message = f"the input buffer holds at most {seconds:.4g} s; commit or clear it"
            await self.send(error_event("input_audio_buffer_full", message, event.event_id))
            return
        self.buffer.extend(chunk)
        if self.vad is None:
            return
        for change in self.vad.push(decode_pcm16(chunk)):
            await self.send({"type": f"input_audio_buffer.{change}"})
            if change == "speech_started":
                await self._cancel_response()  # barge-in
            else:
                await self._commit(event.event_id)

    async def _commit(self, event_id: str | None) -> None:
        if not self.buffer:
            await self.send(error_event("input_audio_buffer_commit_empty", "the input buffer is empty", event_id))
            return
        await self._cancel_response()  # a new user turn interrupts the model
        samples = decode_pcm16(bytes(self.buffer))
        self.buffer.clear()
        # The whole turn at once, as REST resamples a whole upload (per-chunk resampling would differ at the seams).
        samples = await asyncio.to_thread(resample, samples, self.config.input_sample_rate, SAMPLE_RATE)
        units = await self.pipeline.tokenize(samples)  # BadAudioError (too short) → error event
        item_id = f"item_{uuid.uuid4().hex[:16]}"
        self.context.append(PromptSegment(Modality.SPEECH, units.to_string()))
        await self.send({"type": "input_audio_buffer.committed", "item_id": item_id, "event_id": event_id})
        self._start_response()

    def _start_response(self) -> None:
        self.response = asyncio.create_task(self._respond(f"resp_{uuid.uuid4().hex[:16]}"))

    async def _cancel_response(self) -> None:
        if self.response is not None and not self.response.done():
            self.response.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.response

    def _prompt_within_budget(self, output: OutputModality) -> list[PromptSegment]:
        """Drop the oldest turns until the prompt fits the session's context budget."""
        segments = list(self.context)
        budget = self.settings.realtime_context_tokens
        encode = self.pipeline.tokenizer.encode_prompt
        while len(segments) > 1 and len(encode(build_prompt(segments, output))) > budget:
            segments.pop(0)
        self.context = segments
        return segments

    async def _respond(self, response_id: str) -> None:
        started = time.perf_counter()
        speech = self.config.output_modality == "speech"
        output = OutputModality.SPEECH if speech else OutputModality.TEXT
        options = SamplingOptions(
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            seed=self.config.seed,
            max_speech_seconds=self.config.max_response_seconds,
            max_new_tokens=None if speech else self.config.max_response_tokens,
            speaker=self.config.speaker,
        )
        status, generated, audio_samples, first_delta_s, prompt_tokens = "completed", "", 0, None, 0
        self.admission.realtime_responses += 1
        try:
            await self.send({"type": "response.created", "response": {"id": response_id, "status": "in_progress"}})
            request = self.pipeline.request_for(self._prompt_within_budget(output), output, options)
            prompt_tokens = len(request.prompt_ids)
            if speech:
                async for delta in self.pipeline.open_speech_stream(request, options, response_id):
                    generated = delta.spoken if delta.spoken is not None else generated + delta.tokens
                    if len(delta.audio):
                        first_delta_s = first_delta_s or time.perf_counter() - started
                        audio_samples += len(delta.audio)
                        audio = base64.b64encode(encode_pcm16(delta.audio)).decode()
                        await self.send({"type": "response.output_audio.delta", "response_id": response_id,
                                         "delta": audio})  # fmt: skip
            else:
                async for text in self.pipeline.stream_text(request, response_id):
                    first_delta_s = first_delta_s or time.perf_counter() - started
                    generated += text
                    await self.send({"type": "response.output_text.delta", "response_id": response_id, "delta": text})
        except asyncio.CancelledError:
            status = "cancelled"
        except SpiritServeError as exc:
            status = "failed"
            await self.send(error_event(type(exc).__name__, str(exc)))
        except Exception:  # a bug, not the client's fault: say so instead of leaving the client waiting
            logger.exception("session %s: response %s failed", self.id, response_id)
            status = "failed"
            await self.send(error_event("server_error", "the response failed inside the server"))
        finally:
            self.admission.realtime_responses -= 1
        # Speech: one "[" per unit token. Text: re-encoded (SentencePiece round-trips what it decoded), less BOS.
        output_tokens = generated.count("[") if speech else len(self.pipeline.tokenizer.encode_prompt(generated)) - 1
        metrics = self.websocket.app.state.metrics
        metrics.generated_tokens.labels(self.config.output_modality).inc(output_tokens)
        if speech:
            metrics.observe_speech("/v1/realtime", first_delta_s, time.perf_counter() - started,
                                   audio_samples / OUTPUT_SAMPLE_RATE)  # fmt: skip
        if generated:
            modality = Modality.SPEECH if speech else Modality.TEXT
            self.context.append(PromptSegment(modality, generated))
        usage = {
            "input_tokens": prompt_tokens,
            "output_tokens": output_tokens,
            "output_audio_seconds": audio_samples / OUTPUT_SAMPLE_RATE,
        }
        timings = {"first_delta_s": first_delta_s, "total_s": time.perf_counter() - started}
        with contextlib.suppress(Exception):  # the socket may be gone (a cancel on disconnect)
            output = {"modality": self.config.output_modality, "tokens" if speech else "text": generated}
            await self.send({"type": "response.done", "response": {"id": response_id, "status": status,
                             "output": output, "usage": usage, "timings": timings}})  # fmt: skip

    def _describe(self) -> dict:
        return {"id": self.id, "output_audio_sample_rate": OUTPUT_SAMPLE_RATE, **self.config.model_dump()}


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "a message must be a JSON object"
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)


def _reason(exc: Exception) -> str:
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc)


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket) -> None:
    """Voice chat: see docs/realtime.md for the events."""
    app = websocket.app
    pipeline: SpiritPipeline | None = getattr(app.state, "pipeline", None)
    settings = app.state.settings
    # Select our subprotocol when offered (browsers sending the key as one need an answer naming a protocol).
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=PROTOCOL if PROTOCOL in offered else None)
    if pipeline is None or not pipeline.engine.is_healthy:
        await websocket.close(code=TRY_AGAIN_LATER, reason="the model is not loaded")
        return
    if app.state.admission.draining:
        await websocket.close(code=TRY_AGAIN_LATER, reason="the server is shutting down")
        return
    if app.state.realtime_sessions >= settings.realtime_max_sessions:
        await websocket.close(code=TRY_AGAIN_LATER, reason=f"at most {settings.realtime_max_sessions} sessions")
        return
    app.state.realtime_sessions += 1
    app.state.metrics.realtime_sessions.inc()
    try:
        await RealtimeSession(websocket, pipeline, settings, app.state.admission).run()
    except WebSocketDisconnect:
        pass
    finally:
        app.state.realtime_sessions -= 1
        app.state.metrics.realtime_sessions.dec()
