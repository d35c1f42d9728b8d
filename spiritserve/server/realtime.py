"""`/v1/realtime`: streaming voice chat over a websocket, speaking OpenAI's GA Realtime events (docs/realtime.md).

One `RealtimeSession` per connection holds the input audio buffer (in the session's input format), the
conversation so far (user and model turns as unit strings or text, trimmed oldest-first to a token budget) and
at most one running response. `input_audio_buffer.commit` only commits; a response starts on `response.create`
or, with server VAD's `create_response`, when the user stops speaking. A response streams audio (resampled from
the model's 16 kHz to the output format) or text deltas while vLLM generates; `response.cancel` or — with
`interrupt_response` — new user speech cancels it at once, which aborts its engine request.
"""

import asyncio
import base64
import contextlib
import json
import logging
import math
import time
import uuid
from typing import Literal

import numpy as np
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from spiritserve.errors import BadRequestError, SpiritServeError
from spiritserve.pipeline import SamplingOptions, SpiritPipeline
from spiritserve.resample import resample
from spiritserve.server import g711
from spiritserve.server.audio_io import decode_pcm16, encode_pcm16
from spiritserve.server.realtime_protocol import (
    CLIENT_EVENTS,
    IGNORED_RESPONSE_FIELDS,
    IGNORED_SESSION_FIELDS,
    MIN_SPEECH_MS,
    MODEL_SAMPLE_RATE,
    PROTOCOL,
    ConversationItemCreate,
    InputAudioAppend,
    InputAudioClear,
    InputAudioCommit,
    PcmaFormat,
    PcmFormat,
    PcmuFormat,
    ResponseCancel,
    ResponseCreate,
    ServerVad,
    SessionConfig,
    SessionUpdate,
    bytes_per_sample,
    error_event,
    format_rate,
    ignored_fields,
    merge_session,
)
from spiritserve.tokens import Modality, OutputModality, PromptSegment, build_prompt

logger = logging.getLogger(__name__)
router = APIRouter()
TRY_AGAIN_LATER = 1013  # websocket close code: the server is at its session limit
AudioFormat = PcmFormat | PcmuFormat | PcmaFormat


def decode_audio(data: bytes, audio_format: AudioFormat) -> np.ndarray:
    """Wire bytes → float32 in [-1, 1) at the format's rate."""
    if isinstance(audio_format, PcmuFormat):
        return g711.decode_mulaw(data).astype(np.float32) / 32768
    if isinstance(audio_format, PcmaFormat):
        return g711.decode_alaw(data).astype(np.float32) / 32768
    return decode_pcm16(data)


def encode_audio(samples: np.ndarray, audio_format: AudioFormat) -> bytes:
    """float32 in [-1, 1] at the format's rate → wire bytes."""
    if isinstance(audio_format, PcmFormat):
        return encode_pcm16(samples)
    pcm = np.frombuffer(encode_pcm16(samples), dtype="<i2")
    return g711.encode_mulaw(pcm) if isinstance(audio_format, PcmuFormat) else g711.encode_alaw(pcm)


class StreamResampler:
    """`resample` over a stream, chunk by chunk, equal to resampling the whole stream at once.

    Each output sample reads the inputs within a few dozen samples of its position, so a chunk's outputs are
    emitted once `MARGIN` inputs beyond them have arrived (`flush` emits the rest, as the whole-signal
    resampling pads the end with zeros). Resampling restarts at a block boundary (a multiple of the reduced
    input rate) with `MARGIN` inputs of history, so every emitted output sees exactly the taps it would offline.
    """

    MARGIN = 64  # input samples: more than the filter's reach (its width is ~7-20 samples at these rates)

    def __init__(self, orig_rate: int, new_rate: int) -> None:
        gcd = math.gcd(orig_rate, new_rate)
        self.orig_rate, self.new_rate = orig_rate, new_rate
        self.orig, self.new = orig_rate // gcd, new_rate // gcd
        self._kept = np.zeros(0, dtype=np.float32)  # inputs from absolute index `_kept_start` on
        self._kept_start = 0
        self._inputs = 0  # inputs seen
        self._emitted = 0  # outputs emitted

    def push(self, samples: np.ndarray) -> np.ndarray:
        self._kept = np.concatenate([self._kept, samples.astype(np.float32)])
        self._inputs += len(samples)
        ready = max(0, (self._inputs - self.MARGIN) // self.orig * self.new)  # whole blocks with margin past them
        return self._emit(ready)

    def flush(self) -> np.ndarray:
        return self._emit(math.ceil(np.float32(self.new * self._inputs / self.orig)))

    def _emit(self, until: int) -> np.ndarray:
        if until <= self._emitted or self.orig_rate == self.new_rate:
            if self.orig_rate == self.new_rate:
                out, self._emitted = self._kept[self._emitted - self._kept_start :], self._inputs
                self._kept, self._kept_start = np.zeros(0, dtype=np.float32), self._inputs
                return out
            return np.zeros(0, dtype=np.float32)
        # Start MARGIN inputs before the first output still owed, on a block boundary (or at the signal's start).
        first_block = max(0, (self._emitted // self.new) - (self.MARGIN // self.orig + 1))
        start = first_block * self.orig
        assert start >= self._kept_start, (start, self._kept_start)
        segment = self._kept[start - self._kept_start :]
        out = resample(segment, self.orig_rate, self.new_rate)
        offset = first_block * self.new
        result = out[self._emitted - offset : until - offset]
        self._emitted = until
        keep_from = max(0, (self._emitted // self.new - (self.MARGIN // self.orig + 1)) * self.orig)
        self._kept, self._kept_start = self._kept[keep_from - self._kept_start :], keep_from
        return result


class EnergyVad:
    """End-of-turn detection from frame energy: speech starts when a 20 ms frame's RMS passes the
    threshold, and stops after `silence_duration_ms` of quiet following at least `MIN_SPEECH_MS` of speech.
    Events carry the sample position (in the stream pushed so far) where speech started or stopped."""

    def __init__(self, config: ServerVad, sample_rate: int) -> None:
        self.config = config
        self.frame = sample_rate // 50
        self._pending = np.zeros(0, dtype=np.float32)
        self._position = 0  # samples consumed into frames
        self._speaking = False
        self._speech_frames = 0
        self._silent_frames = 0

    def push(self, samples: np.ndarray) -> list[tuple[Literal["speech_started", "speech_stopped"], int]]:
        self._pending = np.concatenate([self._pending, samples])
        events: list[tuple[Literal["speech_started", "speech_stopped"], int]] = []
        while len(self._pending) >= self.frame:
            frame, self._pending = self._pending[: self.frame], self._pending[self.frame :]
            self._position += self.frame
            loud = float(np.sqrt(np.mean(frame**2))) > self.config.rms_threshold
            if loud and not self._speaking:
                self._speaking, self._speech_frames, self._silent_frames = True, 0, 0
                events.append(("speech_started", self._position - self.frame))
            if self._speaking:
                self._speech_frames += 1
                self._silent_frames = 0 if loud else self._silent_frames + 1
                silence_ms = self.config.silence_duration_ms
                long_enough = self._speech_frames * 20 >= MIN_SPEECH_MS + silence_ms
                if self._silent_frames * 20 >= silence_ms and long_enough:
                    self._speaking = False
                    events.append(("speech_stopped", self._position))
        return events


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


class RealtimeSession:
    def __init__(self, websocket: WebSocket, pipeline: SpiritPipeline, settings, admission) -> None:
        self.websocket = websocket
        self.admission = admission
        self.pipeline = pipeline
        self.settings = settings
        self.id = _new_id("sess")
        self.model = pipeline.checkpoint.language_model.path.name
        self.config = SessionConfig()
        self.speaker: int | None = None  # the vocoder speaker `audio.output.voice` names
        self.buffer = bytearray()  # audio since the last commit, in config.audio.input.format
        self.buffer_start_ms = 0  # where the buffer starts in the session's input audio stream
        self.next_item_id = _new_id("item")  # the user item the buffer becomes when committed
        self.last_item_id: str | None = None
        self.context: list[PromptSegment] = []
        self.vad: EnergyVad | None = None
        self.vad_offset = 0  # input samples before the VAD was (re)started
        self.speech_start_ms: int | None = None
        self.response: asyncio.Task | None = None
        self._send_lock = asyncio.Lock()
        self._reset_vad()

    async def send(self, event: dict) -> None:
        async with self._send_lock:
            await self.websocket.send_json({"event_id": _new_id("event"), **event})

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
            await self.send(error_event("invalid_event", _describe(exc), _event_id_of(payload)))
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
            await self._update_session(event)
        elif isinstance(event, InputAudioAppend):
            await self._append(event)
        elif isinstance(event, InputAudioCommit):
            await self._commit(event.event_id)
        elif isinstance(event, InputAudioClear):
            self._clear_buffer()
            await self.send({"type": "input_audio_buffer.cleared"})
        elif isinstance(event, ResponseCreate):
            await self._create_response(event)
        elif isinstance(event, ConversationItemCreate):
            await self._create_item(event)
        elif isinstance(event, ResponseCancel):
            if self.response is None or self.response.done():
                await self.send(error_event("no_active_response", "there is no response to cancel", event.event_id))
            else:
                await self._cancel_response("client_cancelled")

    async def _update_session(self, event: SessionUpdate) -> None:
        current = self.config.model_dump(exclude=set(IGNORED_SESSION_FIELDS))
        try:
            config = SessionConfig.model_validate(merge_session(current, event.session))
            speaker = self._speaker_of(config.audio.output.voice)
        except (ValidationError, ValueError) as exc:
            message = _describe(exc) if isinstance(exc, ValidationError) else str(exc)
            await self.send(error_event("invalid_session", message, event.event_id))
            return
        if config.audio.input.format != self.config.audio.input.format and self.buffer:
            message = "commit or clear the input buffer before changing its format"
            await self.send(error_event("invalid_session", message, event.event_id, "session.audio.input.format"))
            return
        restart_vad = (config.audio.input.turn_detection, config.audio.input.format) != (
            self.config.audio.input.turn_detection, self.config.audio.input.format)  # fmt: skip
        self.config, self.speaker = config, speaker
        if restart_vad:
            self._reset_vad()
        ignored = ignored_fields(event.session)
        if ignored:
            logger.info("session %s: ignoring session fields %s", self.id, ", ".join(ignored))
        await self.send({"type": "session.updated", "session": self._describe(), "ignored_fields": ignored})

    def _speaker_of(self, voice: str | int | None) -> int | None:
        if voice is None:
            return None
        speakers = list(self.pipeline.vocoder.speakers or [])
        if isinstance(voice, str) and voice in speakers:
            return speakers.index(voice)
        index = voice if isinstance(voice, int) else int(voice) if voice.isdigit() else None
        if index is not None and 0 <= index < max(len(speakers), 1):
            return index
        raise ValueError(f"audio.output.voice: {voice!r} is not a speaker: use one of {speakers} or its index")

    def _reset_vad(self) -> None:
        turn_detection = self.config.audio.input.turn_detection
        rate = format_rate(self.config.audio.input.format)
        self.vad = EnergyVad(turn_detection, rate) if turn_detection else None
        self.vad_offset = self.buffer_start_ms * rate // 1000 + len(self.buffer) // self._sample_bytes
        self.speech_start_ms = None

    @property
    def _sample_bytes(self) -> int:
        return bytes_per_sample(self.config.audio.input.format)

    def _buffer_ms(self) -> int:
        return len(self.buffer) // self._sample_bytes * 1000 // format_rate(self.config.audio.input.format)

    def _clear_buffer(self) -> None:
        self.buffer_start_ms += self._buffer_ms()
        self.buffer.clear()

    def _buffer_limit(self) -> int:
        """Bytes of input audio a turn may hold: the seconds limit and, as float32, the decoded-size limit."""
        rate, width = format_rate(self.config.audio.input.format), self._sample_bytes
        return min(int(self.settings.max_audio_seconds * rate) * width, self.settings.max_decoded_bytes // 4 * width)

    async def _append(self, event: InputAudioAppend) -> None:
        try:
            chunk = base64.b64decode(event.audio, validate=True)
        except ValueError as exc:  # binascii.Error, or non-ASCII characters (a plain ValueError)
            await self.send(error_event("invalid_audio", f"'audio' is not valid base64: {exc}", event.event_id))
            return
        if len(chunk) % self._sample_bytes:
            await self.send(error_event("invalid_audio", "PCM16 audio needs an even byte count", event.event_id))
            return
        rate, width, limit = format_rate(self.config.audio.input.format), self._sample_bytes, self._buffer_limit()
        if len(self.buffer) + len(chunk) > limit:
            seconds = limit / width / rate
            message = f"the input buffer holds at most {seconds:.4g} s; commit or clear it"
            await self.send(error_event("input_audio_buffer_full", message, event.event_id))
            return
        self.buffer.extend(chunk)
        if self.vad is None:
            return
        turn_detection = self.config.audio.input.turn_detection
        for change, position in self.vad.push(decode_audio(chunk, self.config.audio.input.format)):
            at_ms = (self.vad_offset + position) * 1000 // rate
            if change == "speech_started":
                self.speech_start_ms = at_ms
                await self.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": at_ms,
                                 "item_id": self.next_item_id})  # fmt: skip
                if turn_detection.interrupt_response:
                    await self._cancel_response("turn_detected")  # barge-in
            else:
                await self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": at_ms,
                                 "item_id": self.next_item_id})  # fmt: skip
                # The turn: from prefix_padding_ms before the speech started (what is older is dropped).
                keep_from_ms = max(self.buffer_start_ms, (self.speech_start_ms or 0) - turn_detection.prefix_padding_ms)
                drop = (keep_from_ms - self.buffer_start_ms) * rate // 1000 * width
                del self.buffer[:drop]
                self.buffer_start_ms += drop // width * 1000 // rate
                if await self._commit(event.event_id) and turn_detection.create_response:
                    if self.response is None or self.response.done():
                        self._start_response(None)

    async def _speech_units(self, data: bytes) -> str:
        """Audio in the session's input format → the unit string the LM reads. The whole turn at once, as REST
        resamples a whole upload (per-chunk resampling would differ at the seams)."""
        audio_format = self.config.audio.input.format
        samples = await asyncio.to_thread(resample, decode_audio(data, audio_format), format_rate(audio_format),
                                          MODEL_SAMPLE_RATE)  # fmt: skip
        return (await self.pipeline.tokenize(samples)).to_string()  # BadAudioError (too short) → error event

    async def _commit(self, event_id: str | None) -> bool:
        if not self.buffer:
            await self.send(error_event("input_audio_buffer_commit_empty", "the input buffer is empty", event_id))
            return False
        data = bytes(self.buffer)
        self._clear_buffer()
        units = await self._speech_units(data)
        item_id, self.next_item_id = self.next_item_id, _new_id("item")
        self.context.append(PromptSegment(Modality.SPEECH, units))
        await self.send({"type": "input_audio_buffer.committed", "item_id": item_id,
                         "previous_item_id": self.last_item_id})  # fmt: skip
        self.last_item_id = item_id
        return True

    async def _create_item(self, event: ConversationItemCreate) -> None:
        """A message added by the client: its text and audio parts join the conversation in order (appended at
        the end: `previous_item_id` is accepted but items are not inserted elsewhere)."""
        segments, described = [], []
        for part in event.item.content:
            if part.type == "input_text":
                if part.text is None:
                    raise BadRequestError("an input_text part needs 'text'")
                segments.append(PromptSegment(Modality.TEXT, part.text))
                described.append({"type": "input_text", "text": part.text})
                continue
            if part.audio is None:
                raise BadRequestError("an input_audio part needs 'audio' (base64, in the session's input format)")
            try:
                data = base64.b64decode(part.audio, validate=True)
            except ValueError as exc:
                raise BadRequestError(f"'audio' is not valid base64: {exc}") from exc
            if len(data) % self._sample_bytes or len(data) > self._buffer_limit():
                raise BadRequestError("'audio' must be whole samples within the input buffer's limit")
            segments.append(PromptSegment(Modality.SPEECH, await self._speech_units(data)))
            described.append({"type": "input_audio", "transcript": part.transcript})
        item_id = event.item.id or _new_id("item")
        self.context.extend(segments)
        item = {"id": item_id, "object": "realtime.item", "type": "message", "role": event.item.role,
                "status": "completed", "content": described}  # fmt: skip
        for kind in ("conversation.item.added", "conversation.item.done"):
            await self.send({"type": kind, "item": item, "previous_item_id": self.last_item_id})
        self.last_item_id = item_id

    async def _create_response(self, event: ResponseCreate) -> None:
        if self.response is not None and not self.response.done():
            message = "a response is already running; cancel it first"
            await self.send(error_event("response_already_active", message, event.event_id))
        elif not self.context:
            message = "commit some audio or add a conversation item first"
            await self.send(error_event("empty_conversation", message, event.event_id))
        else:
            if event.response is not None:
                ignored = [name for name in IGNORED_RESPONSE_FIELDS if getattr(event.response, name) is not None]
                if ignored:
                    logger.info("session %s: ignoring response fields %s", self.id, ", ".join(ignored))
            self._start_response(event.response)

    def _start_response(self, overrides) -> None:
        self.response = asyncio.create_task(self._respond(_new_id("resp"), overrides))

    async def _cancel_response(self, reason: str = "client_cancelled") -> None:
        if self.response is not None and not self.response.done():
            self.response.cancel(reason)
            with contextlib.suppress(asyncio.CancelledError):
                await self.response

    def _prompt_within_budget(self, instructions: str, output: OutputModality) -> list[PromptSegment]:
        """Drop the oldest turns until the prompt (instructions first) fits the session's context budget."""
        segments = list(self.context)
        lead = [PromptSegment(Modality.TEXT, instructions)] if instructions else []
        budget = self.settings.realtime_context_tokens
        encode = self.pipeline.tokenizer.encode_prompt
        while len(segments) > 1 and len(encode(build_prompt(lead + segments, output))) > budget:
            segments.pop(0)
        self.context = segments
        return lead + segments

    def _response_object(self, response_id: str, status: str, modalities: list[str], limit) -> dict:
        return {
            "id": response_id, "object": "realtime.response", "status": status, "output_modalities": modalities,
            "max_output_tokens": limit, "conversation_id": None,
            "audio": {"output": {"format": self.config.audio.output.format.model_dump(), "voice": self._voice()}},
        }  # fmt: skip

    async def _respond(self, response_id: str, overrides) -> None:
        started = time.perf_counter()
        config = self.config
        modalities = (overrides and overrides.output_modalities) or config.output_modalities
        limit = (overrides and overrides.max_output_tokens) or config.max_output_tokens
        instructions = config.instructions
        if overrides is not None and overrides.instructions is not None:
            instructions = overrides.instructions
        speech = modalities == ["audio"]
        output = OutputModality.SPEECH if speech else OutputModality.TEXT
        audio_format = config.audio.output.format
        options = SamplingOptions(
            temperature=config.temperature,
            top_p=config.top_p,
            seed=config.seed,
            max_speech_seconds=config.max_response_seconds,
            max_new_tokens=None if limit == "inf" else limit,
            speaker=self.speaker,
        )
        status, reason, error, generated = "completed", None, None, ""
        audio_samples, first_delta_s, prompt_tokens, context_index = 0, None, 0, len(self.context)
        item_id = _new_id("item")
        place = {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
        part_type = "audio" if speech else "text"
        started_part = False
        self.admission.realtime_responses += 1
        try:
            await self.send({"type": "response.created",
                             "response": {**self._response_object(response_id, "in_progress", modalities, limit),
                                          "output": []}})  # fmt: skip
            request = self.pipeline.request_for(self._prompt_within_budget(instructions, output), output, options)
            prompt_tokens = len(request.prompt_ids)
            context_index = len(self.context)  # the answer goes here, before any user turn committed meanwhile
            item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant"}
            await self.send({"type": "response.output_item.added", "response_id": response_id, "output_index": 0,
                             "item": {**item, "status": "in_progress", "content": []}})  # fmt: skip
            await self.send({"type": "response.content_part.added", **place,
                             "part": {"type": part_type, "transcript" if speech else "text": ""}})  # fmt: skip
            started_part = True
            if speech:
                resampler = StreamResampler(MODEL_SAMPLE_RATE, format_rate(audio_format))
                async for delta in self.pipeline.open_speech_stream(request, options, response_id):
                    generated = delta.spoken if delta.spoken is not None else generated + delta.tokens
                    if len(delta.audio):
                        first_delta_s = first_delta_s or time.perf_counter() - started
                        audio_samples += len(delta.audio)
                        await self._send_audio(place, resampler.push(delta.audio), audio_format)
                await self._send_audio(place, resampler.flush(), audio_format)
                await self.send({"type": "response.output_audio.done", **place})
            else:
                async for text in self.pipeline.stream_text(request, response_id):
                    first_delta_s = first_delta_s or time.perf_counter() - started
                    generated += text
                    await self.send({"type": "response.output_text.delta", **place, "delta": text})
                await self.send({"type": "response.output_text.done", **place, "text": generated})
        except asyncio.CancelledError as exc:
            status, reason = "cancelled", (exc.args[0] if exc.args else None) or "client_cancelled"
        except SpiritServeError as exc:
            status, error = "failed", {"type": "server_error", "code": type(exc).__name__, "message": str(exc)}
            await self.send(error_event(type(exc).__name__, str(exc)))
        except Exception:  # a bug, not the client's fault: say so instead of leaving the client waiting
            logger.exception("session %s: response %s failed", self.id, response_id)
            message = "the response failed inside the server"
            status, error = "failed", {"type": "server_error", "code": "server_error", "message": message}
            await self.send(error_event("server_error", message))
        finally:
            self.admission.realtime_responses -= 1
        # Speech: one "[" per unit token. Text: re-encoded (SentencePiece round-trips what it decoded), less BOS.
        output_tokens = generated.count("[") if speech else len(self.pipeline.tokenizer.encode_prompt(generated)) - 1
        metrics = self.websocket.app.state.metrics
        metrics.generated_tokens.labels("speech" if speech else "text").inc(output_tokens)
        if speech:
            metrics.observe_speech("/v1/realtime", first_delta_s, time.perf_counter() - started,
                                   audio_samples / MODEL_SAMPLE_RATE)  # fmt: skip
        if generated:
            modality = Modality.SPEECH if speech else Modality.TEXT
            self.context.insert(min(context_index, len(self.context)), PromptSegment(modality, generated))
        output_details = {"audio_tokens": output_tokens if speech else 0, "text_tokens": 0 if speech else output_tokens}
        usage = {
            "input_tokens": prompt_tokens, "output_tokens": output_tokens,
            "total_tokens": prompt_tokens + output_tokens,
            "input_token_details": {"audio_tokens": 0, "text_tokens": 0, "cached_tokens": 0},
            "output_token_details": output_details,
            "output_audio_seconds": audio_samples / MODEL_SAMPLE_RATE,  # a spiritserve extension
        }  # fmt: skip
        content = {"type": "output_audio", "transcript": None} if speech else {"type": "output_text", "text": generated}
        item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant",
                "status": "completed" if status == "completed" else "incomplete", "content": [content]}  # fmt: skip
        timings = {"first_delta_s": first_delta_s, "total_s": time.perf_counter() - started}
        details = {"type": status, "reason": reason, "error": error} if status != "completed" else None
        with contextlib.suppress(Exception):  # the socket may be gone (a cancel on disconnect)
            if started_part:
                part = {"type": part_type, "transcript" if speech else "text": None if speech else generated}
                await self.send({"type": "response.content_part.done", **place, "part": part})
                await self.send({"type": "response.output_item.done", "response_id": response_id, "output_index": 0,
                                 "item": item})  # fmt: skip
            await self.send({"type": "response.done", "response": {
                **self._response_object(response_id, status, modalities, limit), "status_details": details,
                "output": [item] if started_part else [], "usage": usage,
                "units": generated if speech else None, "timings": timings}})  # fmt: skip

    async def _send_audio(self, place: dict, samples: np.ndarray, audio_format: AudioFormat) -> None:
        if len(samples):
            audio = base64.b64encode(encode_audio(samples, audio_format)).decode()
            await self.send({"type": "response.output_audio.delta", **place, "delta": audio})

    def _voice(self) -> str | None:
        speakers = list(self.pipeline.vocoder.speakers or [])
        speaker = self.pipeline.vocoder.default_speaker if self.speaker is None else self.speaker
        return speakers[speaker] if speaker < len(speakers) else str(speaker)

    def _describe(self) -> dict:
        """The effective session, in the GA shape (OpenAI fields accepted but not acted on are left out)."""
        session = self.config.model_dump(exclude=set(IGNORED_SESSION_FIELDS))
        session["audio"]["input"] = {key: session["audio"]["input"][key] for key in ("format", "turn_detection")}
        if session["audio"]["input"]["turn_detection"]:
            session["audio"]["input"]["turn_detection"].pop("idle_timeout_ms")
        session["audio"]["output"] = {"format": session["audio"]["output"]["format"], "voice": self._voice()}
        return {**session, "id": self.id, "object": "realtime.session", "model": self.model}


def _event_id_of(payload) -> str | None:
    event_id = payload.get("event_id") if isinstance(payload, dict) else None
    return event_id if isinstance(event_id, str) and len(event_id) <= 128 else None


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
