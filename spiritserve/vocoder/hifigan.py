"""Unit HiFi-GAN: discrete 25 Hz units (+ speaker, style) → 16 kHz waveform, with a duration predictor.

The architecture is speech-resynthesis' ``CodeGenerator`` over a HiFi-GAN V1 ``Generator`` with ``ResBlock1``
blocks, as used by both Spirit LM vocoders (compat doc §9.2). Parameter names are the checkpoint's own
(``dict``, ``spkr``, ``style``, ``f0_dict``, ``style_dict``, ``dur_predictor.*``, ``conv_pre``, ``ups.{i}``,
``resblocks.{j}.convs1.{k}``, ``conv_post``), so the official ``generator.pt`` loads strictly with no mapping.

Weight norm: the model is built with HiFi-GAN's weight norm, so its state dict has the file's
``*.weight_g`` / ``*.weight_v`` keys and loads strictly; ``weights.fold_weight_norm`` then folds each pair
into a plain ``weight`` for inference, exactly as the reference does after loading.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spiritserve.audio import SAMPLE_RATE
from spiritserve.errors import CheckpointError
from spiritserve.weights import check_unknown_keys, legacy_weight_norm

LRELU_SLOPE = 0.1

# Keys the official HiFi-GAN / speech-resynthesis training configs carry that do not shape the generator.
_TRAINING_KEYS = {
    "input_training_file", "input_validation_file", "num_gpus", "batch_size", "learning_rate", "adam_b1",
    "adam_b2", "lr_decay", "seed", "segment_size", "num_mels", "num_freq", "n_fft", "hop_size", "win_size",
    "fmin", "fmax", "fmax_for_loss", "num_workers", "dist_config", "dur_prediction_weight",
    "f0_stats", "f0_normalize", "f0_feats", "f0_median", "f0_interp",
    "lambda_commit", "f0_quantizer_path", "f0_quantizer", "f0_vq_params", "f0_encoder_params", "f0_decoder_params",
    "lambda_commit_code", "code_encoder_params", "code_vq_params",
}  # fmt: skip
# Keys read by the reference ``CodeGenerator`` for input paths Spirit LM never uses (continuous or
# bin-quantised F0 input, a speaker-embedder input). Accepted only while they leave those paths off.
_UNUSED_PATH_KEYS = {"f0", "f0_quant_num_bin", "embedder_params", "embedder_dim"}
_DURATION_KEYS = {"encoder_embed_dim", "var_pred_hidden_dim", "var_pred_kernel_size", "var_pred_dropout"}


@dataclass(frozen=True)
class DurationPredictorConfig:
    encoder_embed_dim: int
    var_pred_hidden_dim: int
    var_pred_kernel_size: int
    var_pred_dropout: float


@dataclass(frozen=True)
class HifiGanConfig:
    """The architecture part of a vocoder ``config.json`` (official key names)."""

    num_embeddings: int  # HuBERT unit vocabulary; ids >= this cannot be vocoded
    embedding_dim: int  # width of every embedding stream
    model_in_dim: int  # embedding_dim × number of concatenated streams
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    upsample_initial_channel: int
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    code_hop_size: int  # samples per unit frame: 640 for 25 Hz units at 16 kHz
    resblock: str = "1"
    sampling_rate: int = SAMPLE_RATE
    multispkr: bool = False  # training configs store a truthy string such as "from_input_file"
    num_speakers: int = 200
    multistyle: bool = False
    num_styles: int = 100
    num_f0_tokens: int | None = None  # expressive: pitch-unit table (12.5 Hz units, f0_hop_size samples)
    f0_hop_size: int | None = None
    num_style_tokens: int | None = None  # expressive: style-unit table (1 Hz units, style_hop_size samples)
    style_hop_size: int | None = None
    dur_predictor_params: DurationPredictorConfig | None = None

    @classmethod
    def from_json(cls, path: Path) -> "HifiGanConfig":
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read vocoder config {path}: {exc}") from exc
        return cls.from_dict(raw, source=path)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: Path) -> "HifiGanConfig":
        """Parse and check a config dict; any inconsistency is a CheckpointError naming ``source``."""
        if not isinstance(raw, dict):
            raise CheckpointError(f"{source}: expected a JSON object, found {type(raw).__name__}")
        fields = set(cls.__dataclass_fields__)
        check_unknown_keys(raw, fields | _TRAINING_KEYS | _UNUSED_PATH_KEYS, source)
        enabled = [key for key in ("f0", "f0_quant_num_bin", "embedder_params") if raw.get(key)]
        if enabled:
            raise CheckpointError(f"{source}: unsupported vocoder inputs enabled: {enabled}")
        values = {key: raw[key] for key in fields if key in raw}
        try:
            for key in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes"):
                if key in values:
                    values[key] = tuple(int(v) for v in values[key])
            if "resblock_dilation_sizes" in values:
                values["resblock_dilation_sizes"] = tuple(
                    tuple(int(d) for d in ds) for ds in values["resblock_dilation_sizes"]
                )
            for key in ("multispkr", "multistyle"):
                values[key] = bool(values.get(key))
            if values.get("dur_predictor_params"):
                params = values["dur_predictor_params"]
                check_unknown_keys(params, _DURATION_KEYS, source, "dur_predictor_params")
                values["dur_predictor_params"] = DurationPredictorConfig(
                    **{key: params[key] for key in _DURATION_KEYS if key in params}
                )
            else:
                values["dur_predictor_params"] = None
            config = cls(**values)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: malformed vocoder config: {exc}") from exc
        config._validate(source)
        return config

    @property
    def hubert_to_f0(self) -> int:
        """Unit frames per pitch unit: round(f0_hop_size / code_hop_size), 2 for 12.5 Hz pitch; 0 without pitch."""
        return round(self.f0_hop_size / self.code_hop_size) if self.num_f0_tokens and self.f0_hop_size else 0

    @property
    def hubert_to_style(self) -> int:
        """Unit frames per style unit: round(style_hop_size / code_hop_size), 25 for 1 Hz style; 0 without."""
        if not (self.num_style_tokens and self.style_hop_size):
            return 0
        return round(self.style_hop_size / self.code_hop_size)

    @property
    def num_streams(self) -> int:
        """How many embedding_dim-wide streams are concatenated at the generator input."""
        optional = (self.num_f0_tokens, self.num_style_tokens, self.multispkr, self.multistyle)
        return 1 + sum(bool(flag) for flag in optional)

    def _validate(self, source: Path) -> None:
        problems = []
        if self.resblock != "1":
            problems.append(f"resblock {self.resblock!r}: only HiFi-GAN V1 ResBlock1 ('1') is implemented")
        if math.prod(self.upsample_rates) != self.code_hop_size:
            problems.append(
                f"product of upsample_rates {list(self.upsample_rates)} != code_hop_size {self.code_hop_size}"
            )
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            problems.append("upsample_rates and upsample_kernel_sizes differ in length")
        # padding (k - u) / 2 makes each stage exactly u× longer only when k - u is even and >= 0
        for rate, kernel in zip(self.upsample_rates, self.upsample_kernel_sizes):
            if kernel < rate or (kernel - rate) % 2:
                problems.append(f"upsample kernel {kernel} with rate {rate} does not give exactly {rate}× samples")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            problems.append("resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        if any(len(dilations) != 3 for dilations in self.resblock_dilation_sizes):
            problems.append(f"ResBlock1 needs 3 dilations per block, got {list(self.resblock_dilation_sizes)}")
        if self.model_in_dim != self.embedding_dim * self.num_streams:
            problems.append(
                f"model_in_dim {self.model_in_dim} != embedding_dim {self.embedding_dim} × {self.num_streams} streams"
            )
        if self.num_f0_tokens and not self.f0_hop_size:
            problems.append("num_f0_tokens is set without f0_hop_size")
        if self.num_style_tokens and not self.style_hop_size:
            problems.append("num_style_tokens is set without style_hop_size")
        if self.num_f0_tokens and self.f0_hop_size and self.hubert_to_f0 < 1:
            problems.append(f"f0_hop_size {self.f0_hop_size} is under half of code_hop_size {self.code_hop_size}")
        if self.num_style_tokens and self.style_hop_size and self.hubert_to_style < 1:
            problems.append(f"style_hop_size {self.style_hop_size} is under half of code_hop_size {self.code_hop_size}")
        duration = self.dur_predictor_params
        if duration is not None:
            if duration.encoder_embed_dim != self.embedding_dim:
                problems.append(f"dur_predictor encoder_embed_dim {duration.encoder_embed_dim} != embedding_dim")
            # the reference hard-codes conv2's padding to 1, which keeps the length only for kernel 3
            if duration.var_pred_kernel_size != 3:
                problems.append(f"dur_predictor var_pred_kernel_size {duration.var_pred_kernel_size} != 3")
        if problems:
            raise CheckpointError(f"{source}: inconsistent vocoder config: " + "; ".join(problems))


def _same_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size - 1) * dilation // 2


class VariancePredictor(nn.Module):
    """Predicts one log-duration per unit from its code embedding (FastSpeech-style, two convs)."""

    def __init__(self, config: DurationPredictorConfig):
        super().__init__()
        channels, hidden, kernel = config.encoder_embed_dim, config.var_pred_hidden_dim, config.var_pred_kernel_size
        self.conv1 = nn.Sequential(nn.Conv1d(channels, hidden, kernel, padding=_same_padding(kernel)), nn.ReLU())
        self.ln1 = nn.LayerNorm(hidden)
        self.conv2 = nn.Sequential(
            nn.Conv1d(hidden, hidden, kernel, padding=1), nn.ReLU()
        )  # padding 1 as in the reference
        self.ln2 = nn.LayerNorm(hidden)
        self.proj = nn.Linear(hidden, 1)
        self.dropout = config.var_pred_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) embeddings → (B, T) log(1 + duration in frames)."""
        x = self.conv1(x.transpose(1, 2)).transpose(1, 2)  # (B, T, H)
        x = F.dropout(self.ln1(x), p=self.dropout, training=self.training)
        x = self.conv2(x.transpose(1, 2)).transpose(1, 2)  # (B, T, H)
        x = F.dropout(self.ln2(x), p=self.dropout, training=self.training)
        return self.proj(x).squeeze(2)


class ResBlock1(nn.Module):
    """HiFi-GAN V1 residual block: three (dilated conv → conv) pairs, LeakyReLU 0.1 before each conv."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            legacy_weight_norm(
                nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_same_padding(kernel_size, d))
            )
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            legacy_weight_norm(nn.Conv1d(channels, channels, kernel_size, padding=_same_padding(kernel_size)))
            for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) → (B, C, T)."""
        for conv1, conv2 in zip(self.convs1, self.convs2):
            residual = conv1(F.leaky_relu(x, LRELU_SLOPE))
            x = x + conv2(F.leaky_relu(residual, LRELU_SLOPE))
        return x


def frames_per_unit(table: nn.Embedding, predictor: VariancePredictor, codes: torch.Tensor) -> torch.Tensor:
    """(B, T) unit ids → (B, T) predicted frames per unit, each >= 1 (``predictor`` reads ``table``'s embeddings)."""
    log_durations = predictor(table(codes))  # (B, T)
    return torch.clamp(torch.round(torch.exp(log_durations) - 1).long(), min=1)


def _expand(x: torch.Tensor, durations: torch.Tensor) -> torch.Tensor:
    """Repeat each frame of x (B, T, C) durations[b, t] times → (B, frames, C). The model's own ``forward`` path; the
    serving paths expand ids on the host instead (``UnitVocoder.generator_input``), which reads nothing back."""
    totals = durations.sum(dim=1)
    if bool((totals != totals[0]).any()):
        raise ValueError(f"batched durations must give every sequence the same length, got {totals.tolist()}")
    return torch.stack([row.repeat_interleave(row_durations, dim=0) for row, row_durations in zip(x, durations)])


def repeat_to_length(ids: torch.Tensor, ratio: int, length: int) -> torch.Tensor:
    """Bring a slower unit stream to the unit rate, as the vocoder does for resynthesis.

    ids: (B, S) pitch or style units at 1/ratio of the unit rate (12.5 Hz pitch: ratio 2; 1 Hz style: 25).
    Each entry is repeated ``ratio`` times, then the result is padded with its last entry or cut so that it
    has exactly ``length`` entries → (B, length).
    """
    if ids.size(1) == 0:
        raise ValueError("cannot upsample an empty unit stream")
    upsampled = ids.repeat_interleave(ratio, dim=1)  # (B, S·ratio)
    missing = length - upsampled.size(1)
    if missing > 0:
        upsampled = torch.cat([upsampled, upsampled[:, -1:].expand(-1, missing)], dim=1)  # (B, >= length)
    return upsampled[:, :length]


class CodeHiFiGAN(nn.Module):
    """Unit vocoder: embeddings → optional duration expansion → HiFi-GAN generator → tanh waveform."""

    def __init__(self, config: HifiGanConfig):
        super().__init__()
        self.config = config
        dim = config.embedding_dim
        # Conditioning, concatenated along channels in this order: code, f0 code, style code, speaker, style.
        self.dict = nn.Embedding(config.num_embeddings, dim)
        self.f0_dict = nn.Embedding(config.num_f0_tokens, dim) if config.num_f0_tokens else None
        self.style_dict = nn.Embedding(config.num_style_tokens, dim) if config.num_style_tokens else None
        self.spkr = nn.Embedding(config.num_speakers, dim) if config.multispkr else None
        self.style = nn.Embedding(config.num_styles, dim) if config.multistyle else None
        params = config.dur_predictor_params
        self.dur_predictor = VariancePredictor(params) if params is not None else None

        # HiFi-GAN V1 generator: each stage halves the channels and multiplies the length by its rate.
        channels = config.upsample_initial_channel
        self.conv_pre = legacy_weight_norm(nn.Conv1d(config.model_in_dim, channels, 7, padding=3))
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for rate, kernel in zip(config.upsample_rates, config.upsample_kernel_sizes):
            up = nn.ConvTranspose1d(channels, channels // 2, kernel, rate, padding=(kernel - rate) // 2)
            self.ups.append(legacy_weight_norm(up))
            channels //= 2
            for block_kernel, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes):
                self.resblocks.append(ResBlock1(channels, block_kernel, dilations))
        self.conv_post = legacy_weight_norm(nn.Conv1d(channels, 1, 7, padding=3))

    def predict_durations(self, codes: torch.LongTensor) -> torch.LongTensor:
        """(B, T) unit ids → (B, T) frames per unit, each >= 1."""
        if self.dur_predictor is None:
            raise ValueError("this vocoder has no duration predictor (config has no dur_predictor_params)")
        return frames_per_unit(self.dict, self.dur_predictor, codes)

    def forward(
        self,
        codes: torch.LongTensor,
        speaker: torch.LongTensor | None = None,
        style: torch.LongTensor | None = None,
        durations: torch.LongTensor | None = None,
        *,
        f0_codes: torch.LongTensor | None = None,
        style_codes: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        """Vocode a batch.

        codes, f0_codes, style_codes: (B, T), one entry per unit (pitch and style already aligned to units;
        raw 12.5 Hz / 1 Hz streams are first brought to the unit rate with ``repeat_to_length``);
        speaker, style: (B,) global ids; durations: (B, T) frames per unit, or None to keep one frame per unit
        (resynthesis of raw 25 Hz units). Returns (B, frames × code_hop_size) in [-1, 1].
        """
        features = self.frame_features(
            codes, speaker, style, durations, f0_codes=f0_codes, style_codes=style_codes
        )  # (B, model_in_dim, frames)
        return self.generate(features)

    def frame_features(
        self,
        codes: torch.LongTensor,
        speaker: torch.LongTensor | None = None,
        style: torch.LongTensor | None = None,
        durations: torch.LongTensor | None = None,
        *,
        f0_codes: torch.LongTensor | None = None,
        style_codes: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        """The generator input, frame by frame (arguments as in ``forward``) → (B, model_in_dim, frames).

        Each frame depends only on its own unit, so features of consecutive unit spans concatenate exactly
        (the streaming decoder relies on this).
        """
        streams = [self.dict(codes)]  # (B, T, C) each
        for table, ids, name in ((self.f0_dict, f0_codes, "f0_codes"), (self.style_dict, style_codes, "style_codes")):
            if table is not None:
                if ids is None:
                    raise ValueError(f"this vocoder needs {name}")
                streams.append(table(ids))
        x = torch.cat(streams, dim=2)  # (B, T, k·C)
        if durations is not None:
            x = _expand(x, durations)  # (B, frames, k·C)

        globals_ = []
        for table, ids, name in ((self.spkr, speaker, "speaker"), (self.style, style, "style")):
            if table is not None:
                if ids is None:
                    raise ValueError(f"this vocoder needs a {name} id")
                globals_.append(table(ids))  # (B, C)
        if globals_:
            conditioning = torch.cat(globals_, dim=1)[:, None, :].expand(-1, x.size(1), -1)  # (B, frames, g·C)
            x = torch.cat([x, conditioning], dim=2)  # (B, frames, model_in_dim)
        return x.transpose(1, 2)

    def generate(self, x: torch.Tensor) -> torch.Tensor:
        """HiFi-GAN generator: (B, model_in_dim, frames) → (B, frames × code_hop_size)."""
        blocks_per_stage = len(self.config.resblock_kernel_sizes)
        x = self.conv_pre(x)
        for stage, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))  # (B, C/2, T·rate)
            blocks = self.resblocks[stage * blocks_per_stage : (stage + 1) * blocks_per_stage]
            x = sum(block(x) for block in blocks) / blocks_per_stage  # multi-receptive-field fusion
        x = self.conv_post(F.leaky_relu(x))  # default slope 0.01 here, as in the original HiFi-GAN
        return torch.tanh(x).squeeze(1)
