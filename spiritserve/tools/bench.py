"""Component benchmark: latency and throughput of each speech stage at official sizes, per batch size.

``spiritserve bench-components`` builds every stage from code with random weights of the official shapes
(FCPE uses torchfcpe's shipped weights), so no checkpoint is needed; timings do not depend on weight values.
Each stage is timed through the entry point the server calls:

- ``hubert``: ``PhoneticTokenizer.encode`` (mHuBERT base 25 Hz + linear quantizer), one padded forward per batch;
- ``pitch``: ``PitchTokenizer.encode`` (FCPE batched, then the VQ-VAE one chunk at a time);
- ``style``: ``StyleTokenizer.encode`` (wav2vec2-base + projector + 100-class classifier), equal lengths batched;
- ``hifigan``: ``decode_batch`` (base 25 Hz vocoder; receptive-field windows of all requests share forwards,
  as the server's vocoder micro-batches do); durations fixed at 1 (raw 25 Hz units, as in resynthesis), so
  ``seconds`` of units give exactly ``seconds`` of audio;
- ``hifigan_stream``: the streaming vocoder as streamed responses use it (``StreamingDecoder`` per stream,
  chunks of concurrent streams through ``vocode_streams``); batch = concurrent streams, out of phase.

For each stage and batch size: one warm-up call, then ``repeats`` timed calls on ``batch`` inputs of ``seconds``
each (CUDA synchronised). Reported: median latency per batch, audio seconds processed per wall second
(× real time), latency per item, and ``speedup_vs_sequential`` = xRT(batch 16) / xRT(batch 1).

On a CPU host shared with other work, ``--threads 1`` gives far steadier numbers: with one OpenMP thread per
core, a descheduled thread stalls every parallel region (docs/measurements.md).

Import-safe: torch, numpy and matplotlib are imported only when the command runs.
"""

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spiritserve.numerics import PRECISIONS, Precision, precision_scope

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
UNIT_RATE = 25  # HuBERT units per second; the vocoder's input rate
SPEEDUP_BATCH = 16  # speedup_vs_sequential = xRT(SPEEDUP_BATCH) / xRT(1)
DEFAULT_COMPONENTS = ("hubert", "pitch", "style", "hifigan", "hifigan_stream")
DEFAULTS = {"batch_sizes": (1, 4, 16, 64), "seconds": 2.0, "repeats": 3}
QUICK = {"batch_sizes": (1, 2), "seconds": 0.5, "repeats": 1}
PEAK_GEMM_SIZE = 2048  # square matmul whose GFLOP/s is reported as the peak
JSON_NAME = "bench-components.json"
PNG_NAME = "bench-components.png"
SCHEMA = "spiritserve.bench-components/1"

# --- official architecture configs (compat doc §5, §6, §7, §9) ----------------------------------------------

# fairseq model_cfg of mhubert_base_25hz.pt: standard wav2vec2 conv stack plus one stride-2 layer (hop 640).
HUBERT_MODEL_CFG = {
    "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 3",
    "encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12,
    "conv_pos": 128, "conv_pos_groups": 16, "extractor_mode": "default", "layer_norm_first": False,
}  # fmt: skip
QUANTIZER_CFG = {"vocab_size": 500, "dim": 768, "upstream_dim": 768}  # 768 -> 702 -> 635 -> 501

# Assumed: the speech-resynthesis f0 VQ-VAE (configs/VCTK/f0_vqvae.json: width 32, depth 4, m_conv 1.0,
# dilation_growth_rate 3, downs_t [4], strides_t [2], emb_width 128) with Spirit LM's 2 input channels (F0,
# voicing) and 64 codes. That gives ~0.19M parameters, matching the model card's ~0.2M.
VQVAE_STACK = {
    "input_emb_width": 2, "output_emb_width": 128, "levels": 1, "downs_t": [4], "strides_t": [2], "width": 32,
    "depth": 4, "m_conv": 1.0, "dilation_growth_rate": 3,
}  # fmt: skip
VQVAE_CODES = 64
VQVAE_FEATURES = "norm_f0_interp,vuv"  # assumed; normalisation is one mean per chunk either way

# HF config.json of style_encoder_w2v2: Wav2Vec2Config defaults are wav2vec2-base (12 x 768, FFN 3072, 12 heads,
# 7-block conv stack, hop 320); classifier_proj_size 256 is the HF default (assumed).
STYLE_CFG = {"model_type": "wav2vec2", "num_labels": 100, "classifier_proj_size": 256}

# Base vocoder config.json, 25 Hz variant (assumed rates; the product must be 640): the speech-resynthesis
# Expresso template with one rate-2 stage replaced by rate 4.
HIFIGAN_CFG = {
    "upsample_rates": [5, 4, 4, 4, 2], "upsample_kernel_sizes": [11, 8, 8, 8, 4], "upsample_initial_channel": 512,
    "resblock_kernel_sizes": [3, 7, 11], "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "num_embeddings": 500, "embedding_dim": 128, "model_in_dim": 3 * 128, "multispkr": True, "num_speakers": 4,
    "multistyle": True, "num_styles": 100, "code_hop_size": 640, "sampling_rate": SAMPLE_RATE,
    "dur_predictor_params": {
        "encoder_embed_dim": 128, "var_pred_hidden_dim": 128, "var_pred_kernel_size": 3, "var_pred_dropout": 0.5,
    },
}  # fmt: skip
VOCODER_SPEAKER = 2  # the reference's default speaker


@dataclass
class Component:
    """One stage under test: ``make_inputs(batch)`` builds the inputs (untimed), ``run(inputs)`` is timed."""

    name: str
    entry_point: str
    batched: bool
    notes: str
    parameters: dict[str, int]  # parameter counts per model
    config: dict[str, Any]
    make_inputs: Callable[[int], Any]
    run: Callable[[Any], Any]
    max_batch_samples: int | None = None


@dataclass
class Measurement:
    component: str
    batch_size: int
    times_s: list[float] = field(default_factory=list)
    peak_memory_mib: float | None = None
    error: str | None = None


def _count(module: Any) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _noise(batch: int, seconds: float, seed: int) -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    samples = round(seconds * SAMPLE_RATE)
    return [(0.1 * rng.standard_normal(samples)).astype(np.float32) for _ in range(batch)]


def build_hubert(device: str, seconds: float, seed: int, graphs: bool = False) -> Component:
    from spiritserve.tokenizers.hubert import HubertConfig, HubertModel
    from spiritserve.tokenizers.phonetic import PhoneticTokenizer
    from spiritserve.tokenizers.quantizer import LinearQuantizer, QuantizerConfig

    source = Path("<bench>")
    hubert = HubertModel(HubertConfig.from_model_cfg(HUBERT_MODEL_CFG, source))
    quantizer = LinearQuantizer(QuantizerConfig.from_model_cfg(QUANTIZER_CFG, source))
    tokenizer = PhoneticTokenizer(hubert, quantizer, normalize=False, device=device)
    if graphs:  # padded to fixed shapes, replayed as CUDA graphs on a GPU, as the server runs it
        tokenizer.use_fixed_shapes()
    return Component(
        name="hubert",
        entry_point="PhoneticTokenizer.encode",
        batched=True,
        notes="one right-padded forward per batch of up to max_batch_samples padded samples; the first conv's "
        "GroupNorm is masked per row" + ("; padded to fixed shapes (CUDA graphs on a GPU)" if graphs else ""),
        parameters={"hubert": _count(hubert), "quantizer": _count(quantizer)},
        config={"hubert_model_cfg": HUBERT_MODEL_CFG, "quantizer_model_cfg": QUANTIZER_CFG, "output_layer": 11},
        make_inputs=lambda batch: _noise(batch, seconds, seed),
        run=tokenizer.encode,
        max_batch_samples=tokenizer.max_batch_samples,
    )


def build_pitch(device: str, seconds: float, seed: int) -> Component:
    from spiritserve.tokenizers.fcpe import F0Extractor
    from spiritserve.tokenizers.pitch import VQVAE, ConvStackConfig, PitchTokenizer, VQVAEConfig

    source = Path("<bench>")
    stack = ConvStackConfig.from_params(dict(VQVAE_STACK), "encoder_params", source)
    vqvae = VQVAE(
        VQVAEConfig(
            encoder=stack,
            decoder=stack,
            codebook_size=VQVAE_CODES,
            emb_width=stack.output_emb_width,
            features=VQVAE_FEATURES,
        )
    )
    f0_extractor = F0Extractor.from_file(device=device)  # torchfcpe's shipped fcpe_c_v001.pt
    tokenizer = PitchTokenizer(f0_extractor, vqvae, device=device)
    return Component(
        name="pitch",
        entry_point="PitchTokenizer.encode",
        batched=True,
        notes="FCPE (log-mel + conv net) runs on padded batches; the VQ-VAE encoder then runs one chunk at a time "
        "(per-item loop). Noise input is mostly unvoiced.",
        parameters={"fcpe": _count(f0_extractor.model), "vqvae": _count(vqvae)},
        config={
            "vqvae_encoder_params": VQVAE_STACK,
            "vqvae_decoder_params": VQVAE_STACK,
            "vq_params": {"l_bins": VQVAE_CODES, "emb_width": stack.output_emb_width, "levels": 1},
            "features": VQVAE_FEATURES,
            "fcpe": "torchfcpe assets/fcpe_c_v001.pt (shipped weights)",
        },
        make_inputs=lambda batch: _noise(batch, seconds, seed),
        run=tokenizer.encode,
        max_batch_samples=tokenizer.max_batch_samples,
    )


def build_style(device: str, seconds: float, seed: int) -> Component:
    from spiritserve.tokenizers.style import StyleConfig, StyleModel, StyleTokenizer

    model = StyleModel(StyleConfig.from_dict(dict(STYLE_CFG), Path("<bench>")))
    tokenizer = StyleTokenizer(model, device=device)
    backbone = model.config.backbone
    return Component(
        name="style",
        entry_point="StyleTokenizer.encode",
        batched=True,
        notes="equal-length chunks share a forward (up to max_batch_samples samples); no padding",
        parameters={"wav2vec2": _count(model.wav2vec2), "head": _count(model.projector) + _count(model.classifier)},
        config={
            **STYLE_CFG,
            "hidden_size": backbone.hidden_size,
            "num_hidden_layers": backbone.num_hidden_layers,
            "intermediate_size": backbone.intermediate_size,
            "num_attention_heads": backbone.num_attention_heads,
            "conv_dim": list(backbone.conv_dim),
            "conv_kernel": list(backbone.conv_kernel),
            "conv_stride": list(backbone.conv_stride),
        },
        make_inputs=lambda batch: _noise(batch, seconds, seed),
        run=tokenizer.encode,
        max_batch_samples=tokenizer.max_batch_samples,
    )


def _build_vocoder(device: str, graphs: bool = False) -> Any:
    """The base 25 Hz vocoder at official size, weight norm folded as ``UnitVocoder.from_dir`` does; with
    `graphs`, its batches padded to fixed shapes and (on CUDA) replayed as captured graphs, as the server does."""
    import torch

    from spiritserve.vocoder.base import UnitVocoder
    from spiritserve.vocoder.hifigan import CodeHiFiGAN, HifiGanConfig
    from spiritserve.weights import fold_weight_norm

    model = fold_weight_norm(CodeHiFiGAN(HifiGanConfig.from_dict(HIFIGAN_CFG, source=Path("<bench>"))))
    model = model.eval().to(torch.device(device))
    speakers = [f"speaker{index}" for index in range(HIFIGAN_CFG["num_speakers"])]
    styles = [f"style{index}" for index in range(HIFIGAN_CFG["num_styles"])]
    vocoder = UnitVocoder(model, speakers, styles, model.conv_pre.weight.device)
    if graphs:
        vocoder.use_fixed_shapes()
    return vocoder


def _random_units(batch: int, seconds: float, seed: int) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    length = max(1, round(seconds * UNIT_RATE))
    return [rng.integers(0, HIFIGAN_CFG["num_embeddings"], length).tolist() for _ in range(batch)]


def build_hifigan(device: str, seconds: float, seed: int, graphs: bool = False) -> Component:
    from spiritserve.vocoder.base import VocodeRequest

    vocoder = _build_vocoder(device, graphs)

    def run(unit_lists: list[list[int]]) -> list[Any]:
        requests = [VocodeRequest(units, VOCODER_SPEAKER, predict_durations=False) for units in unit_lists]
        return vocoder.decode_batch(requests)

    return Component(
        name="hifigan",
        entry_point="decode_batch",
        batched=True,
        notes="receptive-field windows of every sequence batched together (equal to one-by-one decoding). "
        "Durations fixed at 1 (predict_durations=False), so seconds x 25 units give exactly seconds of audio.",
        parameters={"generator": _count(vocoder.model)},
        config=HIFIGAN_CFG,
        make_inputs=lambda batch: _random_units(batch, seconds, seed),
        run=run,
    )


def build_hifigan_stream(device: str, seconds: float, seed: int, graphs: bool = False) -> Component:
    from spiritserve.vocoder.streaming import DEFAULT_CHUNK_UNITS, StreamFeed, vocode_in_lockstep

    vocoder = _build_vocoder(device, graphs)

    def run(unit_lists: list[list[int]]) -> list[list[Any]]:
        """Every stream gets one unit per step (an engine step of concurrent requests); stream i starts
        i/batch of a chunk later than stream 0, as independent arrivals would, so chunks fall due out of
        phase. Each step, the streams' due chunks share one ``vocode_streams`` call."""
        decoders = [vocoder.open_stream(VOCODER_SPEAKER, predict_durations=False) for _ in unit_lists]
        feeds = [
            StreamFeed(units, start_step=index * DEFAULT_CHUNK_UNITS // len(unit_lists))
            for index, units in enumerate(unit_lists)
        ]
        return vocode_in_lockstep(decoders, feeds)

    return Component(
        name="hifigan_stream",
        entry_point="StreamingDecoder.feed + vocode_streams",
        batched=True,
        notes=f"batch = concurrent streams fed one unit per step, starts staggered over one {DEFAULT_CHUNK_UNITS}-"
        "unit chunk; chunks due in the same step share forwards (narrower windows padded). Durations fixed at 1.",
        parameters={"generator": _count(vocoder.model)},
        config=HIFIGAN_CFG,
        make_inputs=lambda batch: _random_units(batch, seconds, seed),
        run=run,
    )


GRAPH_COMPONENTS = ("hubert", "hifigan", "hifigan_stream")  # these take `graphs`
BUILDERS: dict[str, Callable[..., Component]] = {
    "hubert": build_hubert,
    "pitch": build_pitch,
    "style": build_style,
    "hifigan": build_hifigan,
    "hifigan_stream": build_hifigan_stream,
}


# --- measuring ---------------------------------------------------------------------------------------------


def measure(component: Component, batch: int, repeats: int, device: str, autocast: Any) -> Measurement:
    """One warm-up call, then ``repeats`` timed calls on the same inputs (inputs are built untimed)."""
    import torch

    is_cuda = device.startswith("cuda")

    def synchronize() -> None:
        if is_cuda:
            torch.cuda.synchronize()

    measurement = Measurement(component.name, batch)
    try:
        inputs = component.make_inputs(batch)
        if is_cuda:
            torch.cuda.reset_peak_memory_stats()
        with autocast():
            component.run(inputs)  # warm-up
            synchronize()
            for _ in range(repeats):
                synchronize()
                start = time.perf_counter()
                component.run(inputs)
                synchronize()
                measurement.times_s.append(time.perf_counter() - start)
        if is_cuda:
            measurement.peak_memory_mib = torch.cuda.max_memory_allocated() / 2**20
    except (RuntimeError, MemoryError) as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
        measurement.error = f"{type(exc).__name__}: {exc}"
        logger.error("%s at batch %d failed: %s", component.name, batch, measurement.error)
        if is_cuda:
            torch.cuda.empty_cache()
    return measurement


def summarise(measurement: Measurement, seconds: float) -> dict[str, Any]:
    result: dict[str, Any] = {"batch_size": measurement.batch_size, "audio_seconds": measurement.batch_size * seconds}
    if measurement.error is not None:
        return {**result, "error": measurement.error}
    latency = statistics.median(measurement.times_s)
    return {
        **result,
        "latency_s": latency,
        "latency_s_min": min(measurement.times_s),
        "latency_s_mean": statistics.fmean(measurement.times_s),
        "latency_s_runs": measurement.times_s,
        "xrt": measurement.batch_size * seconds / latency,
        "per_item_latency_s": latency / measurement.batch_size,
        "peak_memory_mib": measurement.peak_memory_mib,
    }


def speedup(results: list[dict[str, Any]], batch: int = SPEEDUP_BATCH) -> float | None:
    """xRT at ``batch`` over xRT at batch 1; None when either is missing or failed."""
    xrt = {result["batch_size"]: result.get("xrt") for result in results}
    if xrt.get(1) and xrt.get(batch):
        return xrt[batch] / xrt[1]
    return None


def count_gflop(component: Component, autocast: Any) -> float | None:
    """Matmul/conv GFLOP of one batch-1 call (torch's FlopCounterMode), to set achieved GFLOP/s against the
    device's GEMM peak: the headroom batching could at best recover."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter, autocast():
            component.run(component.make_inputs(1))
    except (RuntimeError, MemoryError) as exc:
        logger.error("%s: counting FLOPs failed: %s", component.name, exc)
        return None
    return counter.get_total_flops() / 1e9


def peak_gemm_gflops(device: str, precision: Precision, size: int = PEAK_GEMM_SIZE, repeats: int = 10) -> float:
    """GFLOP/s of a large square matmul (fastest of the runs): the practical compute ceiling of this device at
    this precision (TF32 only when it is "tf32", so fp32 and TF32 figures no longer mix)."""
    import torch

    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    best = float("inf")
    with precision_scope(precision, torch.device(device).type):
        for _ in range(repeats + 3):  # the first runs warm up; the fastest run is the ceiling
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            a @ b
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def machine_info(device: str) -> dict[str, Any]:
    import numpy as np
    import torch

    if device.startswith("cuda"):
        device_name = torch.cuda.get_device_name(torch.device(device))
    else:
        device_name = _cpu_model() or platform.processor() or platform.machine()
    return {
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "cuda_version": torch.version.cuda,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "device_name": device_name,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "load_average_start": _load_average(),  # 1, 5, 15 min; other work on the machine skews CPU timings
    }


def _load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


# --- output ------------------------------------------------------------------------------------------------


def format_table(report: dict[str, Any]) -> str:
    header = (
        f"{'component':<16}{'batch':>6}{'latency s':>12}{'per item s':>12}{'x real time':>13}{'GFLOP/s':>9}"
        f"{'of peak':>9}{'speedup':>9}"
    )
    peak = report["machine"].get("peak_gemm_gflops")
    lines = [header, "-" * len(header)]
    for name, entry in report["components"].items():
        value = entry["speedup_vs_sequential"]
        speedup_text = f"{value:.2f}" if value is not None else "-"
        for index, result in enumerate(entry["results"]):
            tail = speedup_text if index == 0 else ""
            if "error" in result:
                lines.append(f"{name:<16}{result['batch_size']:>6}  failed: {result['error'][:80]}")
                continue
            gflops = result.get("gflops")
            gflops_text = "-" if gflops is None else f"{gflops:.0f}"
            of_peak = "-" if gflops is None or not peak else f"{gflops / peak:.0%}"
            lines.append(
                f"{name:<16}{result['batch_size']:>6}{result['latency_s']:>12.4f}{result['per_item_latency_s']:>12.4f}"
                f"{result['xrt']:>13.2f}{gflops_text:>9}{of_peak:>9}{tail:>9}"
            )
    parameters = report["parameters"]
    lines.append(
        f"({parameters['seconds']} s per item, {parameters['repeats']} timed runs, median; speedup = xRT(batch "
        f"{SPEEDUP_BATCH}) / xRT(batch 1); of peak = achieved matmul/conv GFLOP/s over a {PEAK_GEMM_SIZE}^3 "
        f"matmul's {peak:.0f} GFLOP/s; {report['machine']['device_name']}, "
        f"{_threads(report['machine']['torch_threads'])}, {parameters['precision']})"
    )
    return "\n".join(lines)


def _threads(count: int) -> str:
    return f"{count} thread" + ("" if count == 1 else "s")


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, entry in report["components"].items():
        points = [(result["batch_size"], result["xrt"]) for result in entry["results"] if "xrt" in result]
        if not points:
            continue
        value = entry["speedup_vs_sequential"]
        label = name + (f" (×{value:.2f} at {SPEEDUP_BATCH} vs 1)" if value is not None else "")
        axes.plot(*zip(*points, strict=True), marker="o", label=label)
    axes.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    axes.yaxis.set_major_formatter(plain)
    axes.yaxis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2.0, 5.0)))
    axes.yaxis.set_minor_formatter(plain)
    batch_sizes = report["parameters"]["batch_sizes"]
    axes.set_xticks(batch_sizes, [str(batch) for batch in batch_sizes])
    axes.set_xlabel("batch size (items per call)")
    axes.set_ylabel("× real time (audio s per wall s)")
    machine, parameters = report["machine"], report["parameters"]
    axes.set_title(
        f"spiritserve components: {machine['device_name'][:40]}, {_threads(machine['torch_threads'])}\n"
        f"{parameters['seconds']} s items, {parameters['precision']}, torch {machine['torch_version']}",
        fontsize=9,
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)


# --- command -----------------------------------------------------------------------------------------------


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _component_list(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in DEFAULT_COMPONENTS]
    if not names or unknown:
        choices = list(DEFAULT_COMPONENTS)
        raise argparse.ArgumentTypeError(f"unknown components {unknown or text!r}; choose from {choices}")
    return names


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``bench-components`` on the CLI's subparsers."""
    parser = commands.add_parser(
        "bench-components",
        help="time each speech stage (official sizes, random weights) per batch size; write JSON + PNG",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto", help="auto: cuda if available")
    parser.add_argument("--batch-sizes", type=_int_list, help="comma-separated (default 1,4,16,64)")
    parser.add_argument("--seconds", type=float, help="audio seconds per item (default 2.0)")
    parser.add_argument("--repeats", type=int, help="timed runs after the warm-up (default 3)")
    parser.add_argument(
        "--components", type=_component_list, default=DEFAULT_COMPONENTS,
        help=f"comma-separated from {','.join(DEFAULT_COMPONENTS)} (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="float32",
        help="float32 (exact: no TF32), tf32, bfloat16 or float16 (autocast): as the server's stages run them",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("docs/bench"), help="output folder (default docs/bench)")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: torch's, one per core); 1 is steadier on a busy host",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cuda-graphs", action="store_true",
        help="HuBERT and vocoder batches padded to fixed shapes, replayed as CUDA graphs on a GPU (as the server runs "
        "them)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="tiny run for tests: batch sizes 1,2, 0.5 s, 1 repeat")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> None:

    import torch

    preset = QUICK if args.quick else DEFAULTS
    batch_sizes = sorted(set(args.batch_sizes or preset["batch_sizes"]))
    seconds = args.seconds if args.seconds is not None else preset["seconds"]
    repeats = args.repeats if args.repeats is not None else preset["repeats"]
    if not seconds > 0 or repeats < 1:
        raise SystemExit(f"--seconds must be > 0 and --repeats >= 1, got {seconds} and {repeats}")
    if args.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")

    def autocast() -> Any:
        return precision_scope(args.precision, torch.device(device).type)

    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["spiritserve", *sys.argv[1:]]) if sys.argv else None,
        "machine": {**machine_info(device), "peak_gemm_gflops": peak_gemm_gflops(device, args.precision)},
        "parameters": {
            "device": device,
            "precision": args.precision,
            "cuda_graphs": args.cuda_graphs,
            "batch_sizes": batch_sizes,
            "seconds": seconds,
            "repeats": repeats,
            "warmup": 1,
            "components": list(args.components),
            "threads": torch.get_num_threads(),
            "seed": args.seed,
            "quick": args.quick,
            "sample_rate": SAMPLE_RATE,
            "input": "white noise, 0.1 RMS, 16 kHz mono float32",
            "latency": "median of the timed runs",
            "speedup_batch": SPEEDUP_BATCH,
            "hifigan_units": f"uniform random in 0..{HIFIGAN_CFG['num_embeddings'] - 1}, seconds x {UNIT_RATE} "
            "per item, durations fixed 1 (not predicted)",
        },
        "components": {},
    }
    failed = False
    for name in args.components:
        started = time.perf_counter()
        graphs = {"graphs": args.cuda_graphs} if name in GRAPH_COMPONENTS else {}
        component = BUILDERS[name](device, seconds, args.seed, **graphs)
        build_s = time.perf_counter() - started
        logger.info("%s built in %.1f s (%s parameters)", name, build_s, f"{sum(component.parameters.values()):,}")
        gflop_per_item = count_gflop(component, autocast)
        results = []
        for batch in batch_sizes:
            result = summarise(measure(component, batch, repeats, device, autocast), seconds)
            if "latency_s" in result and gflop_per_item is not None:
                result["gflops"] = gflop_per_item * batch / result["latency_s"]
            failed = failed or "error" in result
            if "xrt" in result:
                logger.info("%s batch %d: %.4f s, %.2f x real time", name, batch, result["latency_s"], result["xrt"])
            results.append(result)
        report["components"][name] = {
            "entry_point": component.entry_point,
            "batched": component.batched,
            "notes": component.notes,
            "parameters": component.parameters,
            "num_parameters": sum(component.parameters.values()),
            "max_batch_samples": component.max_batch_samples,
            "build_s": build_s,
            "config": component.config,
            "gflop_per_item": gflop_per_item,
            "results": results,
            "speedup_vs_sequential": speedup(results),
            "load_average_end": _load_average(),
        }
        del component
        if device == "cuda":
            torch.cuda.empty_cache()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / JSON_NAME).write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out / PNG_NAME)
    print(format_table(report))
    print(f"wrote {out / JSON_NAME} and {out / PNG_NAME}")
    if failed:
        raise SystemExit("some measurements failed; see the errors in the table and the JSON")
