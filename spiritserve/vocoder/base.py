"""The vocoder stage: a list of HuBERT units → 16 kHz mono audio, from an official vocoder directory.

An official vocoder directory (``hifigan_spiritlm_base/``) holds ``config.json``, ``generator.pt``
(``{"generator": state_dict}`` with weight-norm keys), ``speakers.txt`` and, for the base vocoder,
``styles.txt`` (one name per line; the line number is the embedding index).
"""

import json
import math
import operator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spiritserve.errors import CheckpointError
from spiritserve.vocoder.hifigan import CodeHiFiGAN, HifiGanConfig
from spiritserve.weights import load_state_dict_strict, read_checkpoint, require_keys

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
    """Base-vocoder facade: validates requests, predicts durations, runs the generator in fp32."""

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
        model.remove_weight_norm()
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

    def _check_request(self, units: list[int], speaker: int, style: int | None) -> list[int]:
        if not 0 <= speaker < len(self._speakers):
            raise ValueError(
                f"speaker {speaker} is out of range: this vocoder has speakers 0..{len(self._speakers) - 1}"
            )
        if style is not None and not self._styles:
            raise ValueError(f"style {style} given, but this vocoder has no global styles")
        if style is not None and not 0 <= style < len(self._styles):
            raise ValueError(f"style {style} is out of range: this vocoder has styles 0..{len(self._styles) - 1}")
        try:
            units = [operator.index(unit) for unit in units]
        except TypeError as exc:
            raise ValueError(f"units must be integers: {exc}") from exc
        bad = [unit for unit in units if not 0 <= unit < self.num_units]
        if bad:
            raise ValueError(f"units {bad[:8]} are outside 0..{self.num_units - 1} and cannot be vocoded")
        return units

    @torch.inference_mode()
    def decode(
        self, units: list[int], speaker: int, style: int | None = None, predict_durations: bool = True
    ) -> VocoderOutput:
        """Vocode one unit sequence. With predict_durations, each (deduplicated) unit lasts the predicted
        number of 40 ms frames; without, every unit is one frame (raw 25 Hz units, resynthesis)."""
        units = self._check_request(units, speaker, style)
        if not units:  # the reference crashes here (compat doc §16.1a); no units is no audio
            return VocoderOutput(audio=np.zeros(0, dtype=np.float32), durations=[])
        if style is None:
            style = self.default_style
        codes = torch.tensor([units], dtype=torch.long, device=self.device)  # (1, T)
        speakers = torch.tensor([speaker], dtype=torch.long, device=self.device)  # (1,)
        styles = None if style is None else torch.tensor([style], dtype=torch.long, device=self.device)
        durations = self.model.predict_durations(codes) if predict_durations else None  # (1, T)
        audio = self.model(codes, speakers, styles, durations)[0]  # (frames × hop,)
        used = durations[0].tolist() if durations is not None else [1] * len(units)
        return VocoderOutput(audio=audio.float().cpu().numpy(), durations=used)


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
    if name.endswith("weight_v") or name in {"dict.weight", "spkr.weight", "style.weight"}:
        return torch.randn(shape, generator=generator)  # embeddings; weight_v's scale is normalised away
    fan_in = math.prod(shape[1:])  # the duration predictor's plain convs
    return fan_in**-0.5 * torch.randn(shape, generator=generator)


def write_tiny_base_vocoder(vocoder_dir: Path, seed: int = 0) -> None:
    """Write a tiny seeded vocoder in exactly the official file formats (config.json, generator.pt,
    speakers.txt, styles.txt), so tests load it through the same code as the real one."""
    vocoder_dir = Path(vocoder_dir)
    vocoder_dir.mkdir(parents=True, exist_ok=True)
    config = _tiny_base_config()
    (vocoder_dir / "config.json").write_text(json.dumps(config, indent=4) + "\n")
    with torch.device("meta"):  # shapes and names only; consumes no global RNG
        model = CodeHiFiGAN(HifiGanConfig.from_dict(config, source=vocoder_dir / "config.json"))
    generator = torch.Generator().manual_seed(seed)
    state_dict = {name: _tiny_weight(name, tensor.shape, generator) for name, tensor in model.state_dict().items()}
    torch.save({"generator": state_dict}, vocoder_dir / "generator.pt")
    (vocoder_dir / "speakers.txt").write_text("\n".join(TINY_SPEAKERS))
    (vocoder_dir / "styles.txt").write_text("\n".join(TINY_STYLES))
