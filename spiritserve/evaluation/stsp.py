"""STSP, Speech-Text Sentiment Preservation (the paper's Table 3), against a running server.

A prompt with a known sentiment is continued by the served model in one of four directions (T→T, T→S, S→S,
S→T) and the continuation's sentiment is judged by the release's classifiers, run here on CPU: the speech
classifier (an Expresso emotion classifier: happy → positive, angry and sad → negative, default → neutral) for
speech answers, the text classifier (three sentiments) for text answers. A judgement is right when the two
sentiments agree. Text prompts come from EXPRESSO-ASR; speech prompts from EXPRESSO-READ and EMOV, whose two
accuracies are averaged, as in the paper. Every configuration runs three times (seeds seed, seed+1, seed+2).

The data folder is the STSP release as its tarball unpacks (`--strip-components=1`):

    DIR/data/...                                      audio (emov/, expresso/read/, expresso/conversational/)
    DIR/manifest/expresso/expresso_asr.test.jsonl     text prompts (field `asr`)
    DIR/manifest/expresso/expresso_read.test.jsonl    speech prompts (field `wav_path`, relative to DIR)
    DIR/manifest/emov/emov.test.jsonl                 speech prompts
    DIR/manifest/few_shot/{t2t,t2s,s2s,s2t}.jsonl     few-shot pools (`prompt`, `generation`, `sentiment`)
    DIR/model/speech_classifier/                      transformers audio classifier + its feature extractor
    DIR/model/text_classifier/                        transformers sequence classifier (+ tokenizer: see below)

The release's text classifier has no tokenizer files (the reference downloads one from the Hugging Face hub at
run time); nothing is downloaded here: put the tokenizer files in the folder or pass `--text-tokenizer DIR`.

Few-shot prompts (docs/evaluation.md has the layout): `ceil(n/3)` examples per sentiment drawn from the
direction's pool with the run's seed, in a seeded random order, each example its prompt side then its
generation side (a speech side is the first half of its clip as the prompt, the second half as the
generation), examples separated by a newline, then the test item itself. The reference's few-shot path never
showed the model the test item (spiritlm-compat.md §11.2); here the test item always ends the prompt.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
import math
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from spiritserve.audio import SAMPLE_RATE, decode_audio, encode_wav
from spiritserve.errors import SpiritServeError
from spiritserve.evaluation.client import EvalClient, audio_item, text_item
from spiritserve.evaluation.report import TaskResult
from spiritserve.evaluation.tasks import DatasetError, EvalOptions, progress_bar, read_jsonl

logger = logging.getLogger(__name__)

DIRECTIONS = ("t2t", "t2s", "s2s", "s2t")
DIRECTION_LABELS = {"t2t": "T→T", "t2s": "T→S", "s2s": "S→S", "s2t": "S→T"}
SHOT_COUNTS = (0, 3, 6, 9)
SENTIMENTS = ("positive", "negative", "neutral")
# The paper's budgets (spiritlm-compat.md §10.4 and §12): 50 new tokens for text answers, 200 for T→S (paper
# App. D), 300 for S→S (the release's script and the paper's speech continuations).
PAPER_MAX_NEW_TOKENS = {"t2t": 50, "t2s": 200, "s2s": 300, "s2t": 50}
TEMPERATURE = 0.8
TOP_P = 0.95
DEFAULT_RUNS = 3
DEFAULT_SEED = 0
# Gold labels: the manifests' `sentiment`, else their `emotion` mapped like this (Expresso and EMOV emotions).
EMOTION_SENTIMENT = {
    "happy": "positive",
    "amused": "positive",
    "angry": "negative",
    "sad": "negative",
    "default": "neutral",
    "neutral": "neutral",
}
# The release's speech classifier predicts Expresso emotions (its id2label: angry, default, happy, sad).
SPEECH_LABEL_SENTIMENT = EMOTION_SENTIMENT

TEXT_SUBSETS = {"expresso_asr": "manifest/expresso/expresso_asr.{split}.jsonl"}
SPEECH_SUBSETS = {
    "expresso_read": "manifest/expresso/expresso_read.{split}.jsonl",
    "emov": "manifest/emov/emov.{split}.jsonl",
}
FEW_SHOT_POOL = "manifest/few_shot/{direction}.jsonl"
SPEECH_CLASSIFIER = "model/speech_classifier"
TEXT_CLASSIFIER = "model/text_classifier"
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
SPLITS = ("test", "dev")
MAX_CLIP_SECONDS = 600.0  # a few-shot clip longer than this is refused
MIN_ANSWER_SECONDS = 0.1  # a shorter speech answer is counted as empty (and wrong)
CHUNK_ITEMS = 64  # items generated together, then classified while the next chunk is generated
CLASSIFIER_BATCH = 16

# Paper Table 3 (spiritlm-compat.md §12): (variant, shots) → accuracy per direction.
PAPER_TABLE3: dict[tuple[str, int], dict[str, float]] = {
    ("base", 0): {"t2t": 0.65, "t2s": 0.33, "s2s": 0.33, "s2t": 0.34},
    ("expressive", 0): {"t2t": 0.63, "t2s": 0.38, "s2s": 0.54, "s2t": 0.36},
    ("expressive", 3): {"t2t": 0.64, "t2s": 0.37, "s2s": 0.50, "s2t": 0.34},
    ("expressive", 6): {"t2t": 0.67, "t2s": 0.39, "s2s": 0.51, "s2t": 0.35},
    ("expressive", 9): {"t2t": 0.64, "t2s": 0.38, "s2s": 0.40, "s2t": 0.37},
}


class StspError(DatasetError):
    """Missing or malformed STSP data or classifiers; the message is one line naming the file."""


# ---------------------------------------------------------------------------------------------------------------
# Data: manifests and few-shot pools


@dataclass(frozen=True)
class Item:
    """One test prompt: its text (text subsets) or its audio file (speech subsets), and its gold sentiment."""

    id: str
    sentiment: str
    text: str | None = None
    audio: Path | None = None


@dataclass(frozen=True)
class Shot:
    """One few-shot example: each side is text or an audio file, as the direction says."""

    sentiment: str
    prompt: str | Path
    generation: str | Path


@dataclass(frozen=True)
class Subset:
    name: str
    manifest: Path
    items: list[Item]


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise StspError(f"STSP: missing {path}")
    try:
        records = list(read_jsonl(path))
    except DatasetError as exc:
        raise StspError(f"STSP: {exc}") from None
    if not records:
        raise StspError(f"STSP: {path} has no records")
    return records


def _sentiment(record: dict[str, Any], where: str) -> str:
    """The record's gold sentiment: `sentiment`, else its `emotion` mapped (EMOTION_SENTIMENT)."""
    value = record.get("sentiment")
    if isinstance(value, str) and value.strip():
        sentiment = value.strip().lower()
        if sentiment not in SENTIMENTS:
            raise StspError(f"STSP: {where}: sentiment {value!r} is not one of {', '.join(SENTIMENTS)}")
        return sentiment
    emotion = record.get("emotion")
    if isinstance(emotion, str) and emotion.strip().lower() in EMOTION_SENTIMENT:
        return EMOTION_SENTIMENT[emotion.strip().lower()]
    raise StspError(f"STSP: {where}: no `sentiment` and no known `emotion` (got {emotion!r})")


def resolve_audio(root: Path, relative: str, where: str) -> Path:
    """An audio path of a manifest: relative to the release folder (the reference's root), or to its `data/`."""
    path = Path(relative)
    candidates = [path] if path.is_absolute() else [root / path, root / "data" / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise StspError(f"STSP: {where}: audio file {relative!r} not found under {root}")


def read_subset(root: Path, name: str, pattern: str, split: str, speech: bool) -> Subset:
    """A test manifest: `asr` text for text subsets, `wav_path` audio for speech subsets; every error names
    the file and line."""
    manifest = root / pattern.format(split=split)
    items = []
    for number, record in _read_jsonl(manifest):
        where = f"{manifest}:{number}"
        sentiment = _sentiment(record, where)
        identifier = str(record.get("id", number))
        if speech:
            wav_path = record.get("wav_path")
            if not isinstance(wav_path, str) or not wav_path:
                raise StspError(f"STSP: {where}: no `wav_path`")
            items.append(Item(identifier, sentiment, audio=resolve_audio(root, wav_path, where)))
        else:
            text = record.get("asr")
            if not isinstance(text, str) or not text.strip():
                raise StspError(f"STSP: {where}: no `asr` text")
            items.append(Item(identifier, sentiment, text=text.strip()))
    return Subset(name, manifest, items)


def subsets_for(root: Path, direction: str, split: str) -> list[Subset]:
    """The test subsets a direction reads: EXPRESSO-ASR text for T→X, EXPRESSO-READ and EMOV speech for S→X."""
    speech = direction.startswith("s")
    patterns = SPEECH_SUBSETS if speech else TEXT_SUBSETS
    return [read_subset(root, name, pattern, split, speech) for name, pattern in patterns.items()]


def read_pool(root: Path, direction: str) -> list[Shot]:
    """A direction's few-shot pool: `prompt` and `generation` are text or an audio path per the direction."""
    path = root / FEW_SHOT_POOL.format(direction=direction)
    shots = []
    for number, record in _read_jsonl(path):
        where = f"{path}:{number}"
        sides: list[str | Path] = []
        for key, modality in (("prompt", direction[0]), ("generation", direction[2])):
            value = record.get(key)
            if not isinstance(value, str) or not value.strip():
                raise StspError(f"STSP: {where}: no `{key}`")
            sides.append(resolve_audio(root, value, where) if modality == "s" else value.strip())
        shots.append(Shot(_sentiment(record, where), sides[0], sides[1]))
    return shots


def sample_shots(pool: Sequence[Shot], count: int, rng: random.Random, pool_name: str = "pool") -> list[Shot]:
    """`ceil(count/3)` examples of each sentiment (the reference's balance), drawn without replacement, then put
    in a random order (the reference keeps them grouped by sentiment, which always puts one sentiment last,
    next to the test item)."""
    if count == 0:
        return []
    per_sentiment = math.ceil(count / len(SENTIMENTS))
    chosen: list[Shot] = []
    for sentiment in SENTIMENTS:
        candidates = [shot for shot in pool if shot.sentiment == sentiment]
        if len(candidates) < per_sentiment:
            raise StspError(
                f"STSP: {pool_name} has {len(candidates)} {sentiment} examples; {count} shots need {per_sentiment}"
            )
        chosen.extend(rng.sample(candidates, per_sentiment))
    rng.shuffle(chosen)
    return chosen


# ---------------------------------------------------------------------------------------------------------------
# Prompts


@lru_cache(maxsize=64)
def clip_halves(path: Path) -> tuple[str, str]:
    """A clip's first and second halves (16 kHz, split at the middle sample) as base64 WAVs."""
    try:
        audio = decode_audio(path.read_bytes(), MAX_CLIP_SECONDS)
    except (OSError, SpiritServeError) as exc:
        raise StspError(f"STSP: cannot read {path}: {exc}") from None
    middle = len(audio) // 2
    return _b64_wav(audio[:middle]), _b64_wav(audio[middle:])


def _b64_wav(audio: np.ndarray) -> str:
    return base64.b64encode(encode_wav(audio, SAMPLE_RATE)).decode("ascii")


def _append_text(inputs: list[dict[str, Any]], text: str) -> None:
    """Consecutive texts join with no separator (as the server joins them), so keep them one item."""
    if inputs and inputs[-1]["type"] == "text":
        inputs[-1]["text"] += text
    else:
        inputs.append(text_item(text))


def _speech(audio_base64: str) -> dict[str, Any]:
    return {"type": "speech", "audio_base64": audio_base64}


def build_inputs(direction: str, shots: Sequence[Shot], item: Item) -> list[dict[str, Any]]:
    """The `/v1/generate` inputs: each shot's prompt side then its generation side and a newline, then the test
    item. Text sides of a T→T shot are joined by a space; a speech side is half a clip (first half for a
    prompt, second half for a generation), sent as its own speech input (the server concatenates the units of
    consecutive speech inputs, so an S→S shot reads as its whole clip, tokenized in two halves)."""
    source, target = direction[0], direction[2]
    inputs: list[dict[str, Any]] = []
    for shot in shots:
        if source == "t":
            _append_text(inputs, str(shot.prompt))
        else:
            inputs.append(_speech(clip_halves(Path(shot.prompt))[0]))
        if target == "t":
            _append_text(inputs, (" " if source == "t" else "") + str(shot.generation))
        else:
            inputs.append(_speech(clip_halves(Path(shot.generation))[1]))
        _append_text(inputs, "\n")
    if source == "t":
        assert item.text is not None
        _append_text(inputs, item.text)
    else:
        assert item.audio is not None
        try:  # read when its request is built, so a run never holds every clip
            inputs.append(audio_item(item.audio))
        except OSError as exc:
            raise StspError(f"STSP: cannot read {item.audio}: {exc.strerror}") from None
    return inputs


def request_seed(run_seed: int, direction: str, subset: str, index: int) -> int:
    """A per-request sampling seed, reproducible and different for every run, direction and item."""
    digest = hashlib.sha256(f"stsp/{run_seed}/{direction}/{subset}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # below 2**63: the server's seed range


def generate_body(direction: str, inputs: list[dict[str, Any]], max_new_tokens: int, seed: int) -> dict[str, Any]:
    return {
        "inputs": inputs,
        "output_modality": "speech" if direction.endswith("s") else "text",
        "temperature": TEMPERATURE,
        "top_p": TOP_P,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "response_format": "json",
    }


# ---------------------------------------------------------------------------------------------------------------
# Classifiers (CPU, in this process)


def _folder(path: Path, what: str) -> Path:
    if not (path / "config.json").is_file():
        raise StspError(f"STSP: no {what} at {path} (expected a Hugging Face model folder with config.json)")
    return path


def _labels(model: Any, folder: Path, known: dict[str, str]) -> list[str]:
    """The model's id2label mapped to sentiments; an unknown label stops the run naming it."""
    id2label = model.config.id2label
    labels = [str(id2label[index]).strip().lower() for index in range(model.config.num_labels)]
    unknown = [label for label in labels if label not in known]
    if unknown:
        raise StspError(
            f"STSP: {folder / 'config.json'}: labels {unknown} have no sentiment (known: {', '.join(sorted(known))})"
        )
    return [known[label] for label in labels]


def _offline() -> None:
    # Classifiers are read from local folders only; transformers must never try the hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # its weight-loading bars would interleave with the run's


def _batches(values: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


class TextSentimentClassifier:
    """A sequence classifier over sentiments (the release's RoBERTa), batched with padding."""

    def __init__(self, folder: Path, tokenizer_folder: Path | None = None) -> None:
        _offline()
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = _folder(folder, "text classifier")
        tokenizer_folder = tokenizer_folder or folder
        if not any((tokenizer_folder / name).is_file() for name in TOKENIZER_FILES):
            raise StspError(
                f"STSP: no tokenizer files in {tokenizer_folder} (the release's text classifier ships without its "
                "tokenizer, j-hartmann/sentiment-roberta-large-english-3-classes): copy them there or pass "
                "--text-tokenizer DIR"
            )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder, local_files_only=True)
            self.model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).eval()
        except (OSError, ValueError) as exc:
            raise StspError(f"STSP: cannot load the text classifier from {folder}: {_one_line(exc)}") from None
        self.sentiments = _labels(self.model, folder, {sentiment: sentiment for sentiment in SENTIMENTS})
        limit = int(getattr(self.model.config, "max_position_embeddings", 512))
        if getattr(self.model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            limit -= 2  # their positions start after the padding index
        self.max_length = max(8, min(int(self.tokenizer.model_max_length), limit))

    def predict(self, texts: Sequence[str]) -> list[str]:
        import torch

        predictions: list[str] = []
        with torch.inference_mode():
            for batch in _batches(list(texts), CLASSIFIER_BATCH):
                encoded = self.tokenizer(
                    list(batch), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                )
                logits = self.model(**encoded).logits
                predictions.extend(self.sentiments[int(index)] for index in logits.argmax(dim=-1))
        return predictions


class SpeechSentimentClassifier:
    """An audio classifier over Expresso emotions (the release's wav2vec2), mapped to sentiments.

    Clips are batched with an attention mask when the feature extractor makes one; otherwise (wav2vec2-base's
    group-norm feature encoder, the release's) each clip runs on its own, because zero padding would change
    such a model's answer."""

    def __init__(self, folder: Path) -> None:
        _offline()
        from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

        folder = _folder(folder, "speech classifier")
        if not (folder / "preprocessor_config.json").is_file():
            raise StspError(f"STSP: no feature extractor (preprocessor_config.json) in {folder}")
        try:
            self.feature_extractor = AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
            self.model = AutoModelForAudioClassification.from_pretrained(folder, local_files_only=True).eval()
        except (OSError, ValueError) as exc:
            raise StspError(f"STSP: cannot load the speech classifier from {folder}: {_one_line(exc)}") from None
        self.sentiments = _labels(self.model, folder, SPEECH_LABEL_SENTIMENT)
        self.sample_rate = int(getattr(self.feature_extractor, "sampling_rate", SAMPLE_RATE))
        self.batch_size = CLASSIFIER_BATCH if getattr(self.feature_extractor, "return_attention_mask", False) else 1

    def predict(self, clips: Sequence[np.ndarray]) -> list[str]:
        """16 kHz mono float clips → a sentiment each."""
        import torch

        from spiritserve.resample import resample

        waveforms = [resample(clip, SAMPLE_RATE, self.sample_rate) for clip in clips]
        predictions: list[str] = []
        with torch.inference_mode():
            for batch in _batches(waveforms, self.batch_size):
                features = self.feature_extractor(
                    list(batch), sampling_rate=self.sample_rate, padding=True, return_tensors="pt"
                )
                logits = self.model(**features).logits
                predictions.extend(self.sentiments[int(index)] for index in logits.argmax(dim=-1))
        return predictions


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def decode_answer_audio(audio_base64: str | None) -> np.ndarray | None:
    """The answer's 16 kHz WAV as float samples; None when there is no audio or less than MIN_ANSWER_SECONDS
    (too short for a wav2vec2 classifier's receptive field: judged as an empty answer)."""
    if not audio_base64:
        return None
    audio, rate = soundfile.read(io.BytesIO(base64.b64decode(audio_base64)), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        from spiritserve.resample import resample

        mono = resample(mono, rate, SAMPLE_RATE)
    return mono if len(mono) >= MIN_ANSWER_SECONDS * SAMPLE_RATE else None


# ---------------------------------------------------------------------------------------------------------------
# Scoring


MODALITY_DIRECTIONS = {"text": "t2t", "text-speech": "t2s", "speech": "s2s", "speech-text": "s2t"}


@dataclass(frozen=True)
class StspConfig:
    data: Path
    directions: tuple[str, ...] = DIRECTIONS
    shots: tuple[int, ...] | None = None  # None: the paper's rows for the served variant (base 0; expressive all)
    runs: int = DEFAULT_RUNS
    seed: int = DEFAULT_SEED
    limit: int | None = None
    split: str = "test"
    max_new_tokens: dict[str, int] = field(default_factory=lambda: dict(PAPER_MAX_NEW_TOKENS))
    text_tokenizer: Path | None = None
    progress: bool = True
    variant: str | None = None  # the paper's row to compare with (None: what GET /v1/server says is served)


@dataclass
class Tally:
    """Right judgements per run; `empty` counts answers with nothing to classify (judged wrong)."""

    correct: list[int] = field(default_factory=list)
    total: list[int] = field(default_factory=list)
    empty: int = 0
    predicted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SENTIMENTS, 0))


def mean_interval(parts: Sequence[tuple[float, float, float]]) -> tuple[float, float, float]:
    """(mean, low, high) of the mean of independent estimates given as (value, low, high): the mean of the values,
    its interval from the parts' lower and upper half-widths combined in quadrature."""
    count = len(parts)
    mean = sum(value for value, _, _ in parts) / count
    below = math.sqrt(sum((value - low) ** 2 for value, low, _ in parts)) / count
    above = math.sqrt(sum((high - value) ** 2 for value, _, high in parts)) / count
    return mean, max(0.0, mean - below), min(1.0, mean + above)


def paper_number(variant: str | None, shots: int, direction: str) -> float | None:
    row = PAPER_TABLE3.get((variant or "", shots))
    return row[direction] if row else None


def paper_shot_counts(variant: str | None) -> tuple[int, ...]:
    """The shot counts Table 3 has a row for: the expressive model 0/3/6/9, the base model 0 only."""
    return tuple(shots for (row_variant, shots) in PAPER_TABLE3 if row_variant == variant) or (0,)


def parse_directions(value: str | Iterable[str]) -> tuple[str, ...]:
    """`t2t,s2s` (or names from `--modality`: text, text-speech, speech, speech-text) → directions, in order."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    names = [part.strip().lower() for part in parts if part.strip()]
    names = [MODALITY_DIRECTIONS.get(name, name) for name in names]
    unknown = [name for name in names if name not in DIRECTIONS]
    if unknown or not names:
        raise StspError(
            f"STSP: unknown direction(s) {', '.join(unknown) or repr(value)}; choose from {','.join(DIRECTIONS)}"
        )
    return tuple(dict.fromkeys(names))


def parse_max_new_tokens(value: int | str | dict[str, int] | None) -> dict[str, int]:
    """The token budgets: the paper's, or one number for every direction, or `t2t=8,s2s=12` for some."""
    budgets = dict(PAPER_MAX_NEW_TOKENS)
    if value is None:
        return budgets
    pairs: list[tuple[str, int]] = []
    if isinstance(value, dict):
        pairs = [(str(key), int(number)) for key, number in value.items()]
    elif isinstance(value, int) or str(value).strip().isdigit():
        pairs = [(direction, int(value)) for direction in DIRECTIONS]
    else:
        for part in str(value).split(","):
            name, _, number = part.partition("=")
            if not number.strip().isdigit():
                raise StspError(f"STSP: --max-new-tokens takes N or DIRECTION=N,..., got {value!r}")
            pairs.append((name.strip().lower(), int(number)))
    for name, tokens in pairs:
        if name not in DIRECTIONS or tokens < 1:
            raise StspError(f"STSP: bad --max-new-tokens entry {name}={tokens}")
        budgets[name] = tokens
    return budgets


# ---------------------------------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True)
class Answer:
    """What one request produced, for the classifier."""

    text: str | None = None
    audio: np.ndarray | None = None


class Classifiers:
    """The two classifiers, loaded on first use (a text-only run never loads the speech model)."""

    def __init__(self, root: Path, text_tokenizer: Path | None = None) -> None:
        self.root = root
        self.text_tokenizer = text_tokenizer
        self._text: TextSentimentClassifier | None = None
        self._speech: SpeechSentimentClassifier | None = None

    def text(self) -> TextSentimentClassifier:
        if self._text is None:
            self._text = TextSentimentClassifier(self.root / TEXT_CLASSIFIER, self.text_tokenizer)
        return self._text

    def speech(self) -> SpeechSentimentClassifier:
        if self._speech is None:
            self._speech = SpeechSentimentClassifier(self.root / SPEECH_CLASSIFIER)
        return self._speech

    def check(self, directions: Iterable[str]) -> None:
        """Load what the directions need now, so a missing classifier stops the run before any generation."""
        targets = {direction[2] for direction in directions}
        if "t" in targets:
            self.text()
        if "s" in targets:
            self.speech()

    def judge(self, direction: str, answers: Sequence[Answer]) -> list[str | None]:
        """A predicted sentiment per answer; None for an answer with nothing to classify."""
        if direction.endswith("t"):
            return list(self.text().predict([answer.text or "" for answer in answers]))
        present = [(index, answer.audio) for index, answer in enumerate(answers) if answer.audio is not None]
        predicted = self.speech().predict([audio for _, audio in present])
        judged: list[str | None] = [None] * len(answers)
        for (index, _), sentiment in zip(present, predicted):
            judged[index] = sentiment
        return judged


async def _generate(client: EvalClient, direction: str, body: dict[str, Any]) -> Answer:
    answer = await client.generate(body)
    if direction.endswith("t"):
        return Answer(text=str(answer.get("text") or "").strip())
    return Answer(audio=decode_answer_audio(answer.get("audio_base64")))


async def evaluate_subset(
    client: EvalClient,
    classifiers: Classifiers,
    direction: str,
    items: Sequence[Item],
    subset: str,
    shots: Sequence[Shot],
    run_seed: int,
    max_new_tokens: int,
    tally: Tally,
    bar: Any,
) -> None:
    """One run over one subset's items: generated a chunk at a time, each chunk classified (on a thread) while
    the next one is generated."""
    correct = 0
    pending: tuple[Sequence[Item], list[Answer]] | None = None

    async def judge(chunk: Sequence[Item], answers: list[Answer]) -> int:
        predicted = await asyncio.to_thread(classifiers.judge, direction, answers)
        right = 0
        for item, sentiment in zip(chunk, predicted):
            if sentiment is None:
                tally.empty += 1
                continue
            tally.predicted[sentiment] += 1
            right += sentiment == item.sentiment
        return right

    async def one(index: int, item: Item) -> Answer:
        seed = request_seed(run_seed, direction, subset, index)
        body = generate_body(direction, build_inputs(direction, shots, item), max_new_tokens, seed)
        answer = await _generate(client, direction, body)
        bar.update(1)
        return answer

    for start in range(0, len(items), CHUNK_ITEMS):
        chunk = items[start : start + CHUNK_ITEMS]
        generation = asyncio.ensure_future(
            asyncio.gather(*(one(start + offset, item) for offset, item in enumerate(chunk)))
        )
        try:
            if pending is not None:
                correct += await judge(*pending)
            pending = (chunk, list(await generation))
        finally:
            generation.cancel()  # a failed judgement leaves no request running
    if pending is not None:
        correct += await judge(*pending)
    tally.correct.append(correct)
    tally.total.append(len(items))


async def evaluate(client: EvalClient, config: StspConfig) -> list[TaskResult]:
    """Every shot count and direction, `config.runs` runs each: a result per direction (and per speech subset)."""
    root = config.data
    if not root.is_dir():
        raise StspError(f"STSP: data folder {root} does not exist")
    if config.split not in SPLITS:
        raise StspError(f"STSP: split must be one of {', '.join(SPLITS)}, got {config.split!r}")
    if config.runs < 1:
        raise StspError(f"STSP: --runs must be at least 1, got {config.runs}")
    bad = [count for count in config.shots or () if count not in SHOT_COUNTS]
    if bad:
        raise StspError(f"STSP: --shots must be among {', '.join(map(str, SHOT_COUNTS))}, got {bad}")
    # Every file the run needs is read or checked before the first request.
    subsets = {direction: subsets_for(root, direction, config.split) for direction in config.directions}
    classifiers = Classifiers(root, config.text_tokenizer)
    await asyncio.to_thread(classifiers.check, config.directions)
    variant = config.variant or (await client.server_info()).get("variant")
    shot_counts = config.shots if config.shots is not None else paper_shot_counts(variant)
    pools = {direction: read_pool(root, direction) for direction in config.directions} if any(shot_counts) else {}
    logger.info(
        "stsp: directions %s, shots %s, %d run(s), budgets %s, paper row %s",
        ",".join(config.directions),
        ",".join(map(str, shot_counts)),
        config.runs,
        {direction: config.max_new_tokens[direction] for direction in config.directions},
        variant,
    )

    results: list[TaskResult] = []
    for shots in shot_counts:
        for direction in config.directions:
            items = {subset.name: subset.items[: config.limit] for subset in subsets[direction]}
            tallies = {name: Tally() for name in items}
            label = f"{DIRECTION_LABELS[direction]} {shots}-shot"
            bar = progress_bar(config.runs * sum(map(len, items.values())), f"stsp {label}", config.progress)
            shots_used: list[list[str]] = []
            try:
                for run in range(config.runs):
                    run_seed = config.seed + run
                    sampler = random.Random(f"stsp-shots/{direction}/{shots}/{run_seed}")
                    pool_name = str(root / FEW_SHOT_POOL.format(direction=direction))
                    chosen = sample_shots(pools.get(direction, []), shots, sampler, pool_name)
                    shots_used.append([_shot_name(shot) for shot in chosen])
                    for name, subset_items in items.items():
                        await evaluate_subset(
                            client,
                            classifiers,
                            direction,
                            subset_items,
                            name,
                            chosen,
                            run_seed,
                            config.max_new_tokens[direction],
                            tallies[name],
                            bar,
                        )
            finally:
                bar.close()
            common = {
                "direction": direction,
                "shots": shots,
                "runs": config.runs,
                "seeds": [config.seed + run for run in range(config.runs)],
                "max_new_tokens": config.max_new_tokens[direction],
                "variant": variant,
                "split": config.split,
            }
            results.extend(_results(direction, shots, tallies, variant, {**common, "examples": shots_used}))
    return results


def _results(
    direction: str, shots: int, tallies: dict[str, Tally], variant: str | None, common: dict[str, Any]
) -> list[TaskResult]:
    """The direction's result (speech prompts: the mean of its subsets' accuracies, as the paper averages
    EXPRESSO-READ and EMOV) and, where it has two subsets, one result per subset."""
    subset_results = []
    for name, tally in tallies.items():
        correct, total = sum(tally.correct), sum(tally.total)
        if total == 0:
            raise StspError(f"STSP: {name} has no items to evaluate")
        details = {
            **{key: value for key, value in common.items() if key != "examples"},
            "subset": name,
            "per_run": [right / count for right, count in zip(tally.correct, tally.total)],
            "empty_answers": tally.empty,
            "predicted": dict(tally.predicted),
        }
        subset_results.append(
            TaskResult.from_counts("stsp", f"{direction}/{shots}-shot/{name}", correct, total, None, details)
        )
    accuracy, low, high = mean_interval([(r.accuracy, r.ci_low, r.ci_high) for r in subset_results])
    total = sum(result.total for result in subset_results)
    runs = len(next(iter(tallies.values())).correct)
    per_run = [
        sum(result.extra["per_run"][run] for result in subset_results) / len(subset_results) for run in range(runs)
    ]
    details = {
        **common,
        "label": f"{DIRECTION_LABELS[direction]} {shots}-shot",
        "per_run": per_run,
        "subsets": {result.extra["subset"]: result.accuracy for result in subset_results},
        "empty_answers": sum(result.extra["empty_answers"] for result in subset_results),
    }
    if len(subset_results) == 1:
        details["predicted"] = subset_results[0].extra["predicted"]
    paper = paper_number(variant, shots, direction)
    direction_result = TaskResult(
        "stsp", f"{direction}/{shots}-shot", accuracy * total, total, accuracy, low, high, paper, details
    )
    return [direction_result] + (subset_results if len(subset_results) > 1 else [])


def _shot_name(shot: Shot) -> str:
    sides = [side.name if isinstance(side, Path) else side[:40] for side in (shot.prompt, shot.generation)]
    return f"{shot.sentiment}: {sides[0]} | {sides[1]}"


def config_from_options(data_dir: Path, options: EvalOptions) -> StspConfig:
    """`spiritserve eval stsp` options → the run's settings. STSP's own flags arrive in `options.extra`:
    `directions` (`t2t,t2s,s2s,s2t`; else `--modality` names), `max_new_tokens` (N for all, or DIR=N,...),
    `text_tokenizer` (a folder), `stsp_split` (test, the paper's, or dev)."""
    extra = options.extra
    directions_value = extra.get("directions") or options.modalities
    directions = parse_directions(directions_value) if directions_value else DIRECTIONS
    tokenizer = extra.get("text_tokenizer")
    return StspConfig(
        data=Path(data_dir),
        directions=directions,
        shots=tuple(options.shots) if options.shots is not None else None,
        runs=options.runs if options.runs is not None else DEFAULT_RUNS,
        seed=options.seed,
        limit=options.limit,
        split=str(extra.get("stsp_split") or "test"),
        max_new_tokens=parse_max_new_tokens(extra.get("max_new_tokens")),
        text_tokenizer=Path(tokenizer) if tokenizer else None,
        progress=options.progress,
        variant=options.variant,
    )


async def run(client: EvalClient, data_dir: Path, options: EvalOptions) -> list[TaskResult]:
    """The registry's entry point (`spiritserve.evaluation.stsp:run`)."""
    return await evaluate(client, config_from_options(data_dir, options))
