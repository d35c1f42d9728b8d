"""The two Python ends of `scripts/gpu-check.sh`: what is missing before it starts, and the summary after.

`python -m spiritserve.tools.gpu_check prerequisites --device cuda` prints, in one line, the modules (and the
device) the run needs but this interpreter lacks, and exits 3; nothing is imported to find out (find_spec).
`python -m spiritserve.tools.gpu_check summary OUT` reads what the run wrote under OUT, writes OUT/summary.json and
prints the figures against the GPU targets (docs/benchmarks.md, "H200").
"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

# What the run imports, by distribution: the GPU machine's image holds some; the rest travel as wheels.
REQUIRED_MODULES = {
    "torch": "torch", "numpy": "numpy", "transformers": "transformers", "safetensors": "safetensors",
    "sentencepiece": "sentencepiece", "yaml": "PyYAML", "matplotlib": "matplotlib", "soundfile": "soundfile",
    "av": "av", "torchfcpe": "torchfcpe",
}  # fmt: skip
TARGET_BATCH = 32
TARGETS_XRT = {"hubert": 2000.0, "hifigan": 1000.0}  # x real time at TARGET_BATCH (issue #17)
COMPONENT_RUNS = "components-*"  # one bench-components output folder per run: a precision, or float32-graphs


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or an import hook refusing it
        return False


def missing_prerequisites(device: str) -> list[str]:
    missing = [package for module, package in REQUIRED_MODULES.items() if not _installed(module)]
    if device == "cuda" and "torch" not in missing:
        import torch

        if not torch.cuda.is_available():
            missing.append("a CUDA device (torch.cuda.is_available() is False)")
    return missing


def summarize(out: Path) -> dict[str, Any]:
    """Per run (a precision; float32-graphs: with CUDA graphs), each component's x real time at TARGET_BATCH (or
    the largest batch run) and peak memory; the clip checks' reports; the contention slowdown."""
    components: dict[str, Any] = {}
    for folder in sorted(path for path in out.glob(COMPONENT_RUNS) if path.is_dir()):
        report = json.loads((folder / "bench-components.json").read_text())
        run = folder.name.removeprefix("components-")  # the precision, "-graphs" for the CUDA-graph run
        for name, entry in report["components"].items():
            results = [result for result in entry["results"] if "xrt" in result]
            if not results:
                continue
            largest = max(results, key=lambda result: result["batch_size"])
            at = next((result for result in results if result["batch_size"] == TARGET_BATCH), largest)
            components.setdefault(name, {})[run] = {
                "batch_size": at["batch_size"],
                "xrt": at["xrt"],
                "peak_memory_mib": at.get("peak_memory_mib"),
                "target_xrt": TARGETS_XRT.get(name) if at["batch_size"] == TARGET_BATCH else None,
            }
    summary: dict[str, Any] = {"components": components}
    for name in ("batching", "precision", "contention"):
        path = out / f"{name}.json"
        summary[name] = json.loads(path.read_text()) if path.is_file() else None
    contention = summary["contention"]
    if contention is not None:
        summary["contention"] = {key: contention[key] for key in ("slowdown_p50", "slowdown_p99", "vocoder")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _print(summary: dict[str, Any]) -> None:
    for name, runs in summary["components"].items():
        for run, figures in runs.items():
            target = figures["target_xrt"]
            met = target is not None and figures["xrt"] >= target
            verdict = "" if target is None else f" (target {target:.0f}: {'met' if met else 'not met'})"
            memory = figures["peak_memory_mib"]
            print(f"{name:15} {run:16} batch {figures['batch_size']:3}: {figures['xrt']:9.1f} x real time"
                  f"{verdict}{'' if memory is None else f', peak {memory:.0f} MiB'}")  # fmt: skip
    contention = summary["contention"]
    if contention is not None:
        print(f"LM stand-in per-token latency with the vocoder busy: p50 x{contention['slowdown_p50']:.2f}, "
              f"p99 x{contention['slowdown_p99']:.2f}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spiritserve.tools.gpu_check", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prerequisites = commands.add_parser("prerequisites")
    prerequisites.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    summary = commands.add_parser("summary")
    summary.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "prerequisites":
        missing = missing_prerequisites(args.device)
        if missing:
            print(f"gpu-check: missing {', '.join(missing)}", file=sys.stderr)
            sys.exit(3)
        return
    _print(summarize(args.out))


if __name__ == "__main__":
    main()
