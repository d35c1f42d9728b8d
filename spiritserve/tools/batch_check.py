"""`spiritserve check-batching`: on a given device, batched speech stages give what one-by-one runs give.

The tests prove it on CPU with tiny weights; this command repeats the proof wherever the service will run
(a GPU, the official checkpoints), because kernels chosen per batch shape may round differently there:
- the speech tokenizer encodes the clips all together and each alone: unit agreement per stream (1.0 means
  identical);
- the vocoder decodes the clips' units with ``decode_batch`` and each with ``UnitVocoder.decode``, and
  streams them concurrently through ``vocode_streams``, a few units per step: the largest sample difference.
Exits non-zero when units differ or audio differs by more than ``--audio-tolerance``.
"""

import argparse
import logging
import time
from typing import Any

from spiritserve.tools.precision import add_clip_check_parser, open_clip_check, stream_agreement, write_report

logger = logging.getLogger(__name__)

DEFAULT_AUDIO_TOLERANCE = 1e-4  # fp32; the tests see < 1e-5 on CPU
STREAM_STEP_UNITS = 3  # units fed per stream per step, as a few engine steps would


def _run(args: argparse.Namespace) -> None:
    import numpy as np

    from spiritserve.tokenizers.speech import SpeechTokenizer
    from spiritserve.vocoder.base import UnitVocoder, VocodeRequest

    check = open_clip_check(args)
    checkpoint, device, waveforms = check.checkpoint, check.device, check.waveforms
    tokenizer = SpeechTokenizer.from_dirs(checkpoint.hubert_dir, checkpoint.pitch_dir, checkpoint.style_dir, device)
    started = time.perf_counter()
    together = tokenizer.encode(waveforms)
    alone = [tokenizer.encode([waveform])[0] for waveform in waveforms]
    agreement = stream_agreement(alone, together)
    tokenize_s = time.perf_counter() - started

    vocoder = UnitVocoder.from_dir(checkpoint.vocoder_dir, device)
    # expressive: one pitch and style unit per HuBERT unit, as parse-back gives them (raw streams repeated to
    # length); the base variant's units have no pitch or style, so they stay None
    config = vocoder.model.config
    requests = [
        VocodeRequest(
            u.hubert,
            vocoder.default_speaker,
            pitch=_per_unit(u.pitch, config.hubert_to_f0, len(u.hubert)),
            style_units=_per_unit(u.style, config.hubert_to_style, len(u.hubert)),
        )
        for u in alone
    ]
    started = time.perf_counter()
    offline = [vocoder.decode(request) for request in requests]
    batched = vocoder.decode_batch(requests)
    streamed = _stream_all(vocoder, requests)
    vocode_s = time.perf_counter() - started

    def max_difference(candidates: list[Any]) -> float:
        """Largest sample difference from the one-by-one decode over all clips; a length mismatch is inf."""
        return max(
            (
                float(np.abs(a.audio - b).max(initial=0.0)) if len(a.audio) == len(b) else float("inf")
                for a, b in zip(offline, candidates, strict=True)
            ),
            default=0.0,
        )

    report = {
        "checkpoint_root": str(check.root),
        "variant": checkpoint.variant,
        "device": device,
        "device_name": check.device_name,
        "clips": [str(path) for path in args.clips],
        "unit_agreement_batched_vs_alone": agreement,
        "vocoder_max_abs_difference": {
            "decode_batch_vs_decode": max_difference([output.audio for output in batched]),
            "concurrent_streams_vs_decode": max_difference(streamed),
        },
        "audio_tolerance": args.audio_tolerance,
        "seconds": {"tokenize": tokenize_s, "vocode": vocode_s},
    }
    write_report(report, args.out)
    differences = report["vocoder_max_abs_difference"].values()
    if any(value != 1.0 for value in agreement.values()) or any(d > args.audio_tolerance for d in differences):
        raise SystemExit("batched results differ from one-by-one results; see the report")


def _per_unit(values: list[int], ratio: int, length: int) -> list[int] | None:
    """A raw pitch (12.5 Hz) or style (1 Hz) stream at the 25 Hz unit rate, as resynthesis brings it."""
    import torch

    from spiritserve.vocoder.hifigan import repeat_to_length

    return repeat_to_length(torch.tensor([values]), ratio, length)[0].tolist() if values else None


def _stream_all(vocoder: Any, requests: list[Any]) -> list[Any]:
    """All requests streamed at once, STREAM_STEP_UNITS units per stream per step, due chunks batched."""
    import numpy as np

    from spiritserve.vocoder.streaming import StreamFeed, vocode_in_lockstep

    decoders = [vocoder.open_stream(request.speaker) for request in requests]
    feeds = [StreamFeed(r.units, r.pitch, r.style_units, step_units=STREAM_STEP_UNITS) for r in requests]
    return [np.concatenate(pieces) for pieces in vocode_in_lockstep(decoders, feeds)]


def add_parser(commands: Any) -> None:
    parser = add_clip_check_parser(commands, "check-batching", "batched speech stages vs one by one, on any device")
    parser.add_argument("--audio-tolerance", type=float, default=DEFAULT_AUDIO_TOLERANCE)
    parser.set_defaults(run=_run)
