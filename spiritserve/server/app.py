"""App factory: `build_app(settings)` builds the FastAPI app; models and the engine live in its lifespan.

Nothing heavy happens at import. Start-up reads the few-shot pools (if any), loads the checkpoint strictly, starts
vLLM, tokenizes the pools, warms every stage with one dummy request, and only then serves (so `/readyz` is true from
the first request it answers).
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from spiritserve import __version__
from spiritserve.checkpoints import SpiritCheckpoint
from spiritserve.engine.engine import InProcessEngine, LanguageModelEngine
from spiritserve.engine.remote import RemoteEngine
from spiritserve.errors import CheckpointError, SpiritServeError
from spiritserve.few_shot import FewShotPrompts, build_prompts, read_pools
from spiritserve.gpu_memory import GpuMemoryPlan, share_gpu, speech_workload
from spiritserve.pipeline import SpiritPipeline
from spiritserve.scoring import tokenize_examples
from spiritserve.server.admission import ApiKeys, RateLimiter
from spiritserve.server.auth import AccessMiddleware, OriginPolicy
from spiritserve.server.docs_pages import install_docs
from spiritserve.server.error_messages import error_body, error_headers
from spiritserve.server.limits import BodySizeLimitMiddleware
from spiritserve.server.metrics import MetricsMiddleware, ServiceMetrics
from spiritserve.server.openai_routes import router as openai_router
from spiritserve.server.realtime import router as realtime_router
from spiritserve.server.routes import ClientDisconnected, router
from spiritserve.server.scoring_routes import router as scoring_router
from spiritserve.server.web import router as web_router
from spiritserve.server.web import static_files
from spiritserve.settings import Settings
from spiritserve.tokenizers.speech import SpeechTokenizer
from spiritserve.vad import load_vad
from spiritserve.vocoder.base import UnitVocoder
from spiritserve.weights import config_key_policy

logger = logging.getLogger(__name__)


def _speech_device(settings: Settings) -> str:
    if settings.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return settings.device


async def plan_shared_gpu(
    settings: Settings, checkpoint: SpiritCheckpoint, speech_on_gpu: Callable[[], None]
) -> GpuMemoryPlan:
    """Measure the speech stages and split the GPU with the in-process vLLM (gpu_memory.py)."""
    fraction, parameters = settings.engine_memory_fraction, checkpoint.language_model.parameter_count
    plan = await asyncio.to_thread(share_gpu, speech_on_gpu, fraction, parameters, settings.engine_dtype)
    logger.info("%s", plan.describe())
    return plan


async def start_engine(
    settings: Settings, checkpoint: SpiritCheckpoint, plan: GpuMemoryPlan | None
) -> LanguageModelEngine:
    """vLLM in this process (given `plan`'s share of a GPU shared with the speech stages), or the remote engine
    at `engine_url` once it answers."""
    if settings.engine_url is None:
        engine_settings = settings.engine_settings(on_cpu=not torch.cuda.is_available())
        if plan is not None:
            engine_settings = replace(engine_settings, gpu_memory_utilization=plan.engine_fraction)
        return InProcessEngine.start(checkpoint.language_model.path, engine_settings)
    engine = await RemoteEngine.connect(settings.engine_url, settings.engine_wait_s, settings.engine_failover_s)
    if engine.model_id != checkpoint.language_model.path.name:  # a name is all the API tells of the weights
        logger.warning("the engine at %s serves %r, not %r: is it started on this checkpoint's LM folder?",
                       settings.engine_url, engine.model_id, checkpoint.language_model.path.name)  # fmt: skip
    if engine.max_model_len is not None and engine.max_model_len < settings.engine_max_model_len:
        await engine.close()
        raise CheckpointError(
            f"the engine at {settings.engine_url} serves a context of {engine.max_model_len} tokens, less than this "
            f"gateway's {settings.engine_max_model_len} (SPIRITSERVE_ENGINE_MAX_MODEL_LEN): give both the same value"
        )
    return engine


async def load_pipeline(settings: Settings, checkpoint: SpiritCheckpoint, metrics: ServiceMetrics) -> SpiritPipeline:
    """Load the speech stages and start the engine for a checkpoint that passed `prepare_checkpoint`."""
    device = _speech_device(settings)
    logger.info(
        "serving %s (%s variant) from %s; speech stages on %s",
        checkpoint.language_model.path.name,
        checkpoint.variant,
        checkpoint.root,
        device,
    )
    with config_key_policy(strict=settings.strict_config):
        speech_tokenizer = await asyncio.to_thread(
            SpeechTokenizer.from_dirs,
            checkpoint.hubert_dir,
            checkpoint.pitch_dir,
            checkpoint.style_dir,
            device,
            settings.speech_dtype,
        )
        vocoder = await asyncio.to_thread(UnitVocoder.from_dir, checkpoint.vocoder_dir, device, settings.vocoder_dtype)
    if device == "cuda" and settings.cuda_graphs:  # before the GPU plan: the graphs' memory is the stages' too
        await asyncio.to_thread(speech_tokenizer.use_fixed_shapes)
        await asyncio.to_thread(vocoder.use_fixed_shapes)
    plan = None
    if device == "cuda" and settings.engine_url is None and torch.cuda.is_available():
        workload = speech_workload(speech_tokenizer, vocoder, settings.batch_max_size)
        plan = await plan_shared_gpu(settings, checkpoint, workload)
    engine = await start_engine(settings, checkpoint, plan)
    limits = settings.pipeline_limits()
    pipeline = SpiritPipeline(checkpoint, speech_tokenizer, vocoder, engine, limits, on_batch=metrics.observe_batch)
    pipeline.gpu_memory = plan
    return pipeline


def _error(status_code: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status_code)


def _describe_validation_error(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            parts.append(f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})")
            continue
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        parts.append(f"{location}: {error.get('msg')}" if location else str(error.get("msg")))
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    """One JSON error shape for every failure: {"error": {"type", "message"}}."""

    @app.exception_handler(SpiritServeError)
    async def spiritserve_error(request: Request, exc: SpiritServeError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=exc.status_code, headers=error_headers(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "ValidationError", _describe_validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = _error(exc.status_code, "HTTPError", str(exc.detail))
        response.headers.update(exc.headers or {})  # e.g. Allow on 405
        return response

    @app.exception_handler(ClientDisconnected)
    async def client_disconnected(request: Request, exc: ClientDisconnected) -> Response:
        return Response(status_code=499)  # nobody reads it; logged and counted like nginx does

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not the client's fault: the one error shape, no internals. Starlette then re-raises the exception
        # to the server (uvicorn), which logs its traceback and ends a response already under way.
        logger.error("%s %s failed with %r; answered 500 (traceback below)", request.method, request.url.path, exc)
        return _error(500, "InternalServerError", "the server failed to answer this request; see the server log")


def build_app(settings: Settings, checkpoint: SpiritCheckpoint) -> FastAPI:
    admission = settings.admission()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Read before the engine starts, so that a bad file fails start-up in seconds.
        pools = await asyncio.to_thread(read_pools, settings, checkpoint.variant == "expressive")
        app.state.vad_factory = await asyncio.to_thread(load_vad)  # server VAD: one model, each session's own state
        pipeline = await load_pipeline(settings, checkpoint, metrics)
        try:
            app.state.few_shot = await build_prompts(pipeline, pools.transcription, pools.speech)
            app.state.classify_examples = await tokenize_examples(pipeline, pools.classification)
            await pipeline.warm_up()
            app.state.pipeline = pipeline
            logger.info("ready")
            yield
        finally:
            app.state.pipeline = None
            await pipeline.engine.close()
            await pipeline.close()

    app = FastAPI(
        title="spiritserve",
        version=__version__,
        lifespan=lifespan,
        description="Spirit LM speech and text generation served with vLLM.",
        docs_url=None,  # /docs and /redoc come from install_docs: assets served from here, not a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.pipeline = None
    app.state.few_shot = FewShotPrompts()  # zero-shot; the lifespan builds the configured pools' prompts
    app.state.classify_examples = []  # zero-shot; the lifespan tokenizes the configured classification pool
    app.state.admission = admission
    metrics.watch(admission, app.state)
    app.include_router(router)
    app.include_router(scoring_router)  # /v1/score, /v1/classify
    app.include_router(openai_router)  # /v1/chat/completions, /v1/audio/*, /v1/models
    app.include_router(realtime_router)
    app.include_router(web_router)  # the voice-chat page at /
    install_docs(app)  # /docs, /redoc and /static/docs/*, before /static would shadow them
    app.mount("/static", static_files(), name="static")
    install_error_handlers(app)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        body_read_timeout_s=settings.body_read_timeout_s,
    )
    app.add_middleware(
        AccessMiddleware,
        api_keys=ApiKeys(settings.api_keys, settings.public_paths, settings.api_keys_file),
        rate_limiter=RateLimiter(settings.rate_limit_per_minute),
        origins=OriginPolicy(settings.allowed_origins),
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    if settings.metrics_port is None:  # else the metrics port serves them (cli), and no Ingress can publish them

        @app.get("/metrics", include_in_schema=False)
        async def prometheus_metrics() -> Response:
            return Response(generate_latest(metrics.exposition), media_type=CONTENT_TYPE_LATEST)

    return app
