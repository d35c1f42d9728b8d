"""Few-shot prompts for transcription (ASR) and speech (TTS), and the rules that end their answers.

Spirit LM is a base LM: zero-shot it continues a prompt rather than transcribing or reading it. The paper measures
ASR and TTS with 10 examples in the prompt (spiritlm-compat.md §11); its exact prompts were never published, so
the layouts here are ours (docs/few_shot.md has them token by token). A pool is a folder of `NAME.<audio>` +
`NAME.txt` pairs, read and tokenized once at start-up. The examples' ids are kept as one id list, the prefix,
and every request is that list followed by the query's ids, so vLLM's prefix cache serves the prefix: building
ids by joining lists (not by tokenizing a joined string) is what makes the prefix the same ids every time.

Answers end where the examples taught them to: ASR at the end flag, TTS at the units of the spoken word "stop",
either at a modality marker; the stop is cut from what is returned.
"""

import asyncio
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from spiritserve.audio import decode_audio
from spiritserve.engine.engine import TokenRequest
from spiritserve.engine.modality import speech_token_budget
from spiritserve.engine.tokenizer import SpiritTextTokenizer
from spiritserve.errors import SpiritServeError
from spiritserve.pipeline import GenerationInput, GenerationResult, SamplingOptions, SpiritPipeline, StopScan
from spiritserve.settings import Settings
from spiritserve.tokenizers.speech import SpeechUnits
from spiritserve.tokens import SPEECH_MARKER, TEXT_MARKER, Modality, OutputModality

logger = logging.getLogger(__name__)

TRANSCRIPT_START = "<START>"
TRANSCRIPT_END = "<END>"
STOP_WORD = "stop"
STOP_CLIP = "stop"  # `stop.<audio>` in a TTS pool: the spoken stop word (never an example)
# The base tokenizer's units of the spoken "stop", as the paper gives them (spiritlm-compat.md §11.1).
BASE_STOP_UNITS = (481, 149, 40, 48, 315, 242, 428, 494, 75, 497, 188, 388, 109, 23, 338, 23, 481)
STOP_EDIT_FRACTION = 4  # a generated "stop" may differ from the stop units by len // 4 edits


class FewShotPoolError(SpiritServeError):
    """A pool folder that cannot be served; start-up stops with this message."""


@dataclass(frozen=True)
class Example:
    name: str
    text: str  # NAME.txt: the transcript (transcription and speech pools) or the label (a classification pool)
    waveform: np.ndarray  # 16 kHz mono


@dataclass(frozen=True)
class Pool:
    folder: Path
    examples: list[Example]
    stop_clip: np.ndarray | None = None


def read_pool(folder: Path, max_audio_seconds: float, max_decoded_bytes: int, stop_clip_required: bool = False) -> Pool:
    """A pool folder's pairs, sorted by name, decoded; every error names the file."""
    if not folder.is_dir():
        raise FewShotPoolError(f"few-shot pool {folder}: not a folder")
    files = sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))
    transcripts = {path.stem: path for path in files if path.suffix == ".txt"}
    audio: dict[str, Path] = {}
    for path in files:
        if path.suffix == ".txt":
            continue
        if path.stem in audio:
            raise FewShotPoolError(
                f"few-shot pool {folder}: two audio files named {path.stem}: {audio[path.stem]}, {path}"
            )
        audio[path.stem] = path
    if STOP_CLIP in transcripts:
        raise FewShotPoolError(f"{transcripts[STOP_CLIP]}: the name {STOP_CLIP!r} is kept for the spoken stop word")
    for stem, path in transcripts.items():
        if stem not in audio:
            raise FewShotPoolError(f"{path}: a transcript without audio (expected {stem}.<audio> next to it)")

    def decode(path: Path) -> np.ndarray:
        try:
            return decode_audio(path.read_bytes(), max_audio_seconds, max_decoded_bytes)
        except (OSError, SpiritServeError) as exc:
            raise FewShotPoolError(f"{path}: unreadable audio: {exc}") from exc

    examples = []
    for stem, path in audio.items():
        if stem == STOP_CLIP:
            continue
        if stem not in transcripts:
            raise FewShotPoolError(f"{path}: no transcript (expected {folder / (stem + '.txt')})")
        transcript = " ".join(transcripts[stem].read_text(encoding="utf-8").split())
        if not transcript:
            raise FewShotPoolError(f"{transcripts[stem]}: the transcript is empty")
        examples.append(Example(stem, transcript, decode(path)))
    if not examples:
        raise FewShotPoolError(f"few-shot pool {folder}: no NAME.<audio> + NAME.txt pairs")
    stop_clip = decode(audio[STOP_CLIP]) if STOP_CLIP in audio else None
    if stop_clip is None and stop_clip_required:
        raise FewShotPoolError(
            f"few-shot pool {folder}: the expressive variant needs {STOP_CLIP}.<audio>, the spoken word "
            f"{STOP_WORD!r} (the paper's stop units are the base tokenizer's)"
        )
    return Pool(folder, examples, stop_clip)


def continuation_ids(tokenizer: SpiritTextTokenizer, text: str) -> list[int]:
    """Ids of `text`, which starts with a modality marker, as they follow other ids. SentencePiece never merges
    across a marker, so these are exactly the ids this text gets inside a whole-prompt encoding; a fresh encoding
    starts with BOS and the dummy-prefix piece, which are dropped."""
    ids = tokenizer.encode_prompt(text)
    assert tokenizer.classify(ids[2]).marker is not None, text[:20]
    return ids[2:]


def _with_markers_as_stops(tokenizer: SpiritTextTokenizer, request: TokenRequest) -> TokenRequest:
    """The examples are separated by modality markers: a marker in the answer starts a next example, so it may be
    sampled and ends the answer at once."""
    markers = list(tokenizer.marker_ids.values())
    allowed = request.allowed_token_ids
    return replace(
        request,
        allowed_token_ids=None if allowed is None else [*allowed, *markers],
        stop_token_ids=[*request.stop_token_ids, *markers],
    )


def _marker_or_eos(tokenizer: SpiritTextTokenizer, generated: list[int], start: int) -> int | None:
    for index in range(start, len(generated)):
        if generated[index] == tokenizer.eos_id or tokenizer.classify(generated[index]).marker is not None:
            return index
    return None


class TranscriptEnd:
    """Stop rule of a few-shot transcription: the end flag in the decoded text (it is several pieces, spelt
    differently in context, e.g. `>.`), EOS, or a modality marker. The flag and all after it are cut."""

    def __init__(self, tokenizer: SpiritTextTokenizer) -> None:
        self.tokenizer = tokenizer

    def scan(self, generated: list[int]) -> StopScan:
        stop = _marker_or_eos(self.tokenizer, generated, 0)
        answer = generated if stop is None else generated[:stop]
        text = self.tokenizer.decode_text(answer)
        flag = text.find(TRANSCRIPT_END)
        if flag >= 0:
            return StopScan(self._ids_before(answer, flag), True)
        if stop is not None:
            return StopScan(stop, True)
        return StopScan(self._ids_before(answer, len(text) - _flag_start_held(text)), False)

    def _ids_before(self, ids: list[int], chars: int) -> int:
        """The most leading ids whose text ends at or before character `chars` (the flag's start)."""
        count = len(ids)
        while count and len(self.tokenizer.decode_text(ids[:count])) > chars:
            count -= 1
        return count


def _flag_start_held(text: str) -> int:
    """Length of the longest end of `text` that may be the start of the end flag (and so may still be cut)."""
    for length in range(min(len(text), len(TRANSCRIPT_END) - 1), 0, -1):
        if TRANSCRIPT_END.startswith(text[-length:]):
            return length
    return 0


class StopUnitsMatcher:
    """Approximate matching of the stop units at the end of a growing unit sequence (Sellers' algorithm: edit
    distance to the best-matching stretch that ends at the newest unit), one column per unit pushed.

    Why approximate: a generated word is not a copy of its units elsewhere, and one unit in, out or changed
    must not make the answer run to its budget. Why not looser: a stretch of other speech within len // 4 edits
    of 17 units is vanishingly unlikely (each unit is one of 500).
    """

    def __init__(self, pattern: tuple[int, ...], max_edits: int) -> None:
        self.pattern = pattern
        self.max_edits = max_edits
        self.count = 0  # units pushed
        # Per pattern prefix length i: the edit distance of its best alignment ending at the newest unit, and
        # the index of the alignment's first unit (count: it starts after the newest unit).
        self.costs = list(range(len(pattern) + 1))
        self.starts = [0] * (len(pattern) + 1)

    def push(self, unit: int) -> int | None:
        """Add a unit; when the stop units now end the sequence, the index of the first unit of that match."""
        costs, starts = [0], [self.count + 1]
        for i, expected in enumerate(self.pattern, start=1):
            costs_and_starts = (
                (self.costs[i - 1] + (expected != unit), self.starts[i - 1]),  # unit matches or replaces one
                (self.costs[i] + 1, self.starts[i]),  # unit is one too many
                (costs[i - 1] + 1, starts[i - 1]),  # a stop unit is missing
            )
            cost, start = min(costs_and_starts, key=lambda pair: (pair[0], -pair[1]))  # ties: the shorter match
            costs.append(cost)
            starts.append(start)
        self.costs, self.starts = costs, starts
        self.count += 1
        return starts[-1] if costs[-1] <= self.max_edits else None

    @property
    def first_open(self) -> int:
        """Index of the first unit a later match could still start at (edit costs never fall along a match)."""
        return min(start for cost, start in zip(self.costs, self.starts, strict=True) if cost <= self.max_edits)


class StopUnitsEnd:
    """Stop rule of few-shot speech: the stop units at the end of the generated HuBERT units (deduplicated, as
    the LM writes them), or a modality marker. The stop's units are cut, so its audio is never produced; units
    that may still turn out to start a stop are held back from streaming."""

    def __init__(self, tokenizer: SpiritTextTokenizer, stop_units: tuple[int, ...]) -> None:
        self.tokenizer = tokenizer
        self.matcher = StopUnitsMatcher(stop_units, len(stop_units) // STOP_EDIT_FRACTION)
        self.unit_positions: list[int] = []  # index in the generated ids of each deduplicated Hu unit
        self.last_unit: int | None = None
        self.scanned = 0

    def scan(self, generated: list[int]) -> StopScan:
        stop = _marker_or_eos(self.tokenizer, generated, self.scanned)
        for index in range(self.scanned, len(generated) if stop is None else stop):
            piece = self.tokenizer.classify(generated[index])
            if piece.unit_kind != "Hu" or piece.unit is None or piece.unit == self.last_unit:
                continue
            self.last_unit = piece.unit
            self.unit_positions.append(index)
            start = self.matcher.push(piece.unit)
            if start is not None:
                return StopScan(self.unit_positions[start], True)
        if stop is not None:
            return StopScan(stop, True)
        self.scanned = len(generated)
        first_open = self.matcher.first_open
        return StopScan(
            self.unit_positions[first_open] if first_open < len(self.unit_positions) else len(generated), False
        )


def dedup(units: list[int]) -> tuple[int, ...]:
    return tuple(unit for index, unit in enumerate(units) if index == 0 or unit != units[index - 1])


@dataclass(frozen=True)
class TranscriptionPrompt:
    """`[Speech]<units>[Text]<START> transcript <END>` per example; the query `[Speech]<units>[Text]<START>`."""

    prefix_ids: tuple[int, ...]

    @staticmethod
    def query(speech: str) -> str:
        return f"{SPEECH_MARKER}{speech}{TEXT_MARKER}{TRANSCRIPT_START}"

    @classmethod
    def example(cls, speech: str, transcript: str) -> str:
        return f"{cls.query(speech)} {transcript} {TRANSCRIPT_END}"


@dataclass(frozen=True)
class SpeechPrompt:
    """`[Text]transcript stop[Speech]<units><stop units>` per example; the query `[Text]input stop[Speech]`."""

    prefix_ids: tuple[int, ...]
    stop_units: tuple[int, ...]  # deduplicated HuBERT units of the spoken stop word

    @staticmethod
    def query(text: str) -> str:
        return f"{TEXT_MARKER}{text} {STOP_WORD}{SPEECH_MARKER}"

    @classmethod
    def example(cls, transcript: str, speech: str, stop_speech: str) -> str:
        return f"{cls.query(transcript)}{speech}{stop_speech}"


@dataclass(frozen=True)
class FewShotPrompts:
    """The server's prompts per task; None: that task is zero-shot (the prompt is the input alone)."""

    transcription: TranscriptionPrompt | None = None
    speech: SpeechPrompt | None = None

    async def transcribe(
        self, pipeline: SpiritPipeline, waveform: np.ndarray, options: SamplingOptions
    ) -> GenerationResult:
        request, stop = await self.transcription_request(pipeline, waveform, options)
        return await pipeline.run(request, OutputModality.TEXT, options, stop=stop)

    async def speak(self, pipeline: SpiritPipeline, text: str, options: SamplingOptions) -> GenerationResult:
        request, stop = await self.speech_request(pipeline, text, options)
        return await pipeline.run(request, OutputModality.SPEECH, options, stop=stop)

    async def transcription_request(
        self, pipeline: SpiritPipeline, waveform: np.ndarray, options: SamplingOptions
    ) -> tuple[TokenRequest, TranscriptEnd | None]:
        if self.transcription is None:
            inputs = [GenerationInput(Modality.SPEECH, audio=waveform)]
            return await pipeline.prepare(inputs, OutputModality.TEXT, options), None
        units = await pipeline.tokenize(waveform)
        query = continuation_ids(pipeline.tokenizer, TranscriptionPrompt.query(units.to_string()))
        request = pipeline.request_for_ids([*self.transcription.prefix_ids, *query], OutputModality.TEXT, options)
        return _with_markers_as_stops(pipeline.tokenizer, request), TranscriptEnd(pipeline.tokenizer)

    async def speech_request(
        self, pipeline: SpiritPipeline, text: str, options: SamplingOptions
    ) -> tuple[TokenRequest, StopUnitsEnd | None]:
        if self.speech is None:
            inputs = [GenerationInput(Modality.TEXT, text=text)]
            return await pipeline.prepare(inputs, OutputModality.SPEECH, options), None
        query = continuation_ids(pipeline.tokenizer, SpeechPrompt.query(text))
        request = pipeline.request_for_ids([*self.speech.prefix_ids, *query], OutputModality.SPEECH, options)
        stop = StopUnitsEnd(pipeline.tokenizer, self.speech.stop_units)
        return _with_markers_as_stops(pipeline.tokenizer, request), stop


@dataclass(frozen=True)
class ConfiguredPools:
    transcription: Pool | None
    speech: Pool | None
    classification: Pool | None


def read_pools(settings: Settings, expressive: bool) -> ConfiguredPools:
    """The configured pools, read before the engine starts so a bad file fails fast."""

    def read(folder: Path | None, stop_clip_required: bool = False) -> Pool | None:
        if folder is None:
            return None
        return read_pool(folder, settings.max_audio_seconds, settings.max_decoded_bytes, stop_clip_required)

    return ConfiguredPools(
        read(settings.asr_examples),
        read(settings.tts_examples, stop_clip_required=expressive),
        read(settings.classify_examples),
    )


async def build_prompts(
    pipeline: SpiritPipeline, transcription_pool: Pool | None, speech_pool: Pool | None
) -> FewShotPrompts:
    """Tokenize the pools' audio once and keep each task's prefix as ids."""
    return FewShotPrompts(
        transcription=None if transcription_pool is None else await _transcription_prompt(pipeline, transcription_pool),
        speech=None if speech_pool is None else await _speech_prompt(pipeline, speech_pool),
    )


async def _speech_units(pipeline: SpiritPipeline, clips: list[np.ndarray]) -> list[SpeechUnits]:
    return list(await asyncio.gather(*(pipeline.tokenize(clip) for clip in clips)))  # batched by the pipeline


async def _transcription_prompt(pipeline: SpiritPipeline, pool: Pool) -> TranscriptionPrompt:
    tokenizer = pipeline.tokenizer
    speech = [units.to_string() for units in await _speech_units(pipeline, [item.waveform for item in pool.examples])]
    shots = [
        TranscriptionPrompt.example(units, item.text) for units, item in zip(speech, pool.examples, strict=True)
    ]
    prefix = tokenizer.encode_prompt("".join(shots))
    longest_query = max(len(continuation_ids(tokenizer, TranscriptionPrompt.query(units))) for units in speech)
    _check_room(pipeline, pool, "transcription", len(prefix), longest_query, pipeline.limits.default_text_tokens)
    return TranscriptionPrompt(tuple(prefix))


async def _speech_prompt(pipeline: SpiritPipeline, pool: Pool) -> SpeechPrompt:
    tokenizer = pipeline.tokenizer
    if pool.stop_clip is not None:
        stop = await pipeline.tokenize(pool.stop_clip)
    elif max(BASE_STOP_UNITS) < len(tokenizer.unit_ids["Hu"]):
        stop = SpeechUnits(list(BASE_STOP_UNITS))
    else:
        raise FewShotPoolError(
            f"few-shot pool {pool.folder}: no {STOP_CLIP}.<audio>, and this tokenizer lacks the paper's stop units"
        )
    speech = await _speech_units(pipeline, [item.waveform for item in pool.examples])
    shots = [SpeechPrompt.example(item.text, units.to_string(), stop.to_string())
             for units, item in zip(speech, pool.examples, strict=True)]  # fmt: skip
    prefix = tokenizer.encode_prompt("".join(shots))
    longest_query = max(len(continuation_ids(tokenizer, SpeechPrompt.query(item.text))) for item in pool.examples)
    answer = speech_token_budget(pipeline.limits.default_speech_seconds, pipeline.vocoder_sizes)
    _check_room(pipeline, pool, "speech", len(prefix), longest_query, answer)
    return SpeechPrompt(tuple(prefix), dedup(stop.hubert))


def _check_room(pipeline: SpiritPipeline, pool: Pool, task: str, prefix: int, query: int, answer: int) -> None:
    """Refuse a prefix that leaves no room for a query like the examples and a default-sized answer."""
    context = pipeline.limits.max_model_len
    if prefix + query + answer > context:
        raise FewShotPoolError(
            f"few-shot {task} pool {pool.folder}: its {len(pool.examples)} examples take {prefix} tokens; with a query "
            f"as long as the longest example's ({query}) and the default answer budget ({answer}) that is "
            f"{prefix + query + answer}, more than the model's context of {context} tokens "
            "(SPIRITSERVE_ENGINE_MAX_MODEL_LEN): use fewer or shorter examples"
        )
    logger.info(
        "few-shot %s: %d examples from %s, a prefix of %d tokens", task, len(pool.examples), pool.folder, prefix
    )
