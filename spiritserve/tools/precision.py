"""`spiritserve check-precision`: how often reduced precision changes the speech units.

The speech encoders run in fp32 unless reduced precision is shown not to change what the LM sees: this
command encodes real clips with every stream of a checkpoint in fp32 and under autocast (bf16 or fp16)
and reports, per stream, the fraction of units that agree. The design rule is to enable a reduced
precision (`SPIRITSERVE_SPEECH_DTYPE`) only where the agreement is at least 99.5 %.
"""

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REQUIRED_AGREEMENT = 0.995
logger = logging.getLogger(__name__)


def unit_agreement(reference: list[list[int]], candidate: list[list[int]]) -> float:
    """Fraction of positions with the same unit; a length difference counts as disagreement."""
    total = sum(max(len(a), len(b)) for a, b in zip(reference, candidate, strict=True))
    same = sum(x == y for a, b in zip(reference, candidate, strict=True) for x, y in zip(a, b, strict=False))
    return same / total if total else 1.0


def stream_agreement(reference: list[Any], candidate: list[Any]) -> dict[str, float]:
    """``unit_agreement`` per stream (hubert, pitch, style) of two lists of SpeechUnits; unused streams left out."""
    return {
        name: unit_agreement([getattr(u, name) for u in reference], [getattr(u, name) for u in candidate])
        for name in ("hubert", "pitch", "style")
        if any(getattr(u, name) for u in reference)
    }


@dataclass
class ClipCheck:
    """What the clip-based checks (check-precision, check-batching) start from."""

    root: Path
    checkpoint: Any  # SpiritCheckpoint
    device: str
    device_name: str
    waveforms: list[Any]  # 16 kHz mono float32


def open_clip_check(args: argparse.Namespace) -> ClipCheck:
    """The checkpoint (the embedded tiny bundle unless --checkpoints), the device and the decoded clips."""
    import platform

    import torch

    from spiritserve.audio import decode_audio
    from spiritserve.checkpoints import embedded_default_root, open_checkpoint
    from spiritserve.tiny import ensure_embedded_default

    root = args.checkpoints or embedded_default_root()
    if args.checkpoints is None:
        ensure_embedded_default(root)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device_name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    waveforms = [decode_audio(path.read_bytes(), max_seconds=600) for path in args.clips]
    return ClipCheck(root, open_checkpoint(root, args.variant), device, device_name, waveforms)


def write_report(report: dict[str, Any], out: Path | None) -> None:
    print(json.dumps(report, indent=2))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")


def add_clip_check_parser(commands: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    """A subcommand taking clips, a checkpoint root, a variant, a device and an output file."""
    parser: argparse.ArgumentParser = commands.add_parser(name, help=help_text)
    parser.add_argument("clips", type=Path, nargs="+", help="speech files (any common format)")
    parser.add_argument("--checkpoints", type=Path, help="checkpoint root (default: the embedded tiny bundle)")
    parser.add_argument("--variant", choices=["base", "expressive"])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    return parser


def _run(args: argparse.Namespace) -> None:
    import torch

    from spiritserve.tokenizers.speech import SpeechTokenizer

    check = open_clip_check(args)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    folders = (check.checkpoint.hubert_dir, check.checkpoint.pitch_dir, check.checkpoint.style_dir)
    reference = SpeechTokenizer.from_dirs(*folders, check.device).encode(check.waveforms)
    reduced = SpeechTokenizer.from_dirs(*folders, check.device, compute_dtype=dtype).encode(check.waveforms)
    agreement = stream_agreement(reference, reduced)
    write_report(
        {
            "checkpoint_root": str(check.root),
            "variant": check.checkpoint.variant,
            "device": check.device,
            "device_name": check.device_name,
            "dtype": args.dtype,
            "clips": [str(path) for path in args.clips],
            "agreement": agreement,
            "required": REQUIRED_AGREEMENT,
            "reduced_precision_allowed": {name: value >= REQUIRED_AGREEMENT for name, value in agreement.items()},
        },
        args.out,
    )


def add_parser(commands: Any) -> None:
    parser = add_clip_check_parser(commands, "check-precision", "unit agreement of bf16/fp16 speech encoders with fp32")
    parser.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    parser.set_defaults(run=_run)
