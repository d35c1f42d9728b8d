"""`spiritserve check-contention`: how much the speech stages slow the language model's decode on one device.

In the server the speech stages (gateway process) and vLLM's engine (its own process) share the GPU by
time-slicing, so a large vocoder batch stretches the time per output token of every stream. vLLM may be absent
where this runs (the GPU check machine), so a decoder-only model in transformers stands in for it: a Llama of
`--lm-layers` x `--lm-hidden` (bf16 on CUDA, fp32 on CPU) decodes greedily with its KV cache, one token per
step, synchronised, first alone, then while another process vocodes batches with the official-size HiFi-GAN
(bench-components' random weights) without pause. Reported: per-token latency p50/p90/p99 alone and under load,
their ratio, and the vocoder's throughput meanwhile. JSON and PNG under --out.

Import-safe: torch, transformers and matplotlib are imported only when the command runs.
"""

import argparse
import json
import logging
import multiprocessing
import time
from pathlib import Path
from typing import Any

from spiritserve.tools.load import percentiles

logger = logging.getLogger(__name__)

JSON_NAME = "contention.json"
PNG_NAME = "contention.png"
SCHEMA = "spiritserve.check-contention/1"
FULL = {"lm_layers": 16, "lm_hidden": 2048, "prompt_tokens": 512, "tokens": 256, "vocoder_batch": 32, "seconds": 4.0}
QUICK = {"lm_layers": 2, "lm_hidden": 128, "prompt_tokens": 32, "tokens": 24, "vocoder_batch": 1, "seconds": 0.25}


def _vocoder_load(device: str, batch: int, seconds: float, started: Any, stop: Any, done: Any) -> None:
    """In its own process, as the gateway is: vocode `batch` items of `seconds` back to back until `stop`."""
    from spiritserve.tools.bench import build_hifigan

    component = build_hifigan(device, seconds, seed=0)
    inputs = component.make_inputs(batch)
    component.run(inputs)  # warm-up
    started.set()
    runs, began = 0, time.perf_counter()
    while not stop.is_set():
        component.run(inputs)
        runs += 1
    done.put({"audio_seconds_per_second": runs * batch * seconds / (time.perf_counter() - began), "batches": runs})


def decode_latencies(device: str, layers: int, hidden: int, prompt_tokens: int, tokens: int) -> list[float]:
    """Seconds per decoded token of a random Llama, greedy with its KV cache, each step synchronised."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32_512, hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 128), max_position_embeddings=prompt_tokens + tokens + 8,
    )  # fmt: skip
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()

    def synchronize() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    latencies = []
    with torch.inference_mode():
        ids = torch.randint(0, config.vocab_size, (1, prompt_tokens), device=device)
        output = model(ids, use_cache=True)
        for _ in range(tokens):
            synchronize()
            started = time.perf_counter()
            next_id = output.logits[:, -1:].argmax(-1)
            output = model(next_id, past_key_values=output.past_key_values, use_cache=True)
            synchronize()
            latencies.append(time.perf_counter() - started)
    return latencies


def run(args: argparse.Namespace) -> None:
    import torch

    preset = {**(QUICK if args.quick else FULL), **{k: v for k, v in vars(args).items() if k in FULL and v}}
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("check-contention --device cuda: no CUDA device is available")
    lm = (device, preset["lm_layers"], preset["lm_hidden"], preset["prompt_tokens"], preset["tokens"])
    decode_latencies(*lm[:3], preset["prompt_tokens"], 4)  # warm-up: allocations and kernel choice
    alone = decode_latencies(*lm)

    spawn = multiprocessing.get_context("spawn")
    started, stop, done = spawn.Event(), spawn.Event(), spawn.Queue()
    loader = spawn.Process(target=_vocoder_load, args=(device, preset["vocoder_batch"], preset["seconds"], started,
                                                       stop, done), daemon=True)  # fmt: skip
    loader.start()
    if not started.wait(timeout=600):
        loader.kill()
        raise SystemExit("check-contention: the vocoder process did not start within 600 s")
    try:
        loaded = decode_latencies(*lm)
    finally:
        stop.set()
    vocoder = done.get(timeout=600)
    loader.join(timeout=60)

    alone_p, loaded_p = percentiles(alone), percentiles(loaded)
    assert alone_p is not None and loaded_p is not None  # at least one token is decoded
    report = {
        "schema": SCHEMA,
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch_version": torch.__version__,
        "parameters": {**preset, "quick": args.quick},
        "alone_s": alone_p,
        "with_vocoder_s": loaded_p,
        "slowdown_p50": loaded_p["p50"] / alone_p["p50"],
        "slowdown_p99": loaded_p["p99"] / alone_p["p99"],
        "vocoder": vocoder,
        "latencies_s": {"alone": alone, "with_vocoder": loaded},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / JSON_NAME).write_text(json.dumps(report, indent=2) + "\n")
    _plot(report, args.out / PNG_NAME)
    print(
        f"per-token latency p50 {alone_p['p50'] * 1e3:.2f} ms alone, {loaded_p['p50'] * 1e3:.2f} ms with the vocoder "
        f"busy (x{report['slowdown_p50']:.2f}; p99 x{report['slowdown_p99']:.2f}); vocoder meanwhile "
        f"{vocoder['audio_seconds_per_second']:.1f} x real time -> {args.out / JSON_NAME}"
    )


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=120)
    for name, values in report["latencies_s"].items():
        axes.plot([value * 1e3 for value in values], marker=".", label=name.replace("_", " "))
    axes.set_xlabel("decoded token")
    axes.set_ylabel("ms per token")
    axes.set_title(f"LM stand-in decode on {report['device_name']}: alone vs vocoder busy")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("check-contention", help="LM stand-in's per-token latency alone vs with the "
                                 "vocoder busy on the same device; JSON + PNG")  # fmt: skip
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests and dry runs")
    parser.add_argument("--lm-layers", type=int, help=f"stand-in LM layers (default {FULL['lm_layers']})")
    parser.add_argument("--lm-hidden", type=int, help=f"stand-in LM width (default {FULL['lm_hidden']})")
    parser.add_argument("--tokens", type=int, help=f"decoded tokens per measurement (default {FULL['tokens']})")
    parser.add_argument("--vocoder-batch", type=int, help=f"items per vocoder batch (default {FULL['vocoder_batch']})")
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="output folder")
    parser.set_defaults(run=run)
