"""Spirit LM's token string formats and prompt building (spiritlm-compat.md §4, §8, §10.2).

Unit tokens are written `[Hu<n>]`, `[Pi<n>]`, `[St<n>]` (decimal, no padding, no separators); a speech span
is preceded by `[Speech]`, a text span by `[Text]`. These strings, not ids, are the public currency of the
API; ids come from the checkpoint's tokenizer. Inside the server, units travel as `Unit` ints: generated ids
are classified by the tokenizer, and strings are parsed only where a client sent one.
"""

import enum
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple

TEXT_MARKER = "[Text]"
SPEECH_MARKER = "[Speech]"
MARKERS = (TEXT_MARKER, SPEECH_MARKER)

UnitKind = Literal["Hu", "Pi", "St"]
UNIT_KINDS: tuple[UnitKind, ...] = ("Hu", "Pi", "St")

_UNIT_TOKEN = re.compile(r"\[(Hu|Pi|St)(\d+)\]")
_TOKEN_STRING = re.compile(r"(?:\[(?:Hu|Pi|St)\d+\])*")


class Modality(enum.StrEnum):
    TEXT = "text"
    SPEECH = "speech"


class OutputModality(enum.StrEnum):
    TEXT = "text"
    SPEECH = "speech"
    ARBITRARY = "arbitrary"


class Unit(NamedTuple):
    """One unit token as ints: its stream and its value (`[Pi39]` is Unit("Pi", 39))."""

    kind: UnitKind
    value: int


def unit_piece(kind: UnitKind, unit: int) -> str:
    return f"[{kind}{unit}]"


def parse_units(text: str) -> list[Unit]:
    """The unit tokens of a string in order; markers and anything else are ignored (§8.3)."""
    return [Unit(kind, int(number)) for kind, number in _UNIT_TOKEN.findall(text)]


# Token rates of the three streams (§8.2). HuBERT is 24.99, not 25, on purpose: a Hu token then sorts just
# after a Pi or St token that shares its nominal 40 ms slot. Over ~100 s this drifts by one frame; the LM
# was trained on strings made this way, so the drift is reproduced, not fixed.
STREAM_RATES: dict[UnitKind, float] = {"Hu": 24.99, "Pi": 12.5, "St": 1.0}
# Style is not deduplicated: an [St] token appears every second even when it repeats.
STREAM_DEDUP: dict[UnitKind, bool] = {"Hu": True, "Pi": True, "St": False}
# The reference falls back to a *random* one of these when a generated span has pitch but no style (§8.3).
MOST_COMMON_STYLES = (71, 68, 98)


def interleave(streams: dict[UnitKind, list[int]]) -> str:
    """Expressive (or base, with only "Hu") speech string: time-sorted, per-stream deduplicated tokens.

    Each unit is stamped with index / rate of its *undeduplicated* position; the stable sort over the
    concatenation St, Pi, Hu puts St before Pi before Hu on exact ties.
    """
    timed: list[tuple[float, str]] = []
    for kind in ("St", "Pi", "Hu"):
        units = streams.get(kind, [])
        for index, unit in enumerate(units):
            if STREAM_DEDUP[kind] and index > 0 and unit == units[index - 1]:
                continue
            timed.append((index / STREAM_RATES[kind], unit_piece(kind, unit)))
    timed.sort(key=lambda stamped: stamped[0])  # stable: keeps St < Pi < Hu on ties
    return "".join(piece for _, piece in timed)


def fallback_style(seed: int | None) -> int:
    """Deterministic stand-in for the reference's random style choice: the most common style, or a
    seeded pick among the three most common when the request carries a seed."""
    if seed is None:
        return MOST_COMMON_STYLES[0]
    return MOST_COMMON_STYLES[random.Random(seed).randrange(len(MOST_COMMON_STYLES))]


# Expressive speech without any [Pi] token (§16.1a: the reference crashes) is vocoded at this pitch
# code, the middle of the 64-code book.
FALLBACK_PITCH = 32


@dataclass(frozen=True)
class AlignedUnits:
    """Generated units as the vocoder reads them: pitch and style pre-duplicated to one value per Hu unit."""

    hubert: list[int]
    pitch: list[int]
    style: list[int]


class UnitAligner:
    """The reference's units → vocoder frames rule (§8.3), incrementally, for streaming and offline alike.

    Every [Hu] is a frame that takes the latest pitch and style before it; frames before the first Pi
    (or St) take the first one seen later, so they are held until it arrives. Expressive fallbacks for a
    stream that never arrives: `FALLBACK_PITCH`, and `fallback_style(seed)` (the reference picks a random
    common style). Streaming caps the hold at `max_held` frames (then the fallbacks apply, a bounded
    latency instead of the reference's unbounded look-ahead); offline, nothing is capped. The base variant
    has no pitch or style: frames are ready at once and those lists stay empty.
    """

    def __init__(self, expressive: bool, style_seed: int | None = None, max_held: int | None = None) -> None:
        self.expressive = expressive
        self.style_seed = style_seed
        self.max_held = max_held
        self._latest: dict[str, int | None] = {"Pi": None, "St": None}
        self._first: dict[str, int | None] = {"Pi": None, "St": None}
        self._held: list[tuple[int, int | None, int | None]] = []  # (hu, pitch, style) as known on arrival

    def push(self, units: Iterable[Unit]) -> AlignedUnits:
        """Consume more generated units; return the frames that are now final."""
        for kind, value in units:
            if kind == "Hu":
                self._held.append((value, self._latest["Pi"], self._latest["St"]))
            elif self.expressive:
                self._latest[kind] = value
                if self._first[kind] is None:
                    self._first[kind] = value
        if self.max_held is not None and len(self._held) >= self.max_held:
            self._fill_missing_streams()
        return self._release()

    def finish(self) -> AlignedUnits:
        """End of the stream: apply the fallbacks and release every held frame."""
        self._fill_missing_streams()
        return self._release()

    def _fill_missing_streams(self) -> None:
        if self._first["Pi"] is None:
            self._first["Pi"] = FALLBACK_PITCH
        if self._first["St"] is None:
            self._first["St"] = fallback_style(self.style_seed)

    def _release(self) -> AlignedUnits:
        if not self.expressive:
            hubert = [unit for unit, _, _ in self._held]
            self._held.clear()
            return AlignedUnits(hubert, [], [])
        if self._first["Pi"] is None or self._first["St"] is None:
            return AlignedUnits([], [], [])
        frames, self._held = self._held, []
        return AlignedUnits(
            [unit for unit, _, _ in frames],
            [self._first["Pi"] if pitch is None else pitch for _, pitch, _ in frames],
            [self._first["St"] if style is None else style for _, _, style in frames],
        )


def align_units(units: Iterable[Unit], expressive: bool = True, style_seed: int | None = None) -> AlignedUnits:
    """Offline alignment of a whole answer's units (see `UnitAligner`)."""
    aligner = UnitAligner(expressive, style_seed)
    early, late = aligner.push(units), aligner.finish()
    return AlignedUnits(early.hubert + late.hubert, early.pitch + late.pitch, early.style + late.style)


def is_unit_string(text: str) -> bool:
    """True when `text` is nothing but unit tokens (the format `/v1/synthesize` accepts)."""
    return _TOKEN_STRING.fullmatch(text) is not None


def parse_unit_string(text: str) -> dict[UnitKind, list[int]]:
    """Units of each kind in order of appearance; markers and anything else are ignored (§8.3)."""
    units: dict[UnitKind, list[int]] = {kind: [] for kind in UNIT_KINDS}
    for kind, value in parse_units(text):
        units[kind].append(value)
    return units


@dataclass(frozen=True)
class PromptSegment:
    """One input of an interleaved prompt: raw text, or speech already written as a unit string."""

    modality: Modality
    content: str


def build_prompt(segments: list[PromptSegment], output: OutputModality) -> str:
    """The reference's `_build_prompt`: a marker only where the modality changes, plus a trailing
    marker that asks for the forced output modality; consecutive texts join with no separator."""
    prompt = ""
    previous: Modality | None = None
    for segment in segments:
        if segment.modality != previous:
            prompt += TEXT_MARKER if segment.modality == Modality.TEXT else SPEECH_MARKER
        prompt += segment.content
        previous = segment.modality
    if output == OutputModality.TEXT and previous != Modality.TEXT:
        prompt += TEXT_MARKER
    elif output == OutputModality.SPEECH and previous != Modality.SPEECH:
        prompt += SPEECH_MARKER
    return prompt
