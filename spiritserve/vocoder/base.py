"""The vocoder stage: HuBERT units (+ pitch and style units) → 16 kHz mono audio, from an official vocoder directory.

An official vocoder directory holds ``config.json``, ``generator.pt`` (``{"generator": state_dict}`` with
weight-norm keys) and ``speakers.txt``; the base vocoder (``hifigan_spiritlm_base/``) also has ``styles.txt``
(one name per line; the line number is the embedding index). The expressive vocoder
(``hifigan_spiritlm_expressive_w2v2/``) has no ``styles.txt``: it is conditioned instead on a pitch-unit
stream (``f0_dict``, 12.5 Hz) and a style-unit stream (``style_dict``, 1 Hz) next to the 25 Hz HuBERT units
(compat doc §9).
"""

import json
import math
import operator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spiritserve.errors import CheckpointError
from spiritserve.vocoder.hifigan import CodeHiFiGAN, HifiGanConfig, repeat_to_length
from spiritserve.weights import fold_weight_norm, load_state_dict_strict, read_checkpoint, require_keys

SAMPLE_RATE = 16000
HOP = 640  # samples per 25 Hz HuBERT frame at 16 kHz
# Reference defaults (compat doc §9.1): speaker 2, style 8 ("conv-default").
_PREFERRED_SPEAKER = 2
_PREFERRED_STYLE = 8


@dataclass(frozen=True)
class VocoderOutput:
    audio: np.ndarray  # (sum(durations) × hop,) float32 mono 16 kHz in [-1, 1]
    durations: list[int]  # frames used per unit; all 1 when durations were not predicted


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
    """Vocoder facade (base or expressive): validates requests, aligns pitch/style streams, predicts
    durations, runs the generator in fp32."""

    def __init__(self, model: CodeHiFiGAN, speakers: list[str], styles: list[str], device: torch.device):
        self.model = model
        self._speakers = speakers
        self._styles = styles
        self.device = device

    @classmethod
    def from_dir(cls, vocoder_dir: Path, device: str | torch.device = "cpu") -> "UnitVocoder":
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
        return cls(model.eval().to(device), speakers, styles, device)

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

    def _check_request(self, units: list[int], speaker: int, style: int | None) -> list[int]:
        if not 0 <= speaker < len(self._speakers):
            raise ValueError(
                f"speaker {speaker} is out of range: this vocoder has speakers 0..{len(self._speakers) - 1}"
            )
        if style is not None and not self._styles:
            raise ValueError(f"style {style} given, but this vocoder has no global styles")
        if style is not None and not 0 <= style < len(self._styles):
            raise ValueError(f"style {style} is out of range: this vocoder has styles 0..{len(self._styles) - 1}")
        return _check_ids(units, self.num_units, "units")

    def _check_stream(self, values: list[int] | None, size: int, name: str) -> list[int] | None:
        """Validate an optional pitch or style unit stream against its table size (0: no table)."""
        if values is None:
            return None
        if not size:
            raise ValueError(f"{name} given, but this vocoder has no {name} table (it is not expressive)")
        return _check_ids(values, size, name)

    def _aligned_streams(
        self, units: list[int], pitch: list[int] | None, style_units: list[int] | None
    ) -> tuple[torch.LongTensor | None, torch.LongTensor | None, bool]:
        """Pitch and style as (1, T) ids aligned one-to-one with the units, and whether they came as raw
        (slower-rate) streams, i.e. resynthesis.

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
        aligned: dict[str, torch.LongTensor] = {}
        for name, values, ratio in streams:
            ids = torch.tensor([values], dtype=torch.long, device=self.device)  # (1, S)
            if not resynthesis:
                if len(values) != len(units):
                    raise ValueError(
                        f"{name} has {len(values)} entries but units has {len(units)}: with {lead_name} one per "
                        f"unit (pre-duplicated LM output), {name} must be one per unit too"
                    )
                aligned[name] = ids
            elif not values:
                raise ValueError(f"{name} is empty, but there are {len(units)} units to vocode")
            else:
                aligned[name] = repeat_to_length(ids, ratio, len(units))  # (1, T)
        return aligned.get("pitch"), aligned.get("style_units"), resynthesis

    @torch.inference_mode()
    def decode(
        self,
        units: list[int],
        speaker: int,
        style: int | None = None,
        predict_durations: bool = True,
        pitch: list[int] | None = None,
        style_units: list[int] | None = None,
        durations: list[int] | None = None,
    ) -> VocoderOutput:
        """Vocode one unit sequence.

        With predict_durations, each (deduplicated) unit lasts the predicted number of 40 ms frames; without,
        every unit is one frame (raw 25 Hz units, resynthesis). ``style`` is the base vocoder's global style.

        The expressive vocoder also needs ``pitch`` and ``style_units``, in one of two forms:
        - one per unit (pre-duplicated, as parsed from LM output): expanded by the same durations as the units;
        - raw 12.5 Hz pitch and 1 Hz style for undeduplicated 25 Hz units: recognised, as in the reference, by
          ``len(pitch) != len(units)``; durations are then never predicted (whatever predict_durations says)
          and both streams are upsampled to one per unit (×2 / ×25, padded with the last value, cut).
        Missing pitch or style_units for the expressive vocoder is a ValueError: the caller picks the fallback.
        ``durations``: frames per unit fixed earlier, used instead of predicting (see ``frame_features``).
        """
        features, used = self.frame_features(units, speaker, style, predict_durations, pitch, style_units, durations)
        if features is None:  # the reference crashes here (compat doc §16.1a); no units is no audio
            return VocoderOutput(audio=np.zeros(0, dtype=np.float32), durations=[])
        audio = self.model.generate(features[None])[0]  # (frames × hop,)
        return VocoderOutput(audio=audio.float().cpu().numpy(), durations=used)

    @torch.inference_mode()
    def frame_features(
        self,
        units: list[int],
        speaker: int,
        style: int | None = None,
        predict_durations: bool = True,
        pitch: list[int] | None = None,
        style_units: list[int] | None = None,
        durations: list[int] | None = None,
    ) -> tuple[torch.Tensor | None, list[int]]:
        """Check a request (arguments as in ``decode``) and build its generator input: (model_in_dim, frames)
        features (None for no units) and the frames used per unit.

        ``durations`` (one per unit, each >= 1) replaces the prediction: a speech budget cuts generated units
        where the durations predicted *with* the units that followed add up, and the last two of those would
        come out differently if predicted again at the cut (the predictor looks two units to the right)."""
        units = self._check_request(units, speaker, style)
        if durations is not None and (len(durations) != len(units) or min(durations, default=1) < 1):
            raise ValueError(f"durations must be one per unit and >= 1: {len(durations)} for {len(units)} units")
        pitch = self._check_stream(pitch, self.num_pitch_units, "pitch")
        style_units = self._check_stream(style_units, self.num_style_units, "style_units")
        if not units:
            return None, []
        f0_codes, style_codes, resynthesis = self._aligned_streams(units, pitch, style_units)  # (1, T) each
        if resynthesis:
            predict_durations = False
        if style is None:
            style = self.default_style
        codes = torch.tensor([units], dtype=torch.long, device=self.device)  # (1, T)
        speakers = torch.tensor([speaker], dtype=torch.long, device=self.device)  # (1,)
        styles = None if style is None else torch.tensor([style], dtype=torch.long, device=self.device)
        if durations is not None:
            frames_per_unit = torch.tensor([durations], dtype=torch.long, device=self.device)  # (1, T)
        else:
            frames_per_unit = self.model.predict_durations(codes) if predict_durations else None  # (1, T)
        features = self.model.frame_features(
            codes, speakers, styles, frames_per_unit, f0_codes=f0_codes, style_codes=style_codes
        )  # (1, model_in_dim, frames)
        used = frames_per_unit[0].tolist() if frames_per_unit is not None else [1] * len(units)
        return features[0], used


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


# --- tiny official-format bundle for tests and the embedded default -------------------------------------

TINY_SPEAKERS = ["ex01", "ex02", "ex03", "ex04"]
TINY_STYLES = [
    "read-default", "read-happy", "read-sad", "read-whisper", "read-confused", "read-enunciated",
    "read-laughing", "read-narration", "conv-default", "conv-happy", "conv-sad", "conv-whisper",
]  # fmt: skip


def _tiny_base_config() -> dict:
    """A config.json as training writes it: generator keys plus HiFi-GAN training keys we ignore."""
    embedding_dim = 16
    return {
        "resblock": "1",
        "num_gpus": 0,
        "batch_size": 16,
        "learning_rate": 0.0002,
        "adam_b1": 0.8,
        "adam_b2": 0.99,
        "lr_decay": 0.999,
        "seed": 1234,
        "upsample_rates": [8, 8, 10],
        "upsample_kernel_sizes": [16, 16, 20],
        "upsample_initial_channel": 32,
        "resblock_kernel_sizes": [3],
        "resblock_dilation_sizes": [[1, 3, 5]],
        "num_embeddings": 500,
        "embedding_dim": embedding_dim,
        "model_in_dim": 3 * embedding_dim,  # code + speaker + style
        "multispkr": True,
        "num_speakers": len(TINY_SPEAKERS),
        "multistyle": True,
        "num_styles": len(TINY_STYLES),
        "segment_size": 8960,
        "code_hop_size": HOP,
        "num_mels": 80,
        "num_freq": 1025,
        "n_fft": 1024,
        "hop_size": 256,
        "win_size": 1024,
        "dur_prediction_weight": 1.0,
        "dur_predictor_params": {
            "encoder_embed_dim": embedding_dim,
            "var_pred_hidden_dim": embedding_dim,
            "var_pred_kernel_size": 3,
            "var_pred_dropout": 0.5,
        },
        "sampling_rate": SAMPLE_RATE,
        "fmin": 0,
        "fmax": 8000,
        "fmax_for_loss": None,
        "num_workers": 4,
        "dist_config": {"dist_backend": "nccl", "dist_url": "env://"},
    }


_EMBEDDINGS = {"dict.weight", "f0_dict.weight", "style_dict.weight", "spkr.weight", "style.weight"}


def _tiny_expressive_config() -> dict:
    """The expressive vocoder's config.json: pitch and style unit tables instead of global styles."""
    config = _tiny_base_config()
    del config["num_styles"]
    config.update(
        multistyle=False,
        num_f0_tokens=64,  # VQ-VAE pitch codebook, 12.5 Hz
        f0_hop_size=1280,
        num_style_tokens=100,  # style classifier labels, 1 Hz
        style_hop_size=16000,
        model_in_dim=4 * config["embedding_dim"],  # code + f0 code + style code + speaker
    )
    return config


def _tiny_weight(name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """Random weights that keep the signal alive through the generator and durations small (mostly 1–3)."""
    if name.endswith("weight_g"):
        return torch.full(shape, 1.2)  # filter norm 1.2: output RMS ≈ 0.1–0.4 (1.0 is near silent, 1.5 clips)
    if name.startswith("dur_predictor.ln"):
        return torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
    if name == "dur_predictor.proj.weight":
        return 0.1 * torch.randn(shape, generator=generator)
    if name == "dur_predictor.proj.bias":
        return torch.full(shape, 0.7)  # log(1 + d) ≈ 0.7 ± 0.4 → d mostly 1–3
    if name.endswith("bias"):
        return 0.01 * torch.randn(shape, generator=generator)
    if name.endswith("weight_v") or name in _EMBEDDINGS:
        return torch.randn(shape, generator=generator)  # embeddings; weight_v's scale is normalised away
    fan_in = math.prod(shape[1:])  # the duration predictor's plain convs
    return fan_in**-0.5 * torch.randn(shape, generator=generator)


def _write_tiny_vocoder(vocoder_dir: Path, config: dict, seed: int) -> None:
    """config.json, a seeded generator.pt in the official format, and speakers.txt."""
    vocoder_dir = Path(vocoder_dir)
    vocoder_dir.mkdir(parents=True, exist_ok=True)
    (vocoder_dir / "config.json").write_text(json.dumps(config, indent=4) + "\n")
    with torch.device("meta"):  # shapes and names only; consumes no global RNG
        model = CodeHiFiGAN(HifiGanConfig.from_dict(config, source=vocoder_dir / "config.json"))
    generator = torch.Generator().manual_seed(seed)
    state_dict = {name: _tiny_weight(name, tensor.shape, generator) for name, tensor in model.state_dict().items()}
    torch.save({"generator": state_dict}, vocoder_dir / "generator.pt")
    (vocoder_dir / "speakers.txt").write_text("\n".join(TINY_SPEAKERS))


def write_tiny_base_vocoder(vocoder_dir: Path, seed: int = 0) -> None:
    """Write a tiny seeded vocoder in exactly the official file formats (config.json, generator.pt,
    speakers.txt, styles.txt), so tests load it through the same code as the real one."""
    _write_tiny_vocoder(vocoder_dir, _tiny_base_config(), seed)
    (Path(vocoder_dir) / "styles.txt").write_text("\n".join(TINY_STYLES))


def write_tiny_expressive_vocoder(vocoder_dir: Path, seed: int = 0) -> None:
    """Write a tiny seeded expressive vocoder (``hifigan_spiritlm_expressive_w2v2/`` layout): config.json with
    64 pitch units at f0_hop_size 1280 and 100 style units at style_hop_size 16000, generator.pt with
    ``f0_dict``/``style_dict`` tables, speakers.txt, and no styles.txt."""
    _write_tiny_vocoder(vocoder_dir, _tiny_expressive_config(), seed)
