"""Speech → units for either variant: HuBERT always, pitch and style for the expressive variant.

One small interface over the three encoders so the pipeline never branches on the variant to tokenize:
`encode(waveforms) -> list[SpeechUnits]`, and `SpeechUnits.to_string()` for the LM's token string.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spiritserve.cuda_graphs import CaptureReport
from spiritserve.numerics import Precision, precision_scope
from spiritserve.tokenizers.phonetic import PhoneticTokenizer
from spiritserve.tokenizers.pitch import PitchTokenizer
from spiritserve.tokenizers.style import StyleTokenizer
from spiritserve.tokens import interleave


@dataclass(frozen=True)
class SpeechUnits:
    """Raw, undeduplicated streams: HuBERT at 25 Hz, pitch at 12.5 Hz, style at 1 Hz (empty for base)."""

    hubert: list[int]
    pitch: list[int] = field(default_factory=list)
    style: list[int] = field(default_factory=list)

    def to_string(self) -> str:
        """The interleaved, deduplicated token string the LM was trained on (§8.2)."""
        return interleave({"Hu": self.hubert, "Pi": self.pitch, "St": self.style})

    def as_dict(self) -> dict[str, list[int]]:
        streams = {"hubert": self.hubert, "pitch": self.pitch, "style": self.style}
        return {name: units for name, units in streams.items() if units or name == "hubert"}


class SpeechTokenizer:
    """Synchronous; the pipeline calls it on its speech-worker thread."""

    def __init__(
        self,
        phonetic: PhoneticTokenizer,
        pitch: PitchTokenizer | None = None,
        style: StyleTokenizer | None = None,
        precision: Precision = "float32",
    ) -> None:
        """precision: exact fp32 unless `spiritserve check-precision` measured ≥ 99.5 % unit agreement with it
        (spiritserve.numerics)."""
        if (pitch is None) != (style is None):
            raise ValueError("the expressive variant needs both a pitch and a style tokenizer")
        self.phonetic = phonetic
        self.pitch = pitch
        self.style = style
        self.precision = precision

    @classmethod
    def from_dirs(
        cls,
        hubert_dir: Path,
        pitch_dir: Path | None = None,
        style_dir: Path | None = None,
        device: str = "cpu",
        precision: Precision = "float32",
    ) -> "SpeechTokenizer":
        """Load the encoders from their folders (a `SpiritCheckpoint` names them); pitch and style for the
        expressive variant only."""
        phonetic = PhoneticTokenizer.from_dir(hubert_dir, device)
        if pitch_dir is None or style_dir is None:
            return cls(phonetic, precision=precision)
        pitch = PitchTokenizer.from_dir(pitch_dir, device)
        return cls(phonetic, pitch, StyleTokenizer.from_dir(style_dir, device), precision)

    @property
    def is_expressive(self) -> bool:
        return self.pitch is not None

    def use_fixed_shapes(self) -> CaptureReport:
        """HuBERT batches at fixed shapes, replayed as CUDA graphs on a GPU captured at this tokenizer's precision
        (`phonetic.FixedShapeEncoder`); pitch and style run as they are."""
        return self.phonetic.use_fixed_shapes(self.precision)

    def encode(self, waveforms: list[np.ndarray]) -> list[SpeechUnits]:
        """16 kHz mono float32 waveforms → units per waveform (empty hubert for clips under 80 ms)."""
        with precision_scope(self.precision, self.phonetic.device.type):
            hubert = self.phonetic.encode(waveforms)
            if self.pitch is None or self.style is None:
                return [SpeechUnits(units) for units in hubert]
            pitch = self.pitch.encode(waveforms)
            style = self.style.encode(waveforms)
        return [SpeechUnits(*streams) for streams in zip(hubert, pitch, style, strict=True)]
