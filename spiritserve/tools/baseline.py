"""The official code's way of serving, rebuilt small, as the load benchmark's baseline (issue #15).

The reference answers one request at a time: every stage unbatched and in fp32, Hugging Face transformers'
``generate`` for the LM with the output modality enforced by ``bad_words_ids`` (one single-id list per banned
id), and no streaming: the answer exists once the whole waveform is vocoded. ``run_baseline`` serves speech
continuation that way, sequentially, with the project's own stages and prompt functions (so the tokens the LM
sees are the server's) and only the LM call swapped for transformers.

Two deliberate departures from the reference, both so that the baseline does the same work as spiritserve:

- banned ids are the complement of the project's allowed speech ids, not the reference's list (ids
  0..32001): the quantizer's blank ``[Hu500]`` and the LM's padding rows are banned too (the reference
  crashes in the vocoder or the decoder when it samples them; spiritlm-compat.md §16.1a);
- EOS is banned for real. The reference lists EOS among its bad words, but transformers drops EOS from
  ``bad_words_ids`` whenever the generation config has an ``eos_token_id`` (the checkpoint's configs set one,
  and transformers 4.4x+ fills it in even when a ``GenerationConfig`` is passed), so the reference's speech
  output can in fact end early. Here EOS is also passed as ``suppress_tokens``: every request generates
  exactly ``max_new_tokens``, as spiritserve's speech answers do.

Bench tooling only: the server never imports this module. Models are loaded once, before the timed run, and
one untimed request warms them up. torch and transformers are imported only when the baseline runs.
"""

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from spiritserve.tools.load import percentiles

STAGES = ("tokenize", "generate", "vocode")
MAX_CLIP_SECONDS = 600


@dataclass
class BaselineResult:
    requests: int
    wall_s: float  # whole sequential run
    audio_s: float  # seconds of audio produced, summed
    generated_tokens: int  # summed
    latencies_s: list[float]  # per request, clip in -> whole WAV out (= time to first audio: no streaming)
    stage_s: dict[str, float]  # summed seconds per stage: "tokenize", "generate", "vocode"
    last_generated_ids: list[int] = field(default_factory=list)  # the last request's generated ids, for checks

    def to_dict(self) -> dict[str, Any]:
        """The measurements and what follows from them: audio seconds per wall second, generated tokens per
        second, latency percentiles (linear interpolation between the closest ranks)."""
        return {
            "requests": self.requests,
            "wall_s": round(self.wall_s, 4),
            "audio_s": round(self.audio_s, 4),
            "generated_tokens": self.generated_tokens,
            "audio_per_wall_s": round(self.audio_s / self.wall_s, 4) if self.wall_s else None,
            "tokens_per_s": round(self.generated_tokens / self.wall_s, 2) if self.wall_s else None,
            "latencies_s": [round(latency, 4) for latency in self.latencies_s],
            "latency_s": percentiles(self.latencies_s),
            "stage_s": {stage: round(seconds, 4) for stage, seconds in self.stage_s.items()},
        }


@dataclass
class _Served:
    """One request's outcome."""

    generated_ids: list[int]
    audio_s: float
    wav: bytes
    stage_s: dict[str, float]


class _ReferenceStyleServer:
    """The stages loaded once, in fp32 on one device; ``serve`` answers one speech continuation at a time."""

    def __init__(self, checkpoint_root: Path, variant: str | None, device: str) -> None:
        import torch
        from transformers import LlamaForCausalLM

        from spiritserve.checkpoints import Variant, open_checkpoint
        from spiritserve.engine.modality import allowed_token_ids
        from spiritserve.engine.tokenizer import SpiritTextTokenizer
        from spiritserve.tokenizers.speech import SpeechTokenizer
        from spiritserve.tokens import OutputModality, UnitKind
        from spiritserve.vocoder.base import UnitVocoder

        if variant not in (None, "base", "expressive"):
            raise ValueError(f"variant must be 'base' or 'expressive', not {variant!r}")
        checkpoint = open_checkpoint(checkpoint_root, cast("Variant | None", variant))
        self.device = torch.device(device)
        self.expressive = checkpoint.variant == "expressive"
        self.tokenizer = SpiritTextTokenizer(checkpoint.language_model.tokenizer_path)
        self.speech_tokenizer = SpeechTokenizer.from_dirs(
            checkpoint.hubert_dir, checkpoint.pitch_dir, checkpoint.style_dir, device, precision="float32"
        )
        self.vocoder = UnitVocoder.from_dir(checkpoint.vocoder_dir, device)
        # transformers 5 spells the reference's torch_dtype= as dtype=.
        self.model = LlamaForCausalLM.from_pretrained(checkpoint.language_model.path, dtype=torch.float32)
        self.model.to(self.device).eval()
        vocoder_sizes: dict[UnitKind, int] = {
            "Hu": self.vocoder.num_units,
            "Pi": self.vocoder.num_pitch_units,
            "St": self.vocoder.num_style_units,
        }
        self.allowed_ids = allowed_token_ids(self.tokenizer, OutputModality.SPEECH, vocoder_sizes)
        allowed = set(self.allowed_ids)
        vocab_size = self.model.get_output_embeddings().weight.shape[0]  # logit rows, padding rows included
        self.bad_words_ids = [[token_id] for token_id in range(vocab_size) if token_id not in allowed]

    def serve(self, clip: bytes, max_new_tokens: int, temperature: float, top_p: float, seed: int) -> _Served:
        """Speech continuation of an encoded clip, stage after stage, timed per stage."""
        import torch

        from spiritserve.audio import decode_audio, encode_wav
        from spiritserve.engine.engine import DEFAULT_TOP_K
        from spiritserve.tokens import Modality, OutputModality, PromptSegment, Unit, align_units, build_prompt
        from spiritserve.vocoder.base import VocodeRequest

        stage_s: dict[str, float] = {}
        started = time.perf_counter()
        audio = decode_audio(clip, MAX_CLIP_SECONDS)  # decoded, resampled per channel to 16 kHz, mixed
        units = self.speech_tokenizer.encode([audio])[0]  # one item: no batch
        prompt = build_prompt([PromptSegment(Modality.SPEECH, units.to_string())], OutputModality.SPEECH)
        prompt_ids = self.tokenizer.encode_prompt(prompt)
        stage_s["tokenize"] = time.perf_counter() - started

        started = time.perf_counter()
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        # top-k: transformers' default (50), which the reference samples with since it never sets it
        sampling = {"temperature": temperature, "top_p": top_p, "top_k": DEFAULT_TOP_K} if temperature > 0 else {}
        torch.manual_seed(seed)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=temperature > 0,
                max_new_tokens=max_new_tokens,
                bad_words_ids=self.bad_words_ids,
                suppress_tokens=[self.tokenizer.eos_id],  # transformers drops EOS from bad_words_ids (see above)
                pad_token_id=self.tokenizer.eos_id,
                **sampling,
            )
        generated_ids: list[int] = output[0, len(prompt_ids) :].tolist()
        stage_s["generate"] = time.perf_counter() - started

        started = time.perf_counter()
        pieces = map(self.tokenizer.classify, generated_ids)
        generated = [
            Unit(piece.unit_kind, piece.unit) for piece in pieces if piece.unit_kind and piece.unit is not None
        ]
        aligned = align_units(generated, self.expressive, seed)  # pitch and style one per Hu unit (expressive)
        speech = self.vocoder.decode(
            VocodeRequest(aligned.hubert, pitch=aligned.pitch or None, style_units=aligned.style or None)
        )  # one generator forward over the whole answer, default speaker and style
        wav = encode_wav(speech.audio)
        stage_s["vocode"] = time.perf_counter() - started
        return _Served(generated_ids, len(speech.audio) / self.vocoder.sample_rate, wav, stage_s)


def run_baseline(
    checkpoint_root: Path,
    variant: str | None,
    clip: Path,
    requests: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    device: str = "cpu",
) -> BaselineResult:
    """``requests`` speech continuations of ``clip``, one after another as the reference serves them (request i
    seeded with ``seed + i``), after loading every model and one untimed warm-up request."""
    if requests < 1 or max_new_tokens < 1:
        raise ValueError("requests and max_new_tokens must be at least 1")
    server = _ReferenceStyleServer(checkpoint_root, variant, device)
    data = clip.read_bytes()
    server.serve(data, max_new_tokens, temperature, top_p, seed)  # warm-up, untimed
    latencies: list[float] = []
    stage_s = dict.fromkeys(STAGES, 0.0)
    audio_s, generated_tokens, last_ids = 0.0, 0, []
    run_started = time.perf_counter()
    for index in range(requests):
        started = time.perf_counter()
        served = server.serve(data, max_new_tokens, temperature, top_p, seed + index)
        latencies.append(time.perf_counter() - started)
        for stage, seconds in served.stage_s.items():
            stage_s[stage] += seconds
        audio_s += served.audio_s
        generated_tokens += len(served.generated_ids)
        last_ids = served.generated_ids
    wall_s = time.perf_counter() - run_started
    return BaselineResult(requests, wall_s, audio_s, generated_tokens, latencies, stage_s, last_ids)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m spiritserve.tools.baseline",
        description="Serve speech continuations the reference's way (sequential, HF generate, fp32); print JSON.",
    )
    parser.add_argument("--checkpoints", type=Path, help="checkpoint root (default: the embedded tiny bundle)")
    parser.add_argument("--variant", choices=["base", "expressive"])
    parser.add_argument("--clip", type=Path, required=True, help="the speech prompt (any common format)")
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's); 1 is steadier on a busy host"
    )
    args = parser.parse_args(argv)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    root = args.checkpoints
    if root is None:
        from spiritserve.checkpoints import embedded_default_root
        from spiritserve.tiny import ensure_embedded_default

        root = embedded_default_root()
        ensure_embedded_default(root)
    result = run_baseline(
        root,
        args.variant,
        args.clip,
        args.requests,
        args.max_new_tokens,
        args.temperature,
        args.top_p,
        args.seed,
        args.device,
    )
    print(json.dumps(result.to_dict(), indent=2))


if __name__ == "__main__":
    main()
