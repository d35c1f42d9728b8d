"""Time to first token of a few-shot transcription prompt, with and without the prefix in vLLM's prefix cache.

Starts the pipeline and engine in-process as the server does (same settings, `SPIRITSERVE_*` honoured), builds the
transcription prompt from a pool, and times the engine from submitting a prompt to its first token (one token asked):

- cold: the prompt with its second id (the dummy-prefix piece) replaced by a different text id on each run, so no
  block of it is in the cache (vLLM chains block hashes from the first token); same length, same work;
- warm: the prompt itself, after one run put its prefix in the cache;
- zero-shot: the query alone, for scale.

Usage: .venv/bin/python scripts/few_shot_ttft.py --checkpoints ROOT --pool tests/fixtures/few_shot/asr \
           --clip tests/fixtures/espeak_16k_mono.flac --runs 10 --out docs/few_shot/ttft.json
"""

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path


async def first_token_s(pipeline, prompt_ids: list[int], request_id: str) -> float:
    from spiritserve.engine.engine import TokenRequest

    request = TokenRequest(prompt_ids=prompt_ids, max_tokens=1, allowed_token_ids=None, temperature=0.0)
    started = time.perf_counter()
    async for _ in pipeline.engine.stream(request, request_id, timeout_s=600):
        return time.perf_counter() - started
    raise RuntimeError("the engine produced no token")


async def measure(args: argparse.Namespace) -> dict:
    from spiritserve.audio import decode_audio
    from spiritserve.few_shot import TranscriptionPrompt, build_prompts, continuation_ids, read_pool
    from spiritserve.preflight import prepare_checkpoint
    from spiritserve.server.app import load_pipeline
    from spiritserve.server.metrics import ServiceMetrics
    from spiritserve.settings import Settings

    settings = Settings(checkpoints=args.checkpoints)
    checkpoint = prepare_checkpoint(settings)
    pipeline = await load_pipeline(settings, checkpoint, ServiceMetrics())
    try:
        pool = read_pool(args.pool, settings.max_audio_seconds, settings.max_decoded_bytes)
        prompts = await build_prompts(pipeline, pool, None)
        units = await pipeline.tokenize(decode_audio(args.clip.read_bytes(), settings.max_audio_seconds))
        query = continuation_ids(pipeline.tokenizer, TranscriptionPrompt.query(units.to_string()))
        prompt = [*prompts.transcription.prefix_ids, *query]
        zero_shot = pipeline.tokenizer.encode_prompt(TranscriptionPrompt.query(units.to_string()))
        text_ids = pipeline.tokenizer.text_ids
        await first_token_s(pipeline, zero_shot, "engine-warm-up")  # first calls compile and allocate
        results: dict[str, list[float]] = {"cold": [], "warm": [], "zero_shot": []}
        for run in range(args.runs):
            cold = [prompt[0], text_ids[1000 + run], *prompt[2:]]
            results["cold"].append(await first_token_s(pipeline, cold, f"cold-{run}"))
        await first_token_s(pipeline, prompt, "fill-cache")
        for run in range(args.runs):
            results["warm"].append(await first_token_s(pipeline, prompt, f"warm-{run}"))
            results["zero_shot"].append(await first_token_s(pipeline, zero_shot, f"zero-shot-{run}"))
    finally:
        pipeline.engine.shutdown()
        await pipeline.close()
    return {
        "schema": "spiritserve.few-shot-ttft/1",
        "model": checkpoint.language_model.path.name,
        "random_weights": checkpoint.random_weights,
        "pool": str(args.pool),
        "examples": len(pool.examples),
        "prefix_tokens": len(prompts.transcription.prefix_ids),
        "query_tokens": len(query),
        "runs": args.runs,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "seconds": results,
        "median_ms": {name: 1000 * statistics.median(values) for name, values in results.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, required=True)
    parser.add_argument("--pool", type=Path, required=True, help="a transcription pool folder")
    parser.add_argument("--clip", type=Path, required=True, help="the query's audio")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = asyncio.run(measure(args))
    print(f"{report['model']}: {report['examples']} examples, prefix {report['prefix_tokens']} tokens, "
          f"query {report['query_tokens']} tokens, {report['runs']} runs")  # fmt: skip
    print(f"{'prompt':<12}{'median ms':>10}{'min ms':>10}{'max ms':>10}")
    for name, values in report["seconds"].items():
        print(f"{name:<12}{report['median_ms'][name]:>10.1f}{1000 * min(values):>10.1f}{1000 * max(values):>10.1f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
