"""Spirit LM's token string formats and prompt building (spiritlm-compat.md §4, §8, §10.2).

Unit tokens are written `[Hu<n>]`, `[Pi<n>]`, `[St<n>]` (decimal, no padding, no separators); a speech span
is preceded by `[Speech]`, a text span by `[Text]`. These strings, not ids, are the public currency of the
API; ids come from the checkpoint's tokenizer.
"""

import enum
import re
from dataclasses import dataclass
from typing import Literal

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


def unit_piece(kind: UnitKind, unit: int) -> str:
    return f"[{kind}{unit}]"


def deduplicate(units: list[int]) -> list[int]:
    """Drop a unit equal to the one right before it (the LM was trained on deduplicated Hu units)."""
    return [unit for index, unit in enumerate(units) if index == 0 or unit != units[index - 1]]


def hubert_string(units: list[int]) -> str:
    """Base-variant speech string: deduplicated `[Hu<n>]` tokens."""
    return "".join(unit_piece("Hu", unit) for unit in deduplicate(units))


def is_unit_string(text: str) -> bool:
    """True when `text` is nothing but unit tokens (the format `/v1/synthesize` accepts)."""
    return _TOKEN_STRING.fullmatch(text) is not None


def parse_hubert_string(text: str) -> list[int]:
    """Units of a base-variant speech string; ValueError for anything but `[Hu<n>]` tokens."""
    units = parse_unit_string(text)
    if not is_unit_string(text) or units["Pi"] or units["St"]:
        raise ValueError(f"expected only [Hu<n>] unit tokens, e.g. '[Hu12][Hu7]'; got {text[:40]!r}")
    return units["Hu"]


def parse_unit_string(text: str) -> dict[UnitKind, list[int]]:
    """Units of each kind in order of appearance; markers and anything else are ignored (§8.3)."""
    units: dict[UnitKind, list[int]] = {kind: [] for kind in UNIT_KINDS}
    for kind, number in _UNIT_TOKEN.findall(text):
        units[kind].append(int(number))
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
