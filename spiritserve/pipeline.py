"""One request's journey: audio → units → prompt ids → vLLM → text and units → audio.

Model calls (HuBERT, quantizer, HiFi-GAN) run on one dedicated speech-worker thread so the event loop
never blocks; the LM streams from vLLM. HTTP knows nothing of this module's internals: routes make one
call here and map the result.
"""

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, replace
from functools import partial
from typing import Protocol

import numpy as np

from spiritserve.audio import SAMPLE_RATE
from spiritserve.batching import BatchStats, MicroBatcher
from spiritserve.checkpoints import SpiritCheckpoint
from spiritserve.engine.engine import (
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    LanguageModelEngine,
    TokenRequest,
)
from spiritserve.engine.modality import allowed_token_ids, speech_token_budget
from spiritserve.engine.tokenizer import SpiritTextTokenizer, TokenPiece
from spiritserve.errors import BadAudioError, BadRequestError
from spiritserve.gpu_memory import GpuMemoryPlan
from spiritserve.speech_worker import SpeechWorker
from spiritserve.tokenizers.speech import SpeechTokenizer, SpeechUnits
from spiritserve.tokens import (
    TEXT_MARKER,
    AlignedUnits,
    Modality,
    OutputModality,
    PromptSegment,
    Unit,
    UnitAligner,
    UnitKind,
    align_units,
    build_prompt,
    parse_units,
)
from spiritserve.vocoder.base import StreamingDecoder, UnitVocoder, VocodeRequest, VocoderOutput

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationInput:
    """Text, or speech given either as 16 kHz audio or as an already tokenized unit string."""

    modality: Modality
    text: str = ""
    audio: np.ndarray | None = None


@dataclass(frozen=True)
class SamplingOptions:
    """The reference's sampling defaults; temperature 0 means greedy."""

    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    top_k: int = DEFAULT_TOP_K  # 0: off
    seed: int | None = None
    max_new_tokens: int | None = None  # unset: from max_speech_seconds for speech, the text default otherwise
    max_speech_seconds: float | None = None
    speaker: int | None = None
    style: int | None = None


@dataclass(frozen=True)
class OutputSegment:
    """A run of generated text, or of generated speech kept as its unit-token string."""

    modality: Modality
    text: str = ""
    tokens: str = ""


@dataclass(frozen=True)
class GenerationResult:
    segments: list[OutputSegment]
    speech: AlignedUnits  # all generated speech, pitch and style one per Hu unit (empty for base)
    audio: VocoderOutput | None
    prompt_tokens: int
    generated_tokens: int
    finish_reason: str

    @property
    def text(self) -> str:
        return "".join(segment.text for segment in self.segments)

    @property
    def tokens(self) -> str:
        return "".join(segment.tokens for segment in self.segments)


@dataclass(frozen=True)
class PipelineLimits:
    default_speech_seconds: float
    max_speech_seconds: float
    default_text_tokens: int
    generation_timeout_s: float
    max_model_len: int
    batch_max_size: int = 16
    batch_max_wait_s: float = 0.005
    max_queue_per_stage: int = 256


@dataclass(frozen=True)
class SpeechDelta:
    """A step of streamed speech: the unit tokens generated and the audio that became final (may be empty)."""

    tokens: str
    audio: np.ndarray
    generated_tokens: int  # the answer's ids so far, counted by the engine (last step: after any budget/stop cut)
    spoken: str | None = None  # last step only: the unit tokens the whole answer says (a budget may cut some)


@dataclass(frozen=True)
class TextDelta:
    """A step of streamed text: what it added (may be empty), and the engine's count of the ids so far."""

    text: str
    generated_tokens: int  # EOS included, as in GenerationResult.generated_tokens
    finish_reason: str | None = None  # last step only


# Streaming expressive speech holds Hu units until the first Pi and St arrive, at most this many (1 s).
STREAMING_MAX_HELD_UNITS = 25
# Engine deltas (TokenRequest.delta_tokens). A whole answer needs no token sooner than the end: per-token work
# in the gateway (duration clock, stop scans) then runs once per 16 tokens, which at 16 concurrent speech answers
# nearly doubled the tokens/s served on CPU (docs/benchmarks.md). A stop or a filled speech budget is seen at
# most 15 tokens late; the answer is cut exactly where it would have been. Streamed speech takes 4: its first
# chunk waits for ~3 more tokens at most. Streamed text keeps 1 (clients show each token).
OFFLINE_DELTA_TOKENS = 16
STREAMED_SPEECH_DELTA_TOKENS = 4


@dataclass(frozen=True)
class StopScan:
    final: int  # leading generated ids that no later stop can cut (what may be vocoded already)
    ended: bool  # the answer has ended: it is the first `final` ids, its stop cut off


class StopRule(Protocol):
    """Ends an answer before its budget where the prompt taught it to end (few-shot prompts: spiritserve.few_shot).
    One object per request: it may keep state between calls."""

    def scan(self, generated: list[int]) -> StopScan:
        """Called with all ids generated so far, each time more arrive."""
        ...


class _Answer:
    """One answer as the engine generates it: its ids, each classified once on arrival (marker, unit or text),
    how many are released (no stop can cut them any more; speech: fed to the duration clock), why it ended,
    and whether its speech filled the budget (then it ends where the clock's durations do)."""

    def __init__(self, tokenizer: SpiritTextTokenizer) -> None:
        self._classify = tokenizer.classify
        self.ids: list[int] = []
        self.pieces: list[TokenPiece] = []
        self.released = 0
        self.finish_reason = "length"
        self.full = False

    def extend(self, token_ids: list[int]) -> None:
        self.ids += token_ids
        self.pieces += map(self._classify, token_ids)

    def cut(self, length: int) -> None:
        del self.ids[length:], self.pieces[length:]

    def units(self, start: int = 0, stop: int | None = None) -> list[Unit]:
        """The unit tokens among ids[start:stop], as ints."""
        return [Unit(piece.unit_kind, piece.unit) for piece in self.pieces[start:stop] if piece.unit_kind]

    def through_hubert(self, count: int) -> int:
        """How many leading ids hold the first ``count`` HuBERT units (what a speech budget keeps)."""
        seen = 0
        for index, piece in enumerate(self.pieces):
            seen += piece.unit_kind == "Hu"
            if seen == count:
                return index + 1
        return len(self.pieces) if count else 0


class SpiritPipeline:
    def __init__(
        self,
        checkpoint: SpiritCheckpoint,
        speech_tokenizer: SpeechTokenizer,
        vocoder: UnitVocoder,
        engine: LanguageModelEngine,
        limits: PipelineLimits,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.checkpoint = checkpoint
        self.tokenizer = SpiritTextTokenizer(checkpoint.language_model.tokenizer_path)
        self.speech_tokenizer = speech_tokenizer
        self.vocoder = vocoder
        self.engine = engine
        self.limits = limits
        self.gpu_memory: GpuMemoryPlan | None = None  # the start-up split of a GPU shared with vLLM, if any
        self.vocoder_sizes: dict[UnitKind, int] = {
            "Hu": vocoder.num_units,
            "Pi": vocoder.num_pitch_units,
            "St": vocoder.num_style_units,
        }
        # One worker thread owns the speech models; the batchers feed it whole batches, streams answering first.
        self._speech_worker = SpeechWorker(device=vocoder.device)
        batching = dict(
            executor=self._speech_worker.normal,
            max_batch_size=limits.batch_max_size,
            max_wait_s=limits.batch_max_wait_s,
            on_batch=on_batch,
            max_queue=limits.max_queue_per_stage,
        )
        self._tokenize_batcher = MicroBatcher("speech_tokenizer", speech_tokenizer.encode, **batching)
        self._vocode_batcher = MicroBatcher("vocoder", vocoder.decode_batch, **batching)
        # Streamed responses: the chunks due at the same moment in concurrent streams share generator forwards.
        # No queue cap: these streams were admitted already, and refusing a chunk would cut a response short.
        self._stream_vocode_batcher = MicroBatcher(
            "streaming_vocoder", vocoder.emit_streams, **{**batching, "max_queue": None,
                                                          "executor": self._speech_worker.urgent}
        )  # fmt: skip
        self._batchers = (self._tokenize_batcher, self._vocode_batcher, self._stream_vocode_batcher)

    @property
    def is_expressive(self) -> bool:
        return self.vocoder.is_expressive

    def queue_depths(self) -> dict[str, int]:
        """Items waiting per speech stage (for metrics and autoscaling)."""
        return {batcher.stage: batcher.queue_depth for batcher in self._batchers}

    async def tokenize(self, audio: np.ndarray) -> SpeechUnits:
        """16 kHz mono audio → raw units of every stream the variant uses."""
        units = await self._tokenize_batcher.submit(audio)
        if not units.hubert:
            raise BadAudioError("the audio is too short to yield any speech unit (at least 80 ms is needed)")
        return units

    async def synthesize(
        self,
        units: AlignedUnits,
        speaker: int | None,
        style: int | None = None,
        predict_durations: bool = True,
        durations: list[int] | None = None,
    ) -> VocoderOutput:
        """Vocode units. For the expressive vocoder, pitch and style are either one per Hu unit (LM output)
        or raw 12.5 Hz / 1 Hz streams (resynthesis of undeduplicated units); the vocoder tells them apart.
        ``durations``: frames per unit already fixed (a speech budget's cut), instead of predicting them."""
        request = VocodeRequest(
            units=units.hubert,
            speaker=speaker,
            style=style,
            predict_durations=predict_durations,
            pitch=units.pitch or None,
            style_units=units.style or None,
            durations=durations,
        )
        try:
            return await self._vocode_batcher.submit(request)
        except ValueError as exc:  # out-of-range speaker, style or unit: the caller's values
            raise BadRequestError(str(exc)) from exc

    def align(self, tokens: str, style_seed: int | None) -> AlignedUnits:
        """A client's speech token string → vocoder streams, filling what it left out."""
        units = parse_units(tokens)
        if not self.is_expressive and any(unit.kind != "Hu" for unit in units):
            raise BadRequestError("this is the base variant: pitch [Pi] and style [St] tokens are not accepted")
        return align_units(units, self.is_expressive, style_seed)

    async def prompt_segments(self, items: list[GenerationInput]) -> list[PromptSegment]:
        """Inputs as prompt segments; their audio goes to the speech tokenizer together (one batch)."""
        return list(await asyncio.gather(*(self._prompt_segment(item) for item in items)))

    async def _prompt_segment(self, item: GenerationInput) -> PromptSegment:
        if item.modality == Modality.TEXT or item.audio is None:
            return PromptSegment(item.modality, item.text)
        return PromptSegment(Modality.SPEECH, (await self.tokenize(item.audio)).to_string())

    def _token_budget(self, output: OutputModality, options: SamplingOptions, prompt_tokens: int) -> int:
        if options.max_speech_seconds is not None and options.max_speech_seconds > self.limits.max_speech_seconds:
            raise BadRequestError(
                f"max_speech_seconds {options.max_speech_seconds:g} exceeds the server limit of "
                f"{self.limits.max_speech_seconds:g} s"
            )
        if output == OutputModality.TEXT:
            budget = options.max_new_tokens or self.limits.default_text_tokens
        else:  # the seconds of speech in tokens (an upper bound: generation stops once the audio fills them)
            budget = speech_token_budget(self._speech_seconds(options), self.vocoder_sizes)
            if options.max_new_tokens is not None:
                budget = min(budget, options.max_new_tokens)
        room = self.limits.max_model_len - prompt_tokens
        if room <= 0:
            raise BadRequestError(
                f"the prompt is {prompt_tokens} tokens long; the model's context holds {self.limits.max_model_len}"
            )
        return min(budget, room)

    def _split_output(self, pieces: list[TokenPiece], output: OutputModality) -> list[OutputSegment]:
        """Generated ids → alternating text and speech segments; markers switch, units become token strings."""
        current = Modality.SPEECH if output == OutputModality.SPEECH else Modality.TEXT
        segments: list[OutputSegment] = []
        run: list[int] = []  # ids of the current run

        def close() -> None:
            if run and current == Modality.TEXT:
                segments.append(OutputSegment(Modality.TEXT, text=self.tokenizer.decode_text(run)))
            elif run:
                segments.append(OutputSegment(Modality.SPEECH, tokens=self._token_string(run)))
            run.clear()

        def switch(modality: Modality) -> None:
            nonlocal current
            if modality != current:
                close()
                current = modality

        for piece in pieces:
            if piece.marker is not None:
                switch(Modality.TEXT if piece.marker == TEXT_MARKER else Modality.SPEECH)
            elif piece.unit_kind is not None:
                switch(Modality.SPEECH)
                run.append(piece.token_id)
            elif piece.token_id != self.tokenizer.eos_id:
                switch(Modality.TEXT)
                run.append(piece.token_id)
        close()
        return segments

    def _token_string(self, token_ids: list[int]) -> str:
        """Generated ids as the API writes them (`[Hu12][Pi3]…`): made only for responses."""
        return "".join(self.tokenizer.pieces(token_ids))

    async def prepare(
        self, inputs: list[GenerationInput], output: OutputModality, options: SamplingOptions
    ) -> TokenRequest:
        """Tokenize the inputs and build the engine request; every input error surfaces here, before any
        response (streamed or not) has started."""
        return self.request_for(await self.prompt_segments(inputs), output, options)

    def request_for(
        self, segments: list[PromptSegment], output: OutputModality, options: SamplingOptions
    ) -> TokenRequest:
        """The engine request for a prompt already in segments (text, or speech as unit strings)."""
        return self.request_for_ids(self.tokenizer.encode_prompt(build_prompt(segments, output)), output, options)

    def request_for_ids(self, prompt_ids: list[int], output: OutputModality, options: SamplingOptions) -> TokenRequest:
        """The engine request for prompt ids built elsewhere (few-shot: a cached prefix's ids, then the query's)."""
        return TokenRequest(
            prompt_ids=prompt_ids,
            max_tokens=self._token_budget(output, options, len(prompt_ids)),
            allowed_token_ids=allowed_token_ids(self.tokenizer, output, self.vocoder_sizes),
            stop_token_ids=[] if output == OutputModality.SPEECH else [self.tokenizer.eos_id],
            temperature=options.temperature,
            top_p=options.top_p,
            top_k=options.top_k,
            seed=options.seed,
        )

    async def generate(
        self,
        inputs: list[GenerationInput],
        output: OutputModality,
        options: SamplingOptions,
        request_id: str | None = None,
    ) -> GenerationResult:
        """Any-to-any generation as the reference's `Spiritlm.generate`, served through vLLM."""
        return await self.run(await self.prepare(inputs, output, options), output, options, request_id)

    async def run(
        self,
        request: TokenRequest,
        output: OutputModality,
        options: SamplingOptions,
        request_id: str | None = None,
        stop: StopRule | None = None,
    ) -> GenerationResult:
        """A prepared request to its result; `stop` may end the answer early (speech is then vocoded without
        the stop: only ids the rule calls final reach the duration clock)."""
        request_id = request_id or uuid.uuid4().hex
        request = replace(request, delta_tokens=OFFLINE_DELTA_TOKENS)
        # Speech stops once the predicted durations of what was generated fill the budget (the token budget
        # only bounds it from above: deduplicated units last 40 ms or more each).
        clock = None if output == OutputModality.TEXT else self._open_stream(options)
        answer = _Answer(self.tokenizer)
        async with aclosing(self._generate(request, request_id, options, answer, stop, clock)) as steps:
            async for _ in steps:
                pass
        durations = None  # predicted by the vocoder, unless the budget cut the units
        if clock is not None and answer.full:
            durations = clock.durations
            answer.cut(answer.through_hubert(len(durations)))
        output_segments = self._split_output(answer.pieces, output)
        speech = align_units(answer.units(), self.is_expressive, options.seed)
        audio = None
        if output != OutputModality.TEXT:
            audio = await self.synthesize(speech, options.speaker, options.style, durations=durations)
        logger.info(
            "request %s: %d prompt tokens, %d generated, finish=%s",
            request_id,
            len(request.prompt_ids),
            len(answer.ids),
            answer.finish_reason,
        )
        prompt_tokens = len(request.prompt_ids)
        return GenerationResult(output_segments, speech, audio, prompt_tokens, len(answer.ids), answer.finish_reason)

    def open_speech_stream(
        self,
        request: TokenRequest,
        options: SamplingOptions,
        request_id: str | None = None,
        stop: StopRule | None = None,
    ) -> AsyncIterator["SpeechDelta"]:
        """Speech output as it is generated: token deltas → aligned frames → streaming vocoder → audio chunks.

        The vocoder runs on the speech-worker thread, chunk by chunk (a small first chunk, then larger), so
        the first audio leaves after about ten units, not after the whole generation; chunks of concurrent
        streams go through one micro-batcher. Abandoning the iterator (client gone) aborts the engine request.
        With a `stop` rule, ids it may still cut are held back, so a stop is never heard.
        """
        clock = self._open_stream(options)
        request = replace(request, delta_tokens=STREAMED_SPEECH_DELTA_TOKENS)
        return self._stream_speech(request, clock, options, request_id or uuid.uuid4().hex, stop)

    def _open_stream(self, options: SamplingOptions) -> StreamingDecoder:
        try:  # checks speaker and style now, while the caller can still answer with a 4xx
            return self.vocoder.open_stream(options.speaker, options.style)
        except ValueError as exc:
            raise BadRequestError(str(exc)) from exc

    def _speech_seconds(self, options: SamplingOptions) -> float:
        """How long a speech answer may last: ``max_speech_seconds``, else the default (the server's limit when
        only ``max_new_tokens`` was asked), never beyond the server's limit. Bounds both tokens and audio."""
        seconds = options.max_speech_seconds
        if seconds is None:
            asked_tokens = options.max_new_tokens is not None
            seconds = self.limits.max_speech_seconds if asked_tokens else self.limits.default_speech_seconds
        return min(seconds, self.limits.max_speech_seconds)

    def _speech_frame_budget(self, options: SamplingOptions) -> int:
        """The most vocoder frames (40 ms each) a speech answer may last."""
        return int(self._speech_seconds(options) * self.vocoder.sample_rate) // self.vocoder.hop

    async def _fill(
        self, decoder: StreamingDecoder, frames: AlignedUnits, max_frames: int, final: bool = False
    ) -> bool:
        """Add aligned units to a stream (on the speech worker: durations only, no generator forward). Once the
        committed durations reach ``max_frames``, end the stream within them and return True."""
        feed = partial(decoder.feed, frames.hubert, frames.pitch or None, frames.style or None, final=final)
        await asyncio.get_running_loop().run_in_executor(self._speech_worker.urgent, feed)
        if decoder.committed_frames < max_frames:
            return False
        decoder.end_within(max_frames)
        return True

    async def _generate(
        self,
        request: TokenRequest,
        request_id: str,
        options: SamplingOptions,
        answer: _Answer,
        stop: StopRule | None,
        clock: StreamingDecoder | None,
    ) -> AsyncIterator[None]:
        """Generate ``answer``, yielding after each engine step that did not end it; offline and streamed answers
        both come from here. ``stop`` may end it early, cut before the stop. Speech (a ``clock``): the released
        units go through the aligner into the stream, and the answer ends once their durations fill the budget."""
        aligner = UnitAligner(self.is_expressive, options.seed, max_held=STREAMING_MAX_HELD_UNITS)
        max_frames = self._speech_frame_budget(options)

        async def release(final: int) -> None:
            if clock is not None:
                frames = aligner.push(answer.units(answer.released, final))
                answer.full = await self._fill(clock, frames, max_frames)
            answer.released = final

        stream = self.engine.stream(request, request_id, self.limits.generation_timeout_s)
        async with aclosing(stream) as deltas:  # leaving early aborts the engine request at once
            async for delta in deltas:
                answer.extend(delta.token_ids)
                answer.finish_reason = delta.finish_reason or answer.finish_reason
                scan = stop.scan(answer.ids) if stop is not None else StopScan(len(answer.ids), False)
                await release(scan.final)
                if answer.full:
                    answer.finish_reason = "length"
                    break
                if scan.ended:
                    answer.cut(scan.final)
                    answer.finish_reason = "stop"
                    break
                yield
        if clock is not None and not answer.full and answer.released < len(answer.ids):
            await release(len(answer.ids))  # what a stop rule held back until the end
        if clock is not None and not answer.full:
            answer.full = await self._fill(clock, aligner.finish(), max_frames, final=True)

    async def _stream_speech(
        self,
        request: TokenRequest,
        clock: StreamingDecoder,
        options: SamplingOptions,
        request_id: str,
        stop: StopRule | None,
    ) -> AsyncIterator["SpeechDelta"]:
        async def emit() -> np.ndarray:
            if not clock.ready:
                return np.zeros(0, dtype=np.float32)
            return await self._stream_vocode_batcher.submit(clock)

        answer = _Answer(self.tokenizer)
        sent = 0  # released ids already in a delta's tokens
        async with aclosing(self._generate(request, request_id, options, answer, stop, clock)) as steps:
            async for _ in steps:
                tokens, sent = self._token_string(answer.ids[sent : answer.released]), answer.released
                yield SpeechDelta(tokens, await emit(), answer.released)
        spoken = answer.ids[: answer.through_hubert(len(clock.durations))] if answer.full else answer.ids
        tokens = self._token_string(answer.ids[sent : answer.released])
        yield SpeechDelta(tokens, await emit(), len(spoken), spoken=self._token_string(spoken))
        logger.info("request %s: streamed %d units", request_id, len(clock.durations))

    async def stream_text(self, request: TokenRequest, request_id: str | None = None) -> AsyncIterator[TextDelta]:
        """Text output as it is generated, ending with a step that carries the finish reason. SentencePiece
        pieces do not decode one by one (byte pieces, leading spaces), so the whole text so far is decoded and
        only what is new is yielded."""
        request_id = request_id or uuid.uuid4().hex
        generated: list[int] = []
        count, text, finish_reason = 0, "", "length"
        async for delta in self.engine.stream(request, request_id, self.limits.generation_timeout_s):
            count += len(delta.token_ids)
            finish_reason = delta.finish_reason or finish_reason
            generated.extend(token for token in delta.token_ids if token != self.tokenizer.eos_id)
            decoded = self.tokenizer.decode_text(generated)
            if len(decoded) > len(text) and not decoded.endswith("\ufffd"):  # wait for whole UTF-8 characters
                yield TextDelta(decoded[len(text) :], count)
                text = decoded
        yield TextDelta("", count, finish_reason)

    async def warm_up(self) -> None:
        """Run one tiny request through every stage before reporting ready (first calls are the slowest)."""
        silence = np.zeros(SAMPLE_RATE, dtype=np.float32)  # one second
        await self.generate(
            [GenerationInput(Modality.SPEECH, audio=silence)],
            OutputModality.SPEECH,
            SamplingOptions(max_new_tokens=4, seed=0),
            request_id="warm-up",
        )

    async def close(self) -> None:
        for batcher in self._batchers:
            await batcher.close()
        self._speech_worker.shutdown()

    def fit_prompt(
        self, lead: list[PromptSegment], groups: list[list[PromptSegment]], output: OutputModality, budget: int
    ) -> int:
        """How many leading `groups` (a conversation's oldest items) to leave out so that `lead` and the rest fit
        in `budget` prompt tokens; the last group is always kept, fitting or not."""
        dropped = 0
        while dropped < len(groups) - 1:
            segments = [segment for group in groups[dropped:] for segment in group]
            if len(self.tokenizer.encode_prompt(build_prompt(lead + segments, output))) <= budget:
                break
            dropped += 1
        return dropped
