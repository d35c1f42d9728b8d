"""One `/v1/realtime` session's state and how each client event changes it: the session config, the input audio
buffer with its turn detection, the conversation, and at most one running response (realtime_response.py).
Events the session answers are sent through `send`; the websocket itself is realtime.py's."""

import asyncio
import contextlib
import logging

from pydantic import ValidationError

from spiritserve.audio import SAMPLE_RATE
from spiritserve.errors import BadRequestError
from spiritserve.pipeline import SamplingOptions, SpiritPipeline
from spiritserve.resample import resample
from spiritserve.server.admission import Admission
from spiritserve.server.conversation import Conversation, ConversationItem
from spiritserve.server.metrics import ServiceMetrics
from spiritserve.server.realtime_audio import InputAudioBuffer, decode_audio, decode_base64
from spiritserve.server.realtime_protocol import (
    IGNORED_RESPONSE_FIELDS,
    IGNORED_SESSION_FIELDS,
    AudioPart,
    ConversationItemAdded,
    ConversationItemCreate,
    ConversationItemDelete,
    ConversationItemDeleted,
    ConversationItemDone,
    ConversationItemRetrieve,
    ConversationItemRetrieved,
    ConversationItemTruncate,
    ConversationItemTruncated,
    InputAudioAppend,
    InputAudioBufferCleared,
    InputAudioBufferCommitted,
    InputAudioClear,
    InputAudioCommit,
    MessageItem,
    RealtimeError,
    ResponseAudio,
    ResponseAudioOutput,
    ResponseCancel,
    ResponseCreate,
    ResponseObject,
    ResponseOverrides,
    SessionConfig,
    SessionCreated,
    SessionUpdate,
    SessionUpdated,
    SpeechStarted,
    SpeechStopped,
    TextPart,
    describe_session,
    error_event,
    format_rate,
    ignored_fields,
    merge_session,
    new_id,
    validation_message,
)
from spiritserve.server.realtime_response import ResponseStreamer, Send
from spiritserve.server.turn_detection import SpeechStart, TurnDetector
from spiritserve.settings import Settings
from spiritserve.tokens import Modality, PromptSegment
from spiritserve.vad import VadFactory
from spiritserve.voices import speaker_for

logger = logging.getLogger(__name__)


class RealtimeSession:
    def __init__(
        self,
        pipeline: SpiritPipeline,
        settings: Settings,
        admission: Admission,
        metrics: ServiceMetrics,
        make_vad: VadFactory,
        send: Send,
    ) -> None:
        self.id = new_id("sess")
        self.pipeline, self.admission, self.make_vad, self.send = pipeline, admission, make_vad, send
        self.model = pipeline.checkpoint.language_model.path.name
        self.config = SessionConfig()
        self.speaker: int | None = None  # the vocoder speaker `audio.output.voice` names
        self.buffer = InputAudioBuffer(self.config.audio.input.format, settings.max_audio_seconds,
                                       settings.max_decoded_bytes)  # fmt: skip
        self.next_item_id = new_id("item")  # the user item the buffer becomes when committed
        self.conversation = Conversation()
        self.responses = ResponseStreamer(self.id, pipeline, self.conversation, send, admission, metrics,
                                          settings.realtime_context_tokens)  # fmt: skip
        self.response: asyncio.Task | None = None
        self.turns: TurnDetector | None = None
        self._reset_turns()

    @property
    def responding(self) -> bool:
        return self.response is not None and not self.response.done()

    def created(self) -> SessionCreated:
        return SessionCreated(session=self._describe())

    async def close(self) -> None:
        """The client is gone: stop the running response, which aborts its engine request."""
        await self._stop_response()

    async def update_session(self, event: SessionUpdate) -> None:
        current = self.config.model_dump(exclude=set(IGNORED_SESSION_FIELDS))
        try:
            config = SessionConfig.model_validate(merge_session(current, event.session))
            speaker = speaker_for(config.audio.output.voice, list(self.pipeline.vocoder.speakers or []))
        except (ValidationError, ValueError) as exc:
            message = validation_message(exc) if isinstance(exc, ValidationError) else str(exc)
            raise RealtimeError("invalid_session", message) from exc
        if config.audio.input.format != self.config.audio.input.format and self.buffer.data:
            message = "commit or clear the input buffer before changing its format"
            raise RealtimeError("invalid_session", message, "session.audio.input.format")
        restart_turns = (config.audio.input.turn_detection, config.audio.input.format) != (
            self.config.audio.input.turn_detection, self.config.audio.input.format)  # fmt: skip
        self.config, self.speaker = config, speaker
        self.buffer.format = config.audio.input.format
        if restart_turns:
            self._reset_turns()
        ignored = ignored_fields(event.session)
        if ignored:
            logger.info("session %s: ignoring session fields %s", self.id, ", ".join(ignored))
        await self.send(SessionUpdated(session=self._describe(), ignored_fields=ignored))

    def _reset_turns(self) -> None:
        """A fresh detector (Silero, or the energy gate where Silero could not load) counting from here on."""
        turn_detection = self.config.audio.input.turn_detection
        self.turns = None
        if turn_detection is not None:
            self.turns = TurnDetector(self.make_vad, turn_detection, self.buffer.rate, self.buffer.end_sample)

    async def append(self, event: InputAudioAppend) -> None:
        try:
            chunk = decode_base64(event.audio)
        except ValueError as exc:
            raise RealtimeError("invalid_audio", str(exc)) from exc
        self.buffer.append(chunk)
        if self.turns is None:
            return
        for change in await self.turns.push(decode_audio(chunk, self.buffer.format)):
            if isinstance(change, SpeechStart):
                await self.send(SpeechStarted(audio_start_ms=change.at_ms, item_id=self.next_item_id))
                if change.interrupt:
                    await self._stop_response("turn_detected")  # barge-in
                continue
            await self.send(SpeechStopped(audio_end_ms=change.at_ms, item_id=self.next_item_id))
            self.buffer.drop_before(change.turn_start_ms)
            if await self._commit(event.event_id) and change.respond and not self.responding:
                await self._start_response(None, event_id=event.event_id)

    async def commit(self, event: InputAudioCommit) -> None:
        await self._commit(event.event_id)

    async def clear(self, event: InputAudioClear) -> None:
        self.buffer.clear()
        await self.send(InputAudioBufferCleared())

    async def _speech_units(self, data: bytes) -> str:
        """Audio in the session's input format → the unit string the LM reads. The whole turn at once, as REST
        resamples a whole upload (per-chunk resampling would differ at the seams)."""
        audio_format = self.config.audio.input.format
        samples = await asyncio.to_thread(resample, decode_audio(data, audio_format), format_rate(audio_format),
                                          SAMPLE_RATE)  # fmt: skip
        return (await self.pipeline.tokenize(samples)).to_string()  # BadAudioError (too short) → error event

    async def _commit(self, event_id: str | None) -> bool:
        if not self.buffer.data:
            await self.send(error_event("input_audio_buffer_commit_empty", "the input buffer is empty", event_id))
            return False
        units = await self._speech_units(self.buffer.take())
        item_id, self.next_item_id = self.next_item_id, new_id("item")
        item = ConversationItem(item_id, "user", [AudioPart(type="input_audio")],
                                [PromptSegment(Modality.SPEECH, units)])  # fmt: skip
        previous_item_id = self.conversation.insert(item, len(self.conversation.items))
        await self.send(InputAudioBufferCommitted(item_id=item_id, previous_item_id=previous_item_id))
        return True

    async def _message_item(self, message: MessageItem) -> ConversationItem:
        """A client's message: its text and audio parts continue the prompt in order, whatever the role (Spirit LM
        is a base model)."""
        segments: list[PromptSegment] = []
        described: list[AudioPart | TextPart] = []
        for part in message.content:
            if part.type != "input_audio":
                if part.text is None:
                    raise BadRequestError(f"an {part.type} part needs 'text'")
                segments.append(PromptSegment(Modality.TEXT, part.text))
                described.append(TextPart(type=part.type, text=part.text))
                continue
            if part.audio is None:
                raise BadRequestError("an input_audio part needs 'audio' (base64, in the session's input format)")
            try:
                data = decode_base64(part.audio)
            except ValueError as exc:
                raise BadRequestError(str(exc)) from exc
            if not self.buffer.would_hold(data):
                raise BadRequestError("'audio' must be whole samples within the input buffer's limit")
            segments.append(PromptSegment(Modality.SPEECH, await self._speech_units(data)))
            described.append(AudioPart(type="input_audio", transcript=part.transcript))
        return ConversationItem(message.id or new_id("item"), message.role, described, segments)

    async def create_item(self, event: ConversationItemCreate) -> None:
        item = await self._message_item(event.item)
        previous_item_id = self.conversation.add(item, event.previous_item_id)
        await self.send(ConversationItemAdded(item=item.describe(), previous_item_id=previous_item_id))
        await self.send(ConversationItemDone(item=item.describe(), previous_item_id=previous_item_id))

    async def delete_item(self, event: ConversationItemDelete) -> None:
        self.conversation.delete(event.item_id)
        await self.send(ConversationItemDeleted(item_id=event.item_id))

    async def retrieve_item(self, event: ConversationItemRetrieve) -> None:
        item = self.conversation.find(event.item_id, "item_retrieve_invalid_item_id")
        await self.send(ConversationItemRetrieved(item=item.describe()))

    async def truncate_item(self, event: ConversationItemTruncate) -> None:
        item = self.conversation.find(event.item_id, "item_truncate_invalid_item_id")
        if not item.milestones:
            raise RealtimeError("invalid_value", "only an assistant's spoken answer can be truncated", "item_id")
        if event.audio_end_ms > item.audio_ms:
            message = f"the item's audio is {item.audio_ms} ms long, shorter than audio_end_ms {event.audio_end_ms}"
            raise RealtimeError("invalid_value", message, "audio_end_ms")
        item.truncate(event.audio_end_ms)
        await self.send(ConversationItemTruncated(item_id=item.id, content_index=0, audio_end_ms=event.audio_end_ms))

    async def create_response(self, event: ResponseCreate) -> None:
        if await self._refused_while_draining(event.event_id):
            return
        overrides = event.response or ResponseOverrides()
        if self.responding:
            message = "a response is already running; cancel it first"
            await self.send(error_event("response_already_active", message, event.event_id))
            return
        prompt_items = None  # the conversation
        if overrides.input is not None:
            prompt_items = [
                self.conversation.find(entry.id, "response_create_invalid_item_id", "response.input")
                if entry.type == "item_reference" else await self._message_item(entry)
                for entry in overrides.input
            ]  # fmt: skip
        items = self.conversation.items if prompt_items is None else prompt_items
        if not self._instructions(overrides) and not any(item.segments for item in items):
            message = "commit some audio or add a conversation item first"
            await self.send(error_event("empty_conversation", message, event.event_id))
            return
        ignored = [name for name in IGNORED_RESPONSE_FIELDS if getattr(overrides, name) is not None]
        if ignored:
            logger.info("session %s: ignoring response fields %s", self.id, ", ".join(ignored))
        await self._start_response(overrides, prompt_items, event.event_id)

    async def cancel_response(self, event: ResponseCancel) -> None:
        if not self.responding:
            await self.send(error_event("no_active_response", "there is no response to cancel", event.event_id))
            return
        await self._stop_response("client_cancelled")

    async def _refused_while_draining(self, event_id: str | None) -> bool:
        if self.admission.draining:
            message = "the server is shutting down: reconnect to go on (the session closes with 1012)"
            await self.send(error_event("server_shutting_down", message, event_id))
        return self.admission.draining

    def _instructions(self, overrides: ResponseOverrides) -> str:
        return self.config.instructions if overrides.instructions is None else overrides.instructions

    async def _start_response(
        self,
        overrides: ResponseOverrides | None,
        prompt_items: list[ConversationItem] | None = None,
        event_id: str | None = None,
    ) -> None:
        """Start a response on `prompt_items` (None: the conversation); none once the server drains."""
        if await self._refused_while_draining(event_id):
            return
        overrides, config = overrides or ResponseOverrides(), self.config
        limit = overrides.max_output_tokens or config.max_output_tokens
        response = ResponseObject(
            id=new_id("resp"), output_modalities=overrides.output_modalities or config.output_modalities,
            max_output_tokens=limit, metadata=overrides.metadata,
            conversation_id=None if overrides.conversation == "none" else self.conversation.id,
            audio=ResponseAudio(output=ResponseAudioOutput(format=config.audio.output.format, voice=self._voice())),
            status="in_progress", output=[],
        )  # fmt: skip
        options = SamplingOptions(
            temperature=config.temperature,
            top_p=config.top_p,
            seed=config.seed,
            max_speech_seconds=config.max_response_seconds,
            max_new_tokens=None if limit == "inf" else limit,
            speaker=self.speaker,
        )
        run = self.responses.run(response, options, self._instructions(overrides), prompt_items)
        self.response = asyncio.create_task(run)

    async def _stop_response(self, reason: str = "client_cancelled") -> None:
        if self.response is not None and not self.response.done():
            self.response.cancel(reason)
            with contextlib.suppress(asyncio.CancelledError):
                await self.response

    def _voice(self) -> str | None:
        speakers = list(self.pipeline.vocoder.speakers or [])
        speaker = self.pipeline.vocoder.default_speaker if self.speaker is None else self.speaker
        return speakers[speaker] if speaker < len(speakers) else str(speaker)

    def _describe(self) -> dict:
        return describe_session(self.config, self.id, self.model, self._voice())
