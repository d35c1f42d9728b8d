"""The vocoder stage: HuBERT units (+ pitch and style units) → 16 kHz mono audio, from an official vocoder directory.

An official vocoder directory holds ``config.json``, ``generator.pt`` (``{"generator": state_dict}`` with
weight-norm keys) and ``speakers.txt``; the base vocoder (``hifigan_spiritlm_base/``) also has ``styles.txt``
(one name per line; the line number is the embedding index). The expressive vocoder
(``hifigan_spiritlm_expressive_w2v2/``) has no ``styles.txt``: it is conditioned instead on a pitch-unit
stream (``f0_dict``, 12.5 Hz) and a style-unit stream (``style_dict``, 1 Hz) next to the 25 Hz HuBERT units
(compat doc §9).
"""

import copy
import operator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from spiritserve.audio import SAMPLE_RATE
from spiritserve.errors import CheckpointError
from spiritserve.numerics import Precision, precision_scope
from spiritserve.transfers import to_device, to_host
from spiritserve.vocoder.batched import DEFAULT_WINDOW_FRAMES, generate_sequences
from spiritserve.vocoder.graphs import CaptureReport, FixedShapeGenerator
from spiritserve.vocoder.hifigan import CodeHiFiGAN, HifiGanConfig, frames_per_unit, repeat_to_length
from spiritserve.vocoder.streaming import StreamingDecoder, vocode_streams
from spiritserve.vocoder.windows import max_forward_frames
from spiritserve.weights import fold_weight_norm, load_state_dict_strict, read_checkpoint, require_keys

HOP = 640  # samples per 25 Hz HuBERT frame at 16 kHz
# Reference defaults (compat doc §9.1): speaker 2, style 8 ("conv-default").
_PREFERRED_SPEAKER = 2
_PREFERRED_STYLE = 8


@dataclass(frozen=True)
class VocoderOutput:
    audio: np.ndarray  # (sum(durations) × hop,) float32 mono 16 kHz in [-1, 1]
    durations: list[int]  # frames used per unit; all 1 when durations were not predicted


@dataclass(frozen=True)
class VocodeRequest:
    """One unit sequence to vocode, as ``UnitVocoder.decode``, ``decode_batch`` and ``validate`` take it.

    ``speaker``: None picks the vocoder's default. ``style``: the base vocoder's global style (None: its
    default). With ``predict_durations`` each (deduplicated) unit lasts the predicted number of 40 ms frames;
    without, every unit is one frame (raw 25 Hz units, resynthesis).

    The expressive vocoder also needs ``pitch`` and ``style_units``, in one of two forms:
    - one per unit (pre-duplicated, as aligned from LM output): expanded by the same durations as the units;
    - raw 12.5 Hz pitch and 1 Hz style for undeduplicated 25 Hz units: recognised, as in the reference, by
      ``len(pitch) != len(units)``; durations are then never predicted (whatever predict_durations says)
      and both streams are upsampled to one per unit (×2 / ×25, padded with the last value, cut).
    Missing pitch or style_units for the expressive vocoder is a ValueError: the caller picks the fallback.

    ``durations`` (one per unit, each >= 1) replaces the prediction: a speech budget cuts generated units
    where the durations predicted *with* the units that followed add up, and the last two of those would come
    out differently if predicted again at the cut (the predictor looks two units to the right).
    """

    units: list[int]
    speaker: int | None = None
    style: int | None = None
    predict_durations: bool = True
    pitch: list[int] | None = None
    style_units: list[int] | None = None
    durations: list[int] | None = None


def _read_names(path: Path) -> list[str]:
    """One name per line, as the training script writes them (no trailing newline, but tolerate one)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    names = [line.strip() for line in lines]
    while names and not names[-1]:
        names.pop()
    if not names or not all(names):
        raise CheckpointError(f"{path}: expected one non-empty name per line")
    return names


class UnitVocoder:
    """The vocoder stage as the pipeline sees it (base or expressive): ``validate``, ``decode``, ``decode_batch``
    (windows of many requests share forwards) and ``open_stream`` / ``emit_streams`` (streamed audio), all
    taking a ``VocodeRequest``'s fields; it aligns pitch and style streams and predicts durations in exact fp32 on
    the host (they decide integer frame counts), and runs the generator at ``precision`` (spiritserve.numerics)."""

    def __init__(
        self,
        model: CodeHiFiGAN,
        speakers: list[str],
        styles: list[str],
        device: torch.device,
        precision: Precision = "float32",
    ):
        self.model = model
        self._speakers = speakers
        self._styles = styles
        self.device = device
        self.precision = precision
        self.fixed_shapes: FixedShapeGenerator | None = None  # set by use_fixed_shapes()
        # Durations are predicted on the host from a CPU copy of the unit table and the predictor (the same fp32
        # weights): Python ints with no wait for the device, the same for streamed and offline decodes.
        self._duration_table = copy.deepcopy(model.dict).cpu()
        self._duration_predictor = (
            None if model.dur_predictor is None else copy.deepcopy(model.dur_predictor).cpu().eval()
        )

    @classmethod
    def from_dir(
        cls, vocoder_dir: Path, device: str | torch.device = "cpu", precision: Precision = "float32"
    ) -> "UnitVocoder":
        vocoder_dir = Path(vocoder_dir)
        config = HifiGanConfig.from_json(vocoder_dir / "config.json")
        if config.code_hop_size != HOP or config.sampling_rate != SAMPLE_RATE:
            raise CheckpointError(
                f"{vocoder_dir / 'config.json'}: expected 25 Hz units at 16 kHz (code_hop_size {HOP}, "
                f"sampling_rate {SAMPLE_RATE}), got {config.code_hop_size} and {config.sampling_rate}"
            )
        if not config.multispkr:
            raise CheckpointError(f"{vocoder_dir / 'config.json'}: Spirit LM vocoders are multi-speaker (multispkr)")
        speakers = _read_names(vocoder_dir / "speakers.txt")
        if len(speakers) > config.num_speakers:
            raise CheckpointError(
                f"{vocoder_dir}: speakers.txt names {len(speakers)} speakers, num_speakers is {config.num_speakers}"
            )
        styles = _read_names(vocoder_dir / "styles.txt") if config.multistyle else []
        if len(styles) > config.num_styles:
            raise CheckpointError(
                f"{vocoder_dir}: styles.txt names {len(styles)} styles, num_styles is {config.num_styles}"
            )

        checkpoint_path = vocoder_dir / "generator.pt"
        checkpoint = read_checkpoint(checkpoint_path)
        require_keys(checkpoint, ["generator"], checkpoint_path)
        model = CodeHiFiGAN(config)
        load_state_dict_strict(model, checkpoint["generator"], checkpoint_path)
        fold_weight_norm(model)
        device = torch.device(device)
        return cls(model.eval().to(device), speakers, styles, device, precision)

    @property
    def speakers(self) -> list[str]:
        return list(self._speakers)

    @property
    def styles(self) -> list[str]:
        """Global style names; empty for a vocoder without a style table (the expressive one)."""
        return list(self._styles)

    @property
    def num_units(self) -> int:
        return self.model.config.num_embeddings

    @property
    def sample_rate(self) -> int:
        return self.model.config.sampling_rate

    @property
    def hop(self) -> int:
        return self.model.config.code_hop_size

    @property
    def default_speaker(self) -> int:
        return _PREFERRED_SPEAKER if _PREFERRED_SPEAKER < len(self._speakers) else 0

    @property
    def default_style(self) -> int | None:
        """Style 8 when it exists, else 0; None when the vocoder has no global styles."""
        if not self._styles:
            return None
        return _PREFERRED_STYLE if _PREFERRED_STYLE < len(self._styles) else 0

    @property
    def is_expressive(self) -> bool:
        """True when the vocoder takes pitch and/or style unit streams (``f0_dict`` / ``style_dict``)."""
        return self.model.f0_dict is not None or self.model.style_dict is not None

    @property
    def num_pitch_units(self) -> int:
        """Size of the pitch-unit table (num_f0_tokens, 64 for Spirit LM); 0 for the base vocoder."""
        return self.model.config.num_f0_tokens or 0

    @property
    def num_style_units(self) -> int:
        """Size of the style-unit table (num_style_tokens, 100 for Spirit LM); 0 for the base vocoder."""
        return self.model.config.num_style_tokens or 0

    def validate(self, request: VocodeRequest) -> VocodeRequest:
        """The request with its defaults filled in (speaker, global style) and its ids as plain ints, or a
        ValueError naming the offending value. Every decode starts here; a stream checks each feed here too."""
        speaker = self.default_speaker if request.speaker is None else request.speaker
        if not 0 <= speaker < len(self._speakers):
            raise ValueError(
                f"speaker {speaker} is out of range: this vocoder has speakers 0..{len(self._speakers) - 1}"
            )
        style = request.style
        if style is not None and not self._styles:
            raise ValueError(f"style {style} given, but this vocoder has no global styles")
        if style is not None and not 0 <= style < len(self._styles):
            raise ValueError(f"style {style} is out of range: this vocoder has styles 0..{len(self._styles) - 1}")
        units = _check_ids(request.units, self.num_units, "units")
        durations = request.durations
        if durations is not None and (len(durations) != len(units) or min(durations, default=1) < 1):
            raise ValueError(f"durations must be one per unit and >= 1: {len(durations)} for {len(units)} units")
        return replace(
            request,
            units=units,
            speaker=speaker,
            style=self.default_style if style is None else style,
            pitch=_check_stream(request.pitch, self.num_pitch_units, "pitch"),
            style_units=_check_stream(request.style_units, self.num_style_units, "style_units"),
        )

    def _aligned_streams(
        self, units: list[int], pitch: list[int] | None, style_units: list[int] | None
    ) -> tuple[list[int] | None, list[int] | None, bool]:
        """Pitch and style ids aligned one-to-one with the units, and whether they came as raw (slower-rate)
        streams, i.e. resynthesis.

        The reference rule (compat doc §9.3): pitch the same length as the units is pre-duplicated LM output
        (§8.3) and style must then be too; any other pitch length means raw 12.5 Hz pitch and 1 Hz style
        for undeduplicated 25 Hz units, upsampled ×hubert_to_f0 / ×hubert_to_style, padded with the last
        value and cut to the unit count.
        """
        config = self.model.config
        streams = []  # (name, values, unit frames per stream entry)
        if self.model.f0_dict is not None:
            streams.append(("pitch", pitch, config.hubert_to_f0))
        if self.model.style_dict is not None:
            streams.append(("style_units", style_units, config.hubert_to_style))
        for name, values, _ in streams:
            if values is None:
                raise ValueError(
                    f"this expressive vocoder needs {name}: one per unit (parsed LM output) or the raw stream "
                    f"(resynthesis); none was given"
                )
        if not streams:
            return None, None, False
        lead_name, lead, _ = streams[0]
        resynthesis = len(lead) != len(units)
        aligned: dict[str, list[int]] = {}
        for name, values, ratio in streams:
            if not resynthesis:
                if len(values) != len(units):
                    raise ValueError(
                        f"{name} has {len(values)} entries but units has {len(units)}: with {lead_name} one per "
                        f"unit (pre-duplicated LM output), {name} must be one per unit too"
                    )
                aligned[name] = values
            elif not values:
                raise ValueError(f"{name} is empty, but there are {len(units)} units to vocode")
            else:
                aligned[name] = repeat_to_length(torch.tensor([values]), ratio, len(units))[0].tolist()  # host
        return aligned.get("pitch"), aligned.get("style_units"), resynthesis

    @torch.inference_mode()
    def decode(self, request: VocodeRequest) -> VocoderOutput:
        """Vocode one unit sequence in one generator forward."""
        features, durations = self.frame_features(request)
        if features is None:  # the reference crashes here (compat doc §16.1a); no units is no audio
            return VocoderOutput(audio=np.zeros(0, dtype=np.float32), durations=[])
        with precision_scope(self.precision, self.device.type):
            audio = self.model.generate(features[None])[0]  # (frames × hop,)
        return VocoderOutput(audio=to_host(audio.float()).numpy(), durations=durations)

    @torch.inference_mode()
    def decode_batch(
        self, requests: list[VocodeRequest], window_frames: int = DEFAULT_WINDOW_FRAMES
    ) -> list[VocoderOutput]:
        """``decode`` for every request, their windows sharing generator forwards (``batched``); raises what a
        request's own decode would raise (the micro-batcher then retries requests one by one)."""
        prepared = [self.frame_features(request) for request in requests]
        with precision_scope(self.precision, self.device.type):
            audio = generate_sequences(self.model, [features for features, _ in prepared], window_frames,
                                       self.fixed_shapes)  # fmt: skip
        return [
            VocoderOutput(audio=samples, durations=durations)
            for samples, (_, durations) in zip(audio, prepared, strict=True)
        ]

    def open_stream(
        self, speaker: int | None = None, style: int | None = None, *, predict_durations: bool = True, **chunking: int
    ) -> StreamingDecoder:
        """A stream for units that arrive a few at a time (``streaming.StreamingDecoder``; ``chunking``: its chunk
        sizes, lookahead and crossfade). Speaker and style are checked now, while the caller can still refuse."""
        return StreamingDecoder(self, self.validate(VocodeRequest([], speaker, style, predict_durations)), **chunking)

    def emit_streams(self, streams: list[StreamingDecoder]) -> list[np.ndarray]:
        """The audio ready in each of several open streams, their windows sharing generator forwards."""
        with precision_scope(self.precision, self.device.type):
            return vocode_streams(streams)

    def use_fixed_shapes(self) -> CaptureReport:
        """Pad generator batches to fixed shapes and, on CUDA, replay them as captured graphs (`graphs.py`)."""
        self.fixed_shapes = FixedShapeGenerator(self.model, max_forward_frames(self.model), self.precision)
        return self.fixed_shapes.capture()

    @torch.inference_mode()
    def frame_features(self, request: VocodeRequest) -> tuple[torch.Tensor | None, list[int]]:
        """Check a request and build its generator input: (model_in_dim, frames) features (None for no units)
        and the frames used per unit."""
        request = self.validate(request)
        units = request.units
        if not units:
            return None, []
        pitch, style_units, resynthesis = self._aligned_streams(units, request.pitch, request.style_units)
        if request.durations is not None:
            durations = request.durations
        elif request.predict_durations and not resynthesis:
            durations = self.predict_durations(units)
        else:
            durations = [1] * len(units)
        assert request.speaker is not None, "filled in by validate"
        return self.generator_input(units, durations, request.speaker, request.style, pitch, style_units), durations

    def predict_durations(self, units: list[int]) -> list[int]:
        """Frames per unit (each >= 1) of a unit sequence, predicted on the host in fp32 (see ``__init__``)."""
        if self._duration_predictor is None:
            raise ValueError("this vocoder has no duration predictor (config has no dur_predictor_params)")
        codes = torch.tensor([units], dtype=torch.long)  # (1, T)
        return frames_per_unit(self._duration_table, self._duration_predictor, codes)[0].tolist()

    def generator_input(
        self,
        units: list[int],
        durations: list[int],
        speaker: int,
        style: int | None,
        pitch: list[int] | None = None,
        style_units: list[int] | None = None,
    ) -> torch.Tensor:
        """(model_in_dim, sum(durations)) generator input of units lasting ``durations`` frames, with pitch and style
        units one per unit where the vocoder takes them. The ids are expanded to frames on the host and sent in one
        copy with the speaker and style, so this never waits for the device (the embeddings are per frame, so
        expanding ids equals expanding their embeddings)."""
        counts = torch.tensor(durations)
        streams = {"codes": units, "f0_codes": pitch, "style_codes": style_units}
        present = {name: values for name, values in streams.items() if values is not None}
        frames = sum(durations)
        conditioning = [speaker] if style is None else [speaker, style]
        host = torch.cat([*(torch.tensor(values).repeat_interleave(counts) for values in present.values()),
                          torch.tensor(conditioning)])  # fmt: skip
        ids = to_device(host, self.device)
        per_frame = dict(zip(present, ids[: len(present) * frames].view(len(present), 1, frames), strict=True))
        globals_ = ids[len(present) * frames :]
        features = self.model.frame_features(
            per_frame["codes"], globals_[:1], None if style is None else globals_[1:],
            f0_codes=per_frame.get("f0_codes"), style_codes=per_frame.get("style_codes"),
        )  # fmt: skip
        return features[0]


def _check_stream(values: list[int] | None, size: int, name: str) -> list[int] | None:
    """Validate an optional pitch or style unit stream against its table size (0: no table)."""
    if values is None:
        return None
    if not size:
        raise ValueError(f"{name} given, but this vocoder has no {name} table (it is not expressive)")
    return _check_ids(values, size, name)


def _check_ids(values: list[int], size: int, name: str) -> list[int]:
    """Plain ints in 0..size-1, or a ValueError naming the stream and the offending values."""
    try:
        values = [operator.index(value) for value in values]
    except TypeError as exc:
        raise ValueError(f"{name} must be integers: {exc}") from exc
    bad = [value for value in values if not 0 <= value < size]
    if bad:
        raise ValueError(f"{name} {bad[:8]} are outside 0..{size - 1} and cannot be vocoded")
    return values
