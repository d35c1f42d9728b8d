"""`spiritserve check-precision`: what each precision does to each speech stage, against exact fp32.

The speech stages run in exact fp32 unless a lower precision is shown not to change what the next stage sees.
For each precision asked (TF32, bf16 or fp16 autocast; spiritserve.numerics) this command encodes real clips
with every stream of a checkpoint and reports, per stream, the fraction of units that agree with fp32; it
vocodes the fp32 units and reports the audio's SNR against the fp32 audio; and it times both stages at every
precision in the same run. The design rule: a lower precision for the speech tokenizer
(`SPIRITSERVE_SPEECH_DTYPE`) only where every stream agrees at least 99.5 %; for the vocoder
(`SPIRITSERVE_VOCODER_DTYPE`) only at an SNR of at least 30 dB (our threshold: well below audibility
differences between the two, and still above what the random tiny weights can be expected to show).
"""

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spiritserve.numerics import PRECISIONS, Precision

REQUIRED_AGREEMENT = 0.995
REQUIRED_SNR_DB = 30.0
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


def snr_db(reference: list[Any], candidate: list[Any]) -> float:
    """Signal-to-noise ratio of `candidate` audio against `reference`, over all clips (lengths must match)."""
    import numpy as np

    signal = sum(float(np.sum(np.square(a, dtype=np.float64))) for a in reference)
    noise = sum(float(np.sum(np.square(a - b, dtype=np.float64))) for a, b in zip(reference, candidate, strict=True))
    if noise == 0.0:
        return float("inf")
    return 10.0 * math.log10(signal / noise) if signal else float("-inf")


def _run(args: argparse.Namespace) -> None:
    import torch

    from spiritserve.tokenizers.speech import SpeechTokenizer
    from spiritserve.vocoder.base import UnitVocoder, VocodeRequest

    check = open_clip_check(args)
    folders = (check.checkpoint.hubert_dir, check.checkpoint.pitch_dir, check.checkpoint.style_dir)
    tokenizer = SpeechTokenizer.from_dirs(*folders, check.device)
    vocoder = UnitVocoder.from_dir(check.checkpoint.vocoder_dir, check.device)

    def timed(run: Any) -> tuple[Any, float]:
        started = time.perf_counter()
        result = run()
        if check.device == "cuda":
            torch.cuda.synchronize()
        return result, time.perf_counter() - started

    def tokenize(precision: Precision) -> tuple[list[Any], float]:
        tokenizer.precision = precision
        return timed(lambda: tokenizer.encode(check.waveforms))

    def vocode(precision: Precision, units: list[Any]) -> tuple[list[Any], float]:
        vocoder.precision = precision
        requests = [  # raw 25 Hz units (and raw pitch / style streams on the expressive vocoder): resynthesis
            VocodeRequest(u.hubert, predict_durations=False, pitch=u.pitch or None, style_units=u.style or None)
            for u in units
        ]
        outputs, seconds = timed(lambda: vocoder.decode_batch(requests))
        return [output.audio for output in outputs], seconds

    def warm(precision: Precision) -> list[Any]:
        """A first call at each precision pays for allocations and kernel choice; it is not timed."""
        units, _ = tokenize(precision)
        vocode(precision, units)
        return units

    warm("float32")
    reference_units, reference_tokenize_s = tokenize("float32")
    reference_audio, reference_vocode_s = vocode("float32", reference_units)
    stages: dict[str, Any] = {"float32": {"tokenize_s": reference_tokenize_s, "vocode_s": reference_vocode_s}}
    for precision in args.precisions:
        warm(precision)
        units, tokenize_s = tokenize(precision)
        audio, vocode_s = vocode(precision, reference_units)
        agreement = stream_agreement(reference_units, units)
        snr = snr_db(reference_audio, audio)
        stages[precision] = {
            "tokenize_s": tokenize_s,
            "vocode_s": vocode_s,
            "agreement": agreement,
            "vocoder_snr_db": snr,
            "speech_tokenizer_allowed": all(value >= REQUIRED_AGREEMENT for value in agreement.values()),
            "vocoder_allowed": snr >= REQUIRED_SNR_DB,
        }
    write_report(
        {
            "checkpoint_root": str(check.root),
            "variant": check.checkpoint.variant,
            "device": check.device,
            "device_name": check.device_name,
            "clips": [str(path) for path in args.clips],
            "required_agreement": REQUIRED_AGREEMENT,
            "required_snr_db": REQUIRED_SNR_DB,
            "tf32_note": None if check.device == "cuda" else "no TF32 on CPU: tf32 computes what float32 does",
            "precisions": stages,
        },
        args.out,
    )


def _precision_list(text: str) -> list[Precision]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PRECISIONS or name == "float32"]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from tf32, bfloat16, float16 (comma-separated), not {text!r}")
    return [name for name in PRECISIONS if name in names]


def add_parser(commands: Any) -> None:
    parser = add_clip_check_parser(
        commands, "check-precision", "unit agreement, vocoder SNR and speed of each precision against exact fp32"
    )
    parser.add_argument("--precisions", type=_precision_list, default=["tf32", "bfloat16"],
                        help="comma-separated, from tf32, bfloat16, float16 (default tf32,bfloat16)")  # fmt: skip
    parser.set_defaults(run=_run)
