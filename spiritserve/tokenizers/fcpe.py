"""FCPE pitch estimator: 16 kHz mono audio -> F0 in Hz at 200 Hz plus voicing, as Spirit LM calls it.

The weights are torchfcpe's bundled ``assets/fcpe_c_v001.pt`` (the file Spirit LM's ``spawn_bundled_infer_model``
loads). torchfcpe's own code imports torchaudio, which does not load beside our torch, so this is an
independent implementation of its inference path: log-mel (torch.stft + a Slaney mel filterbank, as librosa
builds it) -> conv-only "conformer" -> 360 cent bins -> local-argmax decoding. The asset is found through the
package's import spec without importing the package. The bundled model runs at 16 kHz, so 16 kHz input needs
no resampling (a checkpoint at another rate is rejected).

Batches are padded, and every step that mixes frames (convs, GroupNorm) sees padded frames as zeros or not
at all, so a padded batch gives the same F0 as one waveform at a time.
"""

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spiritserve.audio import SAMPLE_RATE
from spiritserve.errors import BadAudioError, CheckpointError
from spiritserve.weights import (
    check_unknown_keys,
    config_key_policy,
    fold_weight_norm,
    legacy_weight_norm,
    load_state_dict_strict,
    read_checkpoint,
    require_keys,
)

BUNDLED_ASSET = ("assets", "fcpe_c_v001.pt")  # inside the installed torchfcpe package

# Spirit LM's call (FCPEF0Extractor): hop 80 -> 200 Hz output, and these decoding parameters.
HOP_LENGTH = 80
THRESHOLD = 0.05  # peak activation at or below this: unvoiced
F0_MIN = 50.0  # Hz; lower (or unvoiced) frames are "uv" and interpolated over
F0_MAX = 1100.0  # Hz; higher F0 is clamped
LOCAL_ARGMAX_RADIUS = 4  # "local_argmax": weighted mean over the 9 bins around the peak

# Keys in the asset that inference never reads: the pre-attention LayerNorm of each layer (the bundled model
# is conv-only, so there is no attention to normalise for) and the training target's cent mask. They are the
# only keys dropped before the strict load.
UNUSED_KEY_SUFFIXES = (".norm.weight", ".norm.bias")
UNUSED_KEYS = ("gaussian_blurred_cent_mask",)

# config_dict sections: only mel and model describe inference; the rest record training.
CONFIG_SECTIONS = {"data", "mel", "model", "loss", "device", "env", "train"}
MEL_KEYS = {"sr", "num_mels", "n_fft", "win_size", "hop_size", "fmin", "fmax", "type"}
MODEL_KEYS = {
    "type", "out_dims", "hidden_dims", "n_layers", "n_heads", "f0_min", "f0_max", "use_fa_norm",
    "residual_dropout", "attention_dropout", "conv_only", "conv_dropout", "atten_dropout", "use_harmonic_emb",
}  # fmt: skip


def bundled_checkpoint_path() -> Path:
    """Path of ``fcpe_c_v001.pt`` in the installed torchfcpe, found without importing torchfcpe (and torchaudio)."""
    spec = importlib.util.find_spec("torchfcpe")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "torchfcpe is not installed; it ships the FCPE weights (pip install --no-deps torchfcpe, "
            "version in requirements.lock)"
        )
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*BUNDLED_ASSET)


@dataclass(frozen=True)
class FCPEConfig:
    sample_rate: int  # mel.sr
    num_mels: int
    n_fft: int
    win_size: int
    hop_size: int  # 160: the network runs at 100 Hz
    fmin: float
    fmax: float
    out_dims: int  # cent bins (360)
    hidden_dims: int
    n_layers: int
    f0_min: float  # range of the cent table (not Spirit LM's F0_MIN/F0_MAX)
    f0_max: float

    @classmethod
    def from_config_dict(cls, config: Any, source: Path) -> "FCPEConfig":
        if not (
            isinstance(config, dict) and isinstance(config.get("mel"), dict) and isinstance(config.get("model"), dict)
        ):
            raise CheckpointError(f"{source}: config_dict must be a dict with 'mel' and 'model' sections")
        mel, model = config["mel"], config["model"]
        # torchfcpe's bundled asset is pinned, not a user's file: a key we do not read is an unreviewed change
        # (e.g. mel.center would shift every frame), so here unknown keys are always refused.
        with config_key_policy(strict=True):
            check_unknown_keys(config, CONFIG_SECTIONS, source)
            check_unknown_keys(mel, MEL_KEYS, source, "mel")
            check_unknown_keys(model, MODEL_KEYS, source, "model")
        unsupported = {
            "mel.type": str(mel.get("type", "default")).lower() not in ("default", "none"),
            "model.type": model.get("type") != "CFNaiveMelPE",
            "model.conv_only": model.get("conv_only") is not True,  # attention layers are not implemented
            "model.use_harmonic_emb": bool(model.get("use_harmonic_emb", False)),
        }
        for key, bad in unsupported.items():
            if bad:
                section, name = key.split(".")
                raise CheckpointError(f"{source}: unsupported {key} {config[section].get(name)!r}")
        try:
            values = dict(
                sample_rate=mel["sr"], num_mels=mel["num_mels"], n_fft=mel["n_fft"], win_size=mel["win_size"],
                hop_size=mel["hop_size"], fmin=mel["fmin"], fmax=mel["fmax"], out_dims=model["out_dims"],
                hidden_dims=model["hidden_dims"], n_layers=model["n_layers"], f0_min=model["f0_min"],
                f0_max=model["f0_max"],
            )  # fmt: skip
        except KeyError as exc:
            raise CheckpointError(f"{source}: config_dict lacks {exc}") from exc
        for name, value in values.items():
            is_float = name in ("fmin", "fmax", "f0_min", "f0_max")
            if isinstance(value, bool) or not isinstance(value, (int, float) if is_float else int) or value < 0:
                kind = "number" if is_float else "int"
                raise CheckpointError(f"{source}: config {name} must be a non-negative {kind}, found {value!r}")
        if values["sample_rate"] != SAMPLE_RATE:
            raise CheckpointError(f"{source}: mel.sr {values['sample_rate']} != {SAMPLE_RATE} (no resampling here)")
        if values["hidden_dims"] % 4:
            raise CheckpointError(f"{source}: hidden_dims {values['hidden_dims']} is not divisible by 4 groups")
        return cls(**values)


def slaney_mel_filterbank(sample_rate: int, n_fft: int, num_mels: int, fmin: float, fmax: float) -> Tensor:
    """(num_mels, n_fft // 2 + 1) triangles on the Slaney mel scale, area-normalised: librosa's
    ``filters.mel(htk=False, norm="slaney")``, computed in float64 and rounded once to float32."""
    linear_hz_per_mel = 200.0 / 3  # linear below 1 kHz, logarithmic above
    log_step = math.log(6.4) / 27.0
    log_start_mel = 1000.0 / linear_hz_per_mel

    def hz_to_mel(hz: float) -> float:
        return hz / linear_hz_per_mel if hz < 1000.0 else log_start_mel + math.log(hz / 1000.0) / log_step

    mels = torch.linspace(hz_to_mel(fmin), hz_to_mel(fmax), num_mels + 2, dtype=torch.float64)
    edges = torch.where(
        mels < log_start_mel, mels * linear_hz_per_mel, 1000.0 * torch.exp(log_step * (mels - log_start_mel))
    )  # (num_mels + 2,) Hz
    fft_hz = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * (sample_rate / n_fft)
    widths = edges.diff()  # (num_mels + 1,)
    ramps = edges[:, None] - fft_hz[None, :]  # (num_mels + 2, bins)
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    weights = weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.float()


class LogMelSpectrogram(nn.Module):
    """Waveforms -> natural-log mel magnitudes, one frame per ``hop_size`` samples plus one: torchfcpe's framing
    (reflect padding of (win - hop) / 2 each side, no centring, last frame repeated)."""

    def __init__(self, config: FCPEConfig):
        super().__init__()
        self.config = config
        self.register_buffer("window", torch.hann_window(config.win_size), persistent=False)
        mel_basis = slaney_mel_filterbank(config.sample_rate, config.n_fft, config.num_mels, config.fmin, config.fmax)
        self.register_buffer("mel_basis", mel_basis, persistent=False)

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.config.hop_size + 1

    def forward(self, waveforms: list[Tensor]) -> tuple[Tensor, Tensor]:
        """1-D waveforms (each >= win_size samples) -> padded mel (B, frames, num_mels), frame mask (B, frames)."""
        config = self.config
        pad_left = (config.win_size - config.hop_size) // 2
        pad_right = (config.win_size - config.hop_size + 1) // 2
        padded = [F.pad(waveform[None, None], (pad_left, pad_right), mode="reflect")[0, 0] for waveform in waveforms]
        batch = torch.zeros(len(padded), max(len(row) for row in padded), device=self.window.device)
        for row, waveform in enumerate(padded):
            batch[row, : len(waveform)] = waveform
        spectrum = torch.stft(
            batch,
            config.n_fft,
            hop_length=config.hop_size,
            win_length=config.win_size,
            window=self.window,
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )  # (B, bins, stft frames)
        magnitude = torch.sqrt(spectrum.real.pow(2) + spectrum.imag.pow(2) + 1e-9)
        mel = torch.log(torch.clamp(self.mel_basis @ magnitude, min=1e-5)).transpose(1, 2)  # (B, frames, mels)

        lengths = torch.tensor([self.num_frames(len(waveform)) for waveform in waveforms], device=mel.device)
        # The STFT gives one frame fewer than num_frames; repeat each row's last real frame into that slot.
        mel = torch.cat([mel, mel[:, -1:]], dim=1)
        rows = torch.arange(len(waveforms), device=mel.device)
        mel[rows, lengths - 1] = mel[rows, lengths - 2]
        frame_mask = torch.arange(mel.size(1), device=mel.device) < lengths[:, None]  # (B, frames)
        return mel, frame_mask


class MaskedGroupNorm(nn.GroupNorm):
    """GroupNorm over (channels in group, valid frames): padded frames must not enter the statistics."""

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # x (B, C, T), mask (B, 1, T) float
        batch, channels, frames = x.shape
        grouped = x.view(batch, self.num_groups, -1, frames)  # (B, G, C/G, T)
        group_mask = mask[:, None]  # (B, 1, 1, T)
        count = group_mask.sum(dim=(2, 3), keepdim=True) * grouped.size(2)
        mean = (grouped * group_mask).sum(dim=(2, 3), keepdim=True) / count
        variance = ((grouped - mean).pow(2) * group_mask).sum(dim=(2, 3), keepdim=True) / count
        normalised = ((grouped - mean) / torch.sqrt(variance + self.eps)).view(batch, channels, frames)
        return normalised * self.weight[:, None] + self.bias[:, None]


class ConvModule(nn.Module):
    """Conformer convolution module (the only sublayer of the conv-only bundled model), residual added by the caller.

    Submodules live in ``net`` under torchfcpe's Sequential indices (0, 2, 4, 6) so the asset's keys load as
    they are; the parameter-free steps between them (transpose, GLU, SiLU) are in ``forward``.
    """

    def __init__(self, dim: int, kernel_size: int = 31):
        super().__init__()
        inner = 2 * dim
        depthwise = nn.ModuleDict(
            {"conv": nn.Conv1d(inner, inner, kernel_size, padding=kernel_size // 2, groups=inner)}
        )
        self.net = nn.ModuleDict(
            {"0": nn.LayerNorm(dim), "2": nn.Conv1d(dim, 2 * inner, 1), "4": depthwise, "6": nn.Conv1d(inner, dim, 1)}
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # x (B, T, C), mask (B, 1, T)
        # The kernel-1 convs run as matmuls on (B, T, C): same weights, about 3x faster than conv1d on CPU.
        expand, project = self.net["2"], self.net["6"]
        h = F.glu(F.linear(self.net["0"](x), expand.weight[..., 0], expand.bias), dim=-1)  # (B, T, 2C)
        h = h.transpose(1, 2) * mask  # (B, 2C, T), padded frames zero as past a real sequence end
        h = F.silu(self.net["4"]["conv"](h)).transpose(1, 2)  # (B, T, 2C)
        return F.linear(h, project.weight[..., 0], project.bias)  # (B, T, C)


class EncoderLayer(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conformer = ConvModule(dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return x + self.conformer(x, mask)


class Encoder(nn.Module):
    def __init__(self, dim: int, num_layers: int):
        super().__init__()
        self.encoder_layers = nn.ModuleList(EncoderLayer(dim) for _ in range(num_layers))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        for layer in self.encoder_layers:
            x = layer(x, mask)
        return x


class FCPE(nn.Module):
    """Log-mel (B, T, num_mels) at 100 Hz -> per-bin pitch activations (B, T, out_dims) in 0..1."""

    def __init__(self, config: FCPEConfig):
        super().__init__()
        self.config = config
        hidden = config.hidden_dims
        self.input_stack = nn.ModuleDict(
            {"0": nn.Conv1d(config.num_mels, hidden, 3, padding=1), "1": MaskedGroupNorm(4, hidden),
             "3": nn.Conv1d(hidden, hidden, 3, padding=1)}
        )  # fmt: skip
        self.net = Encoder(hidden, config.n_layers)
        self.norm = nn.LayerNorm(hidden)
        self.output_proj = legacy_weight_norm(nn.Linear(hidden, config.out_dims))  # torchfcpe's weight_g/weight_v
        # Bin centres in cents above 10 Hz, evenly spaced from f0_min to f0_max; the asset stores them.
        cents = 1200.0 * torch.log2(torch.tensor([config.f0_min, config.f0_max]) / 10.0)
        self.register_buffer("cent_table", torch.linspace(cents[0].item(), cents[1].item(), config.out_dims))

    def forward(self, mel: Tensor, frame_mask: Tensor) -> Tensor:
        mask = frame_mask[:, None, :].to(mel.dtype)  # (B, 1, T)
        x = self.input_stack["0"](mel.transpose(1, 2) * mask)  # (B, hidden, T)
        x = F.leaky_relu(self.input_stack["1"](x, mask)) * mask
        x = self.input_stack["3"](x).transpose(1, 2)  # (B, T, hidden)
        x = self.norm(self.net(x, mask))
        return torch.sigmoid(self.output_proj(x))  # (B, T, out_dims)

    def decode_f0(self, activations: Tensor, threshold: float = THRESHOLD) -> Tensor:
        """Activations (B, T, bins) -> F0 in Hz (B, T), 0 where the peak is at or below ``threshold``.

        "local_argmax": the activation-weighted mean of the cents of the 9 bins around the peak (indices clamped
        at the table's ends, so an edge bin can count twice, as torchfcpe does).
        """
        peak, peak_index = activations.max(dim=-1, keepdim=True)  # (B, T, 1)
        offsets = torch.arange(-LOCAL_ARGMAX_RADIUS, LOCAL_ARGMAX_RADIUS + 1, device=activations.device)
        window = (peak_index + offsets).clamp(0, self.config.out_dims - 1)  # (B, T, 9)
        weights = activations.gather(-1, window)
        cents = (self.cent_table[window] * weights).sum(dim=-1) / weights.sum(dim=-1)  # (B, T)
        f0 = 10.0 * 2 ** (cents / 1200.0)
        return torch.where(peak.squeeze(-1) > threshold, f0, torch.zeros_like(f0))


def interpolate_unvoiced(f0: Tensor, unvoiced: Tensor) -> Tensor:
    """(T,) F0 with unvoiced frames replaced by linear interpolation between the nearest voiced frames
    (held flat before the first and after the last). With no voiced frame at all it is returned unchanged
    (torchfcpe would fail on an empty index there)."""
    voiced_index = torch.nonzero(~unvoiced).squeeze(1)
    if len(voiced_index) == 0:
        return f0
    frames = torch.nonzero(unvoiced).squeeze(1)
    right = torch.searchsorted(voiced_index, frames).clamp(max=len(voiced_index) - 1)
    left = (right - 1).clamp(min=0)
    x_left, x_right = voiced_index[left], voiced_index[right]
    y_left, y_right = f0[x_left], f0[x_right]
    values = y_left + (frames - x_left) * (y_right - y_left) / (x_right - x_left)
    values = torch.where(frames < voiced_index[0], f0[voiced_index[0]], values)
    values = torch.where(frames > voiced_index[-1], f0[voiced_index[-1]], values)
    result = f0.clone()
    result[frames] = values
    return result


class F0Extractor:
    """FCPE with Spirit LM's settings: 16 kHz waveform (S,) -> F0 Hz and voicing, each (S // 80 + 1,) at 200 Hz.

    Steps as torchfcpe's ``infer(decoder_mode="local_argmax", threshold=0.05, f0_min=50, f0_max=1100,
    interp_uv=True, output_interp_target_length=S // 80 + 1, retur_uv=True)``: decode at 100 Hz, mark frames
    below 50 Hz unvoiced, interpolate F0 over them, clamp at 1100 Hz, then nearest-resample both to 200 Hz.
    Voicing is 1 - uv, as Spirit LM inverts it.
    """

    def __init__(self, model: FCPE, device: str = "cpu"):
        self.model = fold_weight_norm(model).to(device=device, dtype=torch.float32).eval()
        self.mel = LogMelSpectrogram(model.config).to(device)
        self._device = torch.device(device)

    @classmethod
    def from_file(cls, path: Path | None = None, device: str = "cpu") -> "F0Extractor":
        """Load the FCPE checkpoint strictly (``weights_only=True``); default: torchfcpe's bundled asset."""
        path = bundled_checkpoint_path() if path is None else path
        checkpoint = read_checkpoint(path)
        require_keys(checkpoint, ["model", "config_dict"], path)
        if not isinstance(checkpoint["model"], dict):
            raise CheckpointError(f"{path}: 'model' must be a state dict")
        model = FCPE(FCPEConfig.from_config_dict(checkpoint["config_dict"], path))
        weights = {
            key: value
            for key, value in checkpoint["model"].items()
            if key not in UNUSED_KEYS
            and not (key.startswith("net.encoder_layers.") and key.endswith(UNUSED_KEY_SUFFIXES))
        }
        load_state_dict_strict(model, weights, path)
        return cls(model, device=device)

    @property
    def min_samples(self) -> int:
        """Shortest waveform accepted: one analysis window."""
        return self.model.config.win_size

    @staticmethod
    def num_frames(num_samples: int) -> int:
        return num_samples // HOP_LENGTH + 1

    def __call__(self, waveforms: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """1-D float waveforms at 16 kHz -> [(f0 Hz (frames,), voicing 0/1 (frames,))], frames = S // 80 + 1."""
        for index, waveform in enumerate(waveforms):
            if waveform.ndim != 1 or len(waveform) < self.min_samples:
                raise BadAudioError(
                    f"waveform {index}: FCPE needs a 1-D waveform of at least {self.min_samples} samples, "
                    f"got shape {tuple(waveform.shape)}"
                )
        if not waveforms:
            return []
        with torch.inference_mode():
            mel, frame_mask = self.mel([waveform.to(self._device, torch.float32) for waveform in waveforms])
            f0_100hz = self.model.decode_f0(self.model(mel, frame_mask)).cpu()  # (B, T)
        results = []
        for row, waveform in enumerate(waveforms):
            f0 = f0_100hz[row, : self.mel.num_frames(len(waveform))]
            unvoiced = f0 < F0_MIN
            f0 = interpolate_unvoiced(f0, unvoiced).clamp(max=F0_MAX)
            size = self.num_frames(len(waveform))
            f0, unvoiced = (
                F.interpolate(track[None, None], size=size, mode="nearest")[0, 0] for track in (f0, unvoiced.float())
            )
            results.append((f0, 1.0 - unvoiced))
        return results
