"""`spiritserve check-precision`: how often reduced precision changes the speech units.

The speech encoders run in fp32 unless reduced precision is shown not to change what the LM sees: this
command encodes real clips with every stream of a checkpoint in fp32 and under autocast (bf16 or fp16)
and reports, per stream, the fraction of units that agree. The design rule is to enable a reduced
precision (`SPIRITSERVE_SPEECH_DTYPE`) only where the agreement is at least 99.5 %.
"""

import argparse
import json
import logging
import platform
from pathlib import Path

REQUIRED_AGREEMENT = 0.995
logger = logging.getLogger(__name__)


def unit_agreement(reference: list[list[int]], candidate: list[list[int]]) -> float:
    """Fraction of positions with the same unit; a length difference counts as disagreement."""
    total = sum(max(len(a), len(b)) for a, b in zip(reference, candidate, strict=True))
    same = sum(x == y for a, b in zip(reference, candidate, strict=True) for x, y in zip(a, b, strict=False))
    return same / total if total else 1.0


def _run(args: argparse.Namespace) -> None:
    import torch

    from spiritserve.checkpoints import embedded_default_root, ensure_embedded_default, open_checkpoint
    from spiritserve.server.audio_io import decode_audio
    from spiritserve.tokenizers.speech import SpeechTokenizer

    root = args.checkpoints or embedded_default_root()
    if args.checkpoints is None:
        ensure_embedded_default(root)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    checkpoint = open_checkpoint(root, args.variant)
    waveforms = [decode_audio(path.read_bytes(), max_seconds=600) for path in args.clips]
    reference = SpeechTokenizer.from_checkpoint(checkpoint, device).encode(waveforms)
    reduced = SpeechTokenizer.from_checkpoint(checkpoint, device, compute_dtype=dtype).encode(waveforms)
    agreement = {
        name: unit_agreement([getattr(u, name) for u in reference], [getattr(u, name) for u in reduced])
        for name in ("hubert", "pitch", "style")
        if any(getattr(u, name) for u in reference)
    }
    report = {
        "checkpoint_root": str(root),
        "variant": checkpoint.variant,
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "dtype": args.dtype,
        "clips": [str(path) for path in args.clips],
        "agreement": agreement,
        "required": REQUIRED_AGREEMENT,
        "reduced_precision_allowed": {name: value >= REQUIRED_AGREEMENT for name, value in agreement.items()},
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


def add_parser(commands) -> None:
    parser = commands.add_parser("check-precision", help="unit agreement of bf16/fp16 speech encoders with fp32")
    parser.add_argument("clips", type=Path, nargs="+", help="speech files (any common format)")
    parser.add_argument("--checkpoints", type=Path, help="checkpoint root (default: the embedded tiny bundle)")
    parser.add_argument("--variant", choices=["base", "expressive"])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.set_defaults(run=_run)
