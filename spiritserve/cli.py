"""Command line: `spiritserve` serve, make-tiny, chat, soak, bench, bench-components, check-precision, check-batching,
check-contention, eval.

Import-safe: vLLM spawns worker processes that re-import the main module, so nothing runs at import.
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from spiritserve.evaluation import command as eval_command
from spiritserve.tools import batch_check, bench, chat, contention, load, precision, soak


def _serve(args: argparse.Namespace) -> None:
    # Everything is loaded from the checkpoint root; transformers must never try a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from spiritserve.errors import CheckpointError
    from spiritserve.preflight import prepare_checkpoint
    from spiritserve.settings import Settings

    flags = ("checkpoints", "variant", "host", "port", "engine_url")
    settings = Settings(**{key: value for key, value in vars(args).items() if key in flags and value})
    try:  # before the server, its imports and the engine: a broken root is reported in seconds
        checkpoint = prepare_checkpoint(settings)
    except CheckpointError as exc:
        sys.exit(f"spiritserve serve: {exc}")

    import uvicorn
    from prometheus_client import start_http_server

    from spiritserve.server.app import build_app
    from spiritserve.server.drain import DrainingServer

    _configure_logging(settings.log_format)
    app = build_app(settings, checkpoint)
    if settings.metrics_port is not None:
        start_http_server(settings.metrics_port, addr=settings.host, registry=app.state.metrics.exposition)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        log_config=None,  # uvicorn's loggers go through the root handler (_configure_logging)
        access_log=False,  # its access lines carry the query string (?api_key=); MetricsMiddleware logs requests
        # Websocket frames beyond the session's message limit are refused by uvicorn itself (close 1009).
        ws_max_size=settings.realtime_max_message_bytes * 2,
        timeout_graceful_shutdown=5,  # after the drain: what is still open is closed this long later
    )
    DrainingServer(config, app.state.admission, settings.drain_timeout_s).run()


def _configure_logging(log_format: str) -> None:
    """One line per record on stderr: plain text, or a JSON object (python-json-logger) for log pipelines,
    with the access log's fields (route, status, duration_ms, request_id, ...) as keys."""
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        fields = "%(asctime)s %(levelname)s %(name)s %(message)s"
        formatter = JsonFormatter(fields, rename_fields={"levelname": "level"})
        for handler in logging.getLogger().handlers:
            handler.setFormatter(formatter)


def _make_tiny(args: argparse.Namespace) -> None:
    from spiritserve.tiny import make_tiny_bundle

    make_tiny_bundle(args.out, variant=args.variant, seed=args.seed)
    print(f"wrote a tiny {args.variant} bundle to {args.out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="spiritserve", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="serve the REST API (no --checkpoints: SPIRITLM_CHECKPOINTS_DIR, else the embedded tiny bundle)"
    )
    serve.add_argument("--checkpoints", type=Path, help="Spirit LM checkpoint root in the official layout")
    serve.add_argument("--variant", choices=["base", "expressive"], help="default: the only one present, else base")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument(
        "--engine-url",
        help="use a running vLLM server (or vllm-router) at this /v1 URL instead of "
        "starting an engine here (SPIRITSERVE_ENGINE_URL)",
    )
    serve.set_defaults(run=_serve)

    tiny = commands.add_parser("make-tiny", help="write a tiny random bundle in the official layout")
    tiny.add_argument("--out", type=Path, required=True, help="checkpoint root to create")
    tiny.add_argument("--variant", choices=["base", "expressive"], default="base")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(run=_make_tiny)

    bench.add_parser(commands)  # bench-components
    precision.add_parser(commands)  # check-precision
    batch_check.add_parser(commands)  # check-batching
    chat.add_parser(commands)  # chat
    soak.add_parser(commands)  # soak
    load.add_parser(commands)  # bench (load generator)
    contention.add_parser(commands)  # check-contention
    eval_command.add_parser(commands)  # eval (benchmarks against a running server)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.run(args)


if __name__ == "__main__":
    main()
