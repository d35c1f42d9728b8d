"""Pitch tokenizer (expressive only): 16 kHz mono audio -> Spirit LM's 12.5 Hz pitch units (0..63), not deduplicated.

FCPE F0 + voicing at 200 Hz (``fcpe.py``) -> optional per-utterance mean removal (``config.yaml``) -> the
Jukebox-style VQ-VAE encoder of ``speech_tokenizer/vqvae_f0_quantizer`` (16x down) -> nearest codeword. Audio
is cut into 100 s chunks like the other tokenizers and each chunk is one utterance. FCPE runs on padded batches
of chunks; the VQ-VAE (~0.2M parameters) runs one chunk at a time, so no padding can reach its convolutions.
"""

import importlib
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from spiritserve.errors import CheckpointError
from spiritserve.tokenizers.chunking import MAX_CHUNK_SAMPLES, ChunkedEncoder
from spiritserve.tokenizers.fcpe import F0Extractor
from spiritserve.weights import check_unknown_keys, load_state_dict_strict, require_keys

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.pt"
FEATURES = ("f0_interp,vuv", "f0,vuv", "norm_f0_interp,vuv", "norm_f0,vuv")  # the reference asserts one of these

# Keys of speech-resynthesis' Encoder/Decoder kwargs. zero_out only sets the initialisation; the reference
# passes reverse_decoder_dilation to the encoder too and drops it there; checkpoint_res is decoder-only.
CONV_STACK_KEYS = {
    "input_emb_width", "output_emb_width", "levels", "downs_t", "strides_t", "width", "depth", "m_conv",
    "dilation_growth_rate", "dilation_cycle", "zero_out", "res_scale", "reverse_decoder_dilation",
}  # fmt: skip
VQ_KEYS = {"l_bins", "emb_width", "mu", "levels"}  # mu: training-time codebook EMA only
TOP_LEVEL_KEYS = {"encoder_params", "vq_params", "decoder_params", "features", "speaker_norm", "speaker_stats"}


@dataclass(frozen=True)
class ConvStackConfig:
    """One level of ``encoder_params`` / ``decoder_params`` (Spirit LM uses one level)."""

    input_emb_width: int  # 2: F0 and voicing
    output_emb_width: int  # latent width (= vq emb_width)
    down_t: int  # stride-2 conv blocks (downs_t[0]); 4 gives 16x
    stride_t: int
    width: int
    depth: int  # residual blocks after each strided conv
    m_conv: float = 1.0
    dilation_growth_rate: int = 1
    dilation_cycle: int | None = None
    res_scale: bool = False
    reverse_decoder_dilation: bool = False

    @classmethod
    def from_params(cls, params: Any, name: str, source: Path) -> "ConvStackConfig":
        if not isinstance(params, dict):
            raise CheckpointError(f"{source}: {name} must be a mapping, found {type(params).__name__}")
        check_unknown_keys(
            params, CONV_STACK_KEYS | ({"checkpoint_res"} if name == "decoder_params" else set()), source, name
        )
        if params.get("checkpoint_res"):
            raise CheckpointError(f"{source}: {name}.checkpoint_res is not supported (the reference raises on it too)")
        if params.get("levels") != 1:
            raise CheckpointError(f"{source}: {name}.levels must be 1, found {params.get('levels')!r}")
        per_level = {}
        for key in ("downs_t", "strides_t"):
            value = params.get(key)
            if not (isinstance(value, list) and len(value) == 1 and _is_int(value[0]) and value[0] > 0):
                raise CheckpointError(
                    f"{source}: {name}.{key} must be a one-element list of a positive int, found {value!r}"
                )
            per_level[key] = value[0]
        for key in ("input_emb_width", "output_emb_width", "width", "depth"):
            if not _is_int(params.get(key)) or params[key] < 1:
                raise CheckpointError(f"{source}: {name}.{key} must be a positive int, found {params.get(key)!r}")
        optional = {
            "m_conv": params.get("m_conv", 1.0),
            "dilation_growth_rate": params.get("dilation_growth_rate", 1),
            "dilation_cycle": params.get("dilation_cycle"),
            "res_scale": params.get("res_scale", False),
            "reverse_decoder_dilation": params.get("reverse_decoder_dilation", False),
        }
        valid = {
            "m_conv": type(optional["m_conv"]) in (int, float) and optional["m_conv"] > 0,
            "dilation_growth_rate": _is_int(optional["dilation_growth_rate"]) and optional["dilation_growth_rate"] > 0,
            "dilation_cycle": optional["dilation_cycle"] is None
            or (_is_int(optional["dilation_cycle"]) and optional["dilation_cycle"] > 0),
            "res_scale": isinstance(optional["res_scale"], bool),
            "reverse_decoder_dilation": isinstance(optional["reverse_decoder_dilation"], bool),
        }
        for key, ok in valid.items():
            if not ok:
                raise CheckpointError(f"{source}: {name}.{key} has an invalid value {optional[key]!r}")
        return cls(
            input_emb_width=params["input_emb_width"], output_emb_width=params["output_emb_width"],
            down_t=per_level["downs_t"], stride_t=per_level["strides_t"], width=params["width"],
            depth=params["depth"], **optional,
        )  # fmt: skip

    @property
    def filter_size(self) -> int:
        return 2 * self.stride_t

    @property
    def padding(self) -> int:
        return self.stride_t // 2

    def dilation(self, block: int) -> int:
        return self.dilation_growth_rate ** (block if self.dilation_cycle is None else block % self.dilation_cycle)


@dataclass(frozen=True)
class VQVAEConfig:
    encoder: ConvStackConfig
    decoder: ConvStackConfig
    codebook_size: int  # vq_params.l_bins (64)
    emb_width: int
    features: str
    speaker_norm: bool = False

    @classmethod
    def from_yaml(cls, path: Path) -> "VQVAEConfig":
        """Parse ``config.yaml`` (plain YAML; OmegaConf interpolation is not used by the format)."""
        if not path.is_file():
            raise CheckpointError(f"config file not found: {path}")
        try:
            config = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise CheckpointError(f"cannot parse {path}: {exc}") from exc
        if not isinstance(config, dict):
            raise CheckpointError(f"{path}: expected a mapping at the top level, found {type(config).__name__}")
        check_unknown_keys(config, TOP_LEVEL_KEYS, path)
        require_keys(config, ["encoder_params", "vq_params", "decoder_params", "features"], path)
        if config["features"] not in FEATURES:
            raise CheckpointError(f"{path}: features {config['features']!r} is not one of {list(FEATURES)}")
        speaker_norm = config.get("speaker_norm", False)
        if not isinstance(speaker_norm, bool):
            raise CheckpointError(f"{path}: speaker_norm must be a bool, found {speaker_norm!r}")
        # speaker_stats names a per-speaker F0 mean file. The reference only reads it for a named speaker, which
        # its tokenizer never passes (and no such file ships), so it always uses the utterance mean: accepted, unused.
        if not isinstance(config.get("speaker_stats"), (str, type(None))):
            raise CheckpointError(f"{path}: speaker_stats must be a path or null, found {config['speaker_stats']!r}")

        vq = config["vq_params"]
        if not isinstance(vq, dict):
            raise CheckpointError(f"{path}: vq_params must be a mapping, found {type(vq).__name__}")
        check_unknown_keys(vq, VQ_KEYS, path, "vq_params")
        if vq.get("levels") != 1:
            raise CheckpointError(f"{path}: vq_params.levels must be 1, found {vq.get('levels')!r}")
        for key in ("l_bins", "emb_width"):
            if not _is_int(vq.get(key)) or vq[key] < 1:
                raise CheckpointError(f"{path}: vq_params.{key} must be a positive int, found {vq.get(key)!r}")
        encoder = ConvStackConfig.from_params(config["encoder_params"], "encoder_params", path)
        decoder = ConvStackConfig.from_params(config["decoder_params"], "decoder_params", path)
        if encoder.input_emb_width != 2:
            raise CheckpointError(f"{path}: encoder_params.input_emb_width must be 2 (F0, voicing)")
        if encoder.output_emb_width != vq["emb_width"] or decoder.output_emb_width != vq["emb_width"]:
            raise CheckpointError(
                f"{path}: encoder/decoder output_emb_width ({encoder.output_emb_width}, {decoder.output_emb_width}) "
                f"must equal vq_params.emb_width {vq['emb_width']}"
            )
        return cls(
            encoder=encoder, decoder=decoder, codebook_size=vq["l_bins"], emb_width=vq["emb_width"],
            features=config["features"], speaker_norm=speaker_norm,
        )  # fmt: skip

    @property
    def normalize_f0(self) -> bool:
        """Subtract the utterance's mean voiced F0, as the reference does for ``norm_*`` features or speaker_norm."""
        return self.speaker_norm or "norm_" in self.features

    @property
    def downsampling(self) -> int:
        """F0 frames per code: 16 (200 Hz -> 12.5 Hz)."""
        return self.encoder.stride_t**self.encoder.down_t


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class ResConv1DBlock(nn.Module):
    """x + scale * conv1(relu(conv3_dilated(relu(x))))."""

    def __init__(self, width: int, state: int, dilation: int, res_scale: float):
        super().__init__()
        self.model = nn.Sequential(
            nn.ReLU(), nn.Conv1d(width, state, 3, 1, dilation, dilation), nn.ReLU(), nn.Conv1d(state, width, 1)
        )
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.res_scale * self.model(x)


class Resnet1D(nn.Module):
    def __init__(self, config: ConvStackConfig, reverse_dilation: bool = False):
        super().__init__()
        res_scale = 1.0 / config.depth**0.5 if config.res_scale else 1.0
        blocks = [
            ResConv1DBlock(config.width, int(config.m_conv * config.width), config.dilation(block), res_scale)
            for block in range(config.depth)
        ]
        self.model = nn.Sequential(*(reversed(blocks) if reverse_dilation else blocks))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class EncoderConvBlock(nn.Module):
    """(B, input_emb_width, T) -> (B, output_emb_width, T // stride**down): [strided conv, Resnet1D] x down, conv3."""

    def __init__(self, config: ConvStackConfig):
        super().__init__()
        blocks: list[nn.Module] = [
            nn.Sequential(
                nn.Conv1d(
                    config.input_emb_width if block == 0 else config.width,
                    config.width,
                    config.filter_size,
                    config.stride_t,
                    config.padding,
                ),
                Resnet1D(config),
            )  # fmt: skip
            for block in range(config.down_t)
        ]
        blocks.append(nn.Conv1d(config.width, config.output_emb_width, 3, 1, 1))
        self.model = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class DecoderConvBlock(nn.Module):
    """(B, emb, T') -> (B, emb, T' * stride**down): conv3, [Resnet1D, transposed conv] x down."""

    def __init__(self, config: ConvStackConfig):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv1d(config.output_emb_width, config.width, 3, 1, 1)]
        for block in range(config.down_t):
            out_width = config.output_emb_width if block == config.down_t - 1 else config.width
            blocks.append(
                nn.Sequential(
                    Resnet1D(config, reverse_dilation=config.reverse_decoder_dilation),
                    nn.ConvTranspose1d(config.width, out_width, config.filter_size, config.stride_t, config.padding),
                )
            )
        self.model = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class Encoder(nn.Module):
    def __init__(self, config: ConvStackConfig):
        super().__init__()
        self.level_blocks = nn.ModuleList([EncoderConvBlock(config)])

    def forward(self, x: Tensor) -> Tensor:
        return self.level_blocks[0](x)


class Decoder(nn.Module):
    def __init__(self, config: ConvStackConfig):
        super().__init__()
        self.level_blocks = nn.ModuleList([DecoderConvBlock(config)])
        self.out = nn.Conv1d(config.output_emb_width, config.input_emb_width, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.level_blocks[0](x))


class BottleneckBlock(nn.Module):
    def __init__(self, codebook_size: int, emb_width: int):
        super().__init__()
        self.register_buffer("k", torch.zeros(codebook_size, emb_width))  # the codebook, one row per code

    def quantise(self, latents: Tensor) -> Tensor:
        """(N, emb) -> nearest code (N,) by squared L2, expanded as |x|^2 - 2 x.k + |k|^2 like the reference."""
        distance = latents.pow(2).sum(-1, keepdim=True) - 2 * latents @ self.k.T + self.k.pow(2).sum(-1)[None]
        return distance.argmin(dim=-1)


class Bottleneck(nn.Module):
    def __init__(self, codebook_size: int, emb_width: int):
        super().__init__()
        self.level_blocks = nn.ModuleList([BottleneckBlock(codebook_size, emb_width)])


class VQVAE(nn.Module):
    """The official ``model.pt`` ``model`` state dict (keys ``encoder.*``, ``vq.level_blocks.0.k``, ``decoder.*``).

    Tokenising needs only the encoder and codebook. The decoder is built too so that its keys load strictly
    (shapes checked) rather than being dropped unseen, and ``decode`` gives the F0/voicing reconstruction.
    """

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.encoder)
        self.vq = Bottleneck(config.codebook_size, config.emb_width)
        self.decoder = Decoder(config.decoder)

    def encode(self, features: Tensor) -> Tensor:
        """(B, 2, T) F0 and voicing at 200 Hz -> codes (B, T // 16)."""
        latents = self.encoder(features)  # (B, emb, T // 16)
        batch, width, frames = latents.shape
        codes = self.vq.level_blocks[0].quantise(latents.transpose(1, 2).reshape(-1, width))  # (B * T', )
        return codes.view(batch, frames)

    def decode(self, codes: Tensor) -> Tensor:
        """Codes (B, T') -> reconstructed (B, 2, T' * 16) F0 and voicing."""
        latents = F.embedding(codes, self.vq.level_blocks[0].k).transpose(1, 2)  # (B, emb, T')
        return self.decoder(latents)


def vqvae_input(f0: Tensor, voicing: Tensor, normalize: bool) -> Tensor:
    """F0 Hz and voicing (T,) -> the VQ-VAE input (2, T).

    With ``normalize`` the mean F0 of voiced frames is subtracted from every non-zero F0 (zeros stay zero). An
    utterance with no voiced frame is left as is (the reference would turn it into NaNs).
    """
    if normalize:
        voiced = voicing != 0
        if voiced.any():
            f0 = torch.where(f0 != 0, f0 - f0[voiced].mean(), f0)
    return torch.stack([f0, voicing])


# What a training pickle of ``model.pt`` may hold besides tensors, allowed by name: the training config as
# OmegaConf (its containers, nodes and metadata, which name ``typing.Any`` and builtin types) or as an argparse
# Namespace, and the builtin containers these use. Unpickling them rebuilds plain data; nothing else is allowed.
# Which of these the official file holds is not known for sure (no copy here to read): these are what an OmegaConf
# (the reference's config library) or argparse training run pickles next to its weights.
SAFE_PICKLE_GLOBALS = (
    "builtins.dict", "builtins.list", "builtins.int", "collections.defaultdict", "typing.Any", "argparse.Namespace",
    "omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig", "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata", "omegaconf.nodes.AnyNode",
)  # fmt: skip
RESAVE_AS_WEIGHTS = (
    "python -c \"import torch; torch.save({'model': torch.load('model.pt', weights_only=False)['model']}, 'model.pt')\""
)


def _safe_pickle_globals() -> dict[str, Any]:
    """The allowed classes that can be imported here, by name (omegaconf's only where omegaconf is installed)."""
    found = {}
    for name in SAFE_PICKLE_GLOBALS:
        module, _, attribute = name.rpartition(".")
        try:
            found[name] = getattr(importlib.import_module(module), attribute)
        except ImportError:
            continue
    return found


def _refusal(path: Path, error: Exception) -> str:
    """Why a safe load refused ``path``, naming the classes it holds that are not allowed (or not importable)."""
    try:
        held = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: torch's own message names the first refused class
        held = []
    importable = _safe_pickle_globals()
    refused = [name for name in held if name not in importable]
    if not refused:
        return f"cannot read checkpoint {path}: {error}"
    if all(name in SAFE_PICKLE_GLOBALS for name in refused):  # allowed, but omegaconf is not installed
        return (
            f"{path} holds {', '.join(refused)}: these load safely only with the omegaconf package, which is not "
            f"installed. Install omegaconf, or re-save the file as weights only (once, where you trust it): "
            f"{RESAVE_AS_WEIGHTS}"
        )
    return (
        f"{path} holds {', '.join(name for name in refused if name not in SAFE_PICKLE_GLOBALS)}, which a safe "
        f"load refuses (unpickling it could run code); re-save the file as weights only (once, where you trust "
        f"it): {RESAVE_AS_WEIGHTS}"
    )


def read_vqvae_checkpoint(path: Path) -> Any:
    """Read ``model.pt`` without executing pickled code: ``torch.load(weights_only=True)``, which besides tensors
    allows only ``SAFE_PICKLE_GLOBALS``.

    The official file is a full training pickle that the reference loads with ``weights_only=False`` (our
    compatibility notes record it needs that); the classes beyond tensors it needs are allowed by name, and
    any other class is refused with a CheckpointError naming the file and the class. ``from_dir`` keeps only
    the ``model`` state dict.
    """
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        with torch.serialization.safe_globals(list(_safe_pickle_globals().values())):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(_refusal(path, exc)) from exc
    except Exception as exc:  # torch raises several unrelated types for corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc


class PitchTokenizer(ChunkedEncoder):
    """FCPE + VQ-VAE in fp32 on one device: 12.5 Hz units. ``encode`` is synchronous; call it from a worker
    thread."""

    def __init__(
        self, f0_extractor: F0Extractor, vqvae: VQVAE, device: str = "cpu", max_batch_samples: int = MAX_CHUNK_SAMPLES
    ):
        super().__init__(device, max_batch_samples)  # the bound applies to FCPE's padded forwards
        self.f0_extractor = f0_extractor
        self.vqvae = vqvae.to(device=device, dtype=torch.float32).eval()

    @classmethod
    def from_dir(cls, vqvae_dir: Path, device: str = "cpu", fcpe_path: Path | None = None) -> "PitchTokenizer":
        """Load ``config.yaml`` + ``model.pt`` (``speech_tokenizer/vqvae_f0_quantizer``) strictly, and FCPE
        (default: torchfcpe's bundled weights)."""
        config = VQVAEConfig.from_yaml(vqvae_dir / CONFIG_FILE)
        model_path = vqvae_dir / MODEL_FILE
        checkpoint = read_vqvae_checkpoint(model_path)
        require_keys(checkpoint, ["model"], model_path)
        if not isinstance(checkpoint["model"], dict):
            raise CheckpointError(f"{model_path}: 'model' must be a state dict")
        vqvae = VQVAE(config)
        load_state_dict_strict(vqvae, checkpoint["model"], model_path)
        return cls(F0Extractor.from_file(fcpe_path, device=device), vqvae, device=device)

    @property
    def codebook_size(self) -> int:
        return self.vqvae.config.codebook_size

    def encode_batch(self, chunks: list[np.ndarray]) -> list[list[int]]:
        """Chunks -> pitch units per chunk: FCPE in one padded forward, then the VQ-VAE one chunk at a time."""
        tracks = self.f0_extractor([torch.tensor(chunk) for chunk in chunks])  # copies: chunks may be read-only
        units = []
        for f0, voicing in tracks:  # (F0, voicing) at 200 Hz
            features = vqvae_input(f0, voicing, self.vqvae.config.normalize_f0)  # (2, T)
            units.append(self.vqvae.encode(features[None].to(self.device))[0].tolist())  # (1, T // 16)
        return units
