"""REST routes. Each validates its input, makes one pipeline call and maps the result; no model logic here."""

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from spiritserve.audio import (
    PCM_MEDIA_TYPE,
    SAMPLE_RATE,
    decode_audio,
    encode_pcm16,
    encode_wav,
    streaming_wav_header,
)
from spiritserve.errors import (
    AudioTooLongError,
    BadAudioError,
    BadRequestError,
    EngineUnavailableError,
    UnsupportedMediaTypeError,
)
from spiritserve.pipeline import GenerationInput, GenerationResult, SamplingOptions, SpeechDelta, SpiritPipeline
from spiritserve.server.metrics import ServiceMetrics
from spiritserve.server.schemas import (
    ErrorResponse,
    GenerateRequest,
    GenerationResponse,
    Liveness,
    OutputFields,
    OutputSegmentBody,
    Readiness,
    ResponseFormat,
    SamplingFields,
    ServerDescription,
    SpeechInput,
    SynthesizeRequest,
    TokenizeResponse,
    Usage,
)
from spiritserve.settings import Settings
from spiritserve.tokens import AlignedUnits, Modality, OutputModality, is_unit_string

T = TypeVar("T")
WAV_MEDIA_TYPE = "audio/wav"
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
ERROR_DESCRIPTIONS = {
    400: "undecodable audio, or a body that cannot be parsed",
    401: "no API key, or a wrong one (where keys are required)",
    408: "the request body did not arrive in time",
    413: "the body or the audio is too large or too long",
    415: "wrong content type",
    422: "invalid fields (the message names them)",
    429: "more requests per minute than allowed",
    500: "a failure inside the server",
    503: "overloaded, shutting down, or the model is not loaded",
}


def error_responses(
    *codes: int, model: type[BaseModel] = ErrorResponse, descriptions: dict[int, str] = ERROR_DESCRIPTIONS
) -> dict:
    """OpenAPI entries for the errors a route can answer, all with one error body (the service's by default)."""
    return {
        code: {
            "model": model,
            "description": descriptions[code],
            **({"headers": _RETRY_AFTER} if code in (429, 503) else {}),
        }
        for code in codes
    }


# Every route can be refused by the access middleware (401, 429) or fail inside the server (500); routes with
# a body can also get 400 (unparsable), 408 (too slow), 413 (too large) and 422 (invalid).
ANY_ROUTE_ERRORS = error_responses(401, 429, 500)
MODEL_ROUTE_ERRORS = error_responses(400, 401, 408, 413, 415, 422, 429, 500, 503)
# Content types that may carry audio: browsers and curl label uploads loosely, so the decoder has the last word.
_AUDIO_CONTENT_TYPES = ("audio/", "video/", "application/octet-stream", "application/ogg")

router = APIRouter(responses=ANY_ROUTE_ERRORS)


def get_pipeline(request: Request) -> SpiritPipeline:
    pipeline = getattr(request.app.state, "pipeline", None)
    if pipeline is None or not pipeline.engine.is_healthy:
        raise EngineUnavailableError("the model is not loaded")
    return pipeline


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def require_content_type(expected: str):
    def check(request: Request) -> None:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith(expected):
            raise UnsupportedMediaTypeError(f"expected a {expected} body, got {content_type or 'no content type'!r}")

    return Depends(check)


def model_slot(request: Request) -> Iterator[None]:
    """One in-flight slot per model request, held until its response has been sent (streams included)."""
    with request.app.state.admission.slot():
        yield


PipelineDep = Annotated[SpiritPipeline, Depends(get_pipeline)]
Slot = Depends(model_slot)
SettingsDep = Annotated[Settings, Depends(get_settings)]
Multipart = require_content_type("multipart/form-data")
Json = require_content_type("application/json")


class ClientDisconnected(Exception):
    """The HTTP client went away; its work was cancelled (and its engine request aborted)."""


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it if the client disconnects first (the engine stream then aborts)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise ClientDisconnected()
    return task.result()


async def decode_audio_bytes(data: bytes, settings: Settings):
    """Uploaded or base64 audio → 16 kHz mono, within the byte and duration limits (off the event loop)."""
    if len(data) > settings.max_upload_bytes:
        raise AudioTooLongError(f"the audio exceeds the limit of {settings.max_upload_bytes} bytes")
    return await asyncio.to_thread(decode_audio, data, settings.max_audio_seconds, settings.max_decoded_bytes)


async def decode_upload(upload: UploadFile, settings: Settings):
    content_type = (upload.content_type or "").lower()
    if content_type and not content_type.startswith(_AUDIO_CONTENT_TYPES):
        raise UnsupportedMediaTypeError(f"the 'audio' part has content type {content_type!r}; send an audio file")
    return await decode_audio_bytes(await upload.read(settings.max_upload_bytes + 1), settings)


def _sampling_options(fields: SamplingFields) -> SamplingOptions:
    return SamplingOptions(**fields.model_dump(include=set(SamplingOptions.__dataclass_fields__)))


def _generation_body(result: GenerationResult) -> GenerationResponse:
    audio = result.audio
    return GenerationResponse(
        text=result.text,
        tokens=result.tokens,
        units=result.speech.hubert,
        pitch=result.speech.pitch or None,
        style=result.speech.style or None,
        durations=audio.durations if audio is not None else None,
        segments=[
            OutputSegmentBody(
                modality=segment.modality.value,
                text=segment.text if segment.modality == Modality.TEXT else None,
                tokens=segment.tokens or None,
            )
            for segment in result.segments
        ],
        audio_base64=base64.b64encode(encode_wav(audio.audio)).decode() if audio is not None else None,
        finish_reason=result.finish_reason,
        usage=Usage(
            prompt_tokens=result.prompt_tokens,
            generated_tokens=result.generated_tokens,
            audio_seconds=len(audio.audio) / SAMPLE_RATE if audio is not None else 0.0,
        ),
    )


def _respond(result: GenerationResult, response_format: ResponseFormat) -> Response:
    if response_format == "json":
        return JSONResponse(_generation_body(result).model_dump())
    if result.audio is None:
        raise BadRequestError(f"response_format {response_format!r} needs speech output; ask for 'speech'")
    if response_format == "wav":
        return Response(encode_wav(result.audio.audio), media_type=WAV_MEDIA_TYPE)
    return Response(encode_pcm16(result.audio.audio), media_type=PCM_MEDIA_TYPE)


async def _generate_or_stream(
    request: Request,
    pipeline: SpiritPipeline,
    inputs: list[GenerationInput],
    output: OutputModality,
    fields: OutputFields,
) -> Response:
    """One generation, answered whole, or streamed as audio while it is generated (`stream`)."""
    options = _sampling_options(fields)
    metrics = request.app.state.metrics
    route = request.scope["route"].path
    started = time.perf_counter()
    if not fields.stream:
        result = await cancel_on_disconnect(request, pipeline.generate(inputs, output, options))
        metrics.generated_tokens.labels(output.value).inc(result.generated_tokens)
        if result.audio is not None:
            elapsed = time.perf_counter() - started
            metrics.observe_speech(route, elapsed, elapsed, len(result.audio.audio) / SAMPLE_RATE)
        return _respond(result, fields.response_format)
    if output != OutputModality.SPEECH:
        raise BadRequestError("stream=true streams audio: it needs output_modality 'speech'")
    token_request = await pipeline.prepare(inputs, output, options)
    chunks = pipeline.open_speech_stream(token_request, options)
    wav = fields.response_format == "wav"
    # Starlette cancels the body when the client disconnects, which aborts the engine request.
    body = stream_pcm(chunks, wav, metrics, route, started, SpeechTally())
    return StreamingResponse(body, media_type=WAV_MEDIA_TYPE if wav else PCM_MEDIA_TYPE)


@dataclass
class SpeechTally:
    """What a streamed speech answer produced so far: its usage once the stream ends."""

    generated_tokens: int = 0
    samples: int = 0


async def stream_pcm(
    deltas: AsyncIterator[SpeechDelta], wav: bool, metrics: ServiceMetrics, route: str, started: float,
    tally: SpeechTally,
) -> AsyncIterator[bytes]:  # fmt: skip
    """A speech stream as PCM16 chunks as they come (after a streaming WAV header when `wav`). Closing it closes
    the stream (aborting the engine request); the tokens generated are counted even then."""
    first_audio_s = None
    if wav:
        yield streaming_wav_header()
    try:
        async with aclosing(deltas):
            async for delta in deltas:
                tally.generated_tokens = delta.generated_tokens
                if len(delta.audio):
                    first_audio_s = first_audio_s or time.perf_counter() - started
                    tally.samples += len(delta.audio)
                    yield encode_pcm16(delta.audio)
    finally:
        metrics.generated_tokens.labels(OutputModality.SPEECH.value).inc(tally.generated_tokens)
    metrics.observe_speech(route, first_audio_s, time.perf_counter() - started, tally.samples / SAMPLE_RATE)


class ContinueForm(SamplingFields, OutputFields):
    response_format: ResponseFormat = "wav"


async def continue_form(request: Request) -> ContinueForm:
    """The non-file form fields, validated as one model (FastAPI cannot mix a form model with a file)."""
    form = await request.form()
    fields = {key: value for key, value in form.multi_items() if isinstance(value, str)}
    try:
        return ContinueForm.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc


AUDIO_OR_JSON_ANSWER = {
    200: {
        "model": GenerationResponse,  # application/json, as a reference to the component schema
        "description": "the answer: WAV (streamed: of unknown length), raw PCM16, or JSON, as `response_format` asks",
        "content": {WAV_MEDIA_TYPE: _BINARY, PCM_MEDIA_TYPE: _BINARY},
    },
    **MODEL_ROUTE_ERRORS,
}


@router.post(
    "/v1/speech/continue",
    dependencies=[Multipart, Slot],
    response_class=Response,
    responses=AUDIO_OR_JSON_ANSWER,
)
async def continue_speech(
    request: Request,
    pipeline: PipelineDep,
    settings: SettingsDep,
    audio: Annotated[UploadFile, File(description="speech in any common format, any rate, mono or stereo")],
    form: Annotated[ContinueForm, Depends(continue_form)],
) -> Response:
    """Speech continuation: the uploaded speech is the prompt, the answer is more speech (WAV by default).

    Other form fields: the sampling fields of `/v1/generate`, `response_format` (`wav`, `json` or `pcm`:
    raw 16-bit little-endian mono at 16 kHz) and `stream` (audio sent as it is generated).
    """
    waveform = await decode_upload(audio, settings)
    inputs = [GenerationInput(Modality.SPEECH, audio=waveform)]
    return await _generate_or_stream(request, pipeline, inputs, OutputModality.SPEECH, form)


def _speech_units(tokens: str, pipeline: SpiritPipeline, style_seed: int | None = None) -> AlignedUnits:
    """Check a unit-token string (base: Hu only; expressive: Hu, Pi, St) and align it for the vocoder."""
    if not is_unit_string(tokens):
        raise BadRequestError(f"'tokens' must be unit tokens only, e.g. '[Hu12][Hu7]'; got {tokens[:40]!r}")
    return pipeline.align(tokens, style_seed)


async def generation_input(item, settings: Settings, pipeline: SpiritPipeline) -> GenerationInput:
    if not isinstance(item, SpeechInput):
        if len(item.text) > settings.max_text_chars:
            raise BadRequestError(
                f"a text input is {len(item.text)} characters; the limit is {settings.max_text_chars}"
            )
        return GenerationInput(Modality.TEXT, text=item.text)
    if (item.audio_base64 is None) == (item.tokens is None):
        raise BadRequestError("a speech input needs exactly one of 'audio_base64' or 'tokens'")
    if item.tokens is not None:
        _speech_units(item.tokens, pipeline)
        return GenerationInput(Modality.SPEECH, text=item.tokens)
    try:
        data = base64.b64decode(item.audio_base64, validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII characters (a plain ValueError)
        raise BadAudioError(f"'audio_base64' is not valid base64: {exc}") from exc
    return GenerationInput(Modality.SPEECH, audio=await decode_audio_bytes(data, settings))


@router.post(
    "/v1/generate", dependencies=[Json, Slot], response_model=GenerationResponse, responses=AUDIO_OR_JSON_ANSWER
)
async def generate(request: Request, body: GenerateRequest, pipeline: PipelineDep, settings: SettingsDep) -> Response:
    """Any-to-any generation over an ordered list of text and speech inputs (the reference's `generate`)."""
    inputs = [await generation_input(item, settings, pipeline) for item in body.inputs]
    return await _generate_or_stream(request, pipeline, inputs, body.output_modality, body)


@router.post(
    "/v1/tokenize", dependencies=[Multipart, Slot], response_model=TokenizeResponse, responses=MODEL_ROUTE_ERRORS
)
async def tokenize(
    pipeline: PipelineDep,
    settings: SettingsDep,
    audio: Annotated[UploadFile, File(description="speech in any common format")],
) -> TokenizeResponse:
    """Audio → the token string the LM would see, plus the raw units of each stream."""
    waveform = await decode_upload(audio, settings)
    units = await pipeline.tokenize(waveform)
    return TokenizeResponse(
        tokens=units.to_string(), units=units.as_dict(), duration_seconds=len(waveform) / SAMPLE_RATE
    )


@router.post(
    "/v1/synthesize",
    dependencies=[Json, Slot],
    response_class=Response,
    responses={200: {"description": "16 kHz mono 16-bit WAV", "content": {WAV_MEDIA_TYPE: _BINARY}}}
    | MODEL_ROUTE_ERRORS,
)
async def synthesize(body: SynthesizeRequest, pipeline: PipelineDep) -> Response:
    """Unit tokens (as the LM writes them) or raw unit streams (as `/v1/tokenize` returns them) → 16 kHz WAV.

    Raw expressive streams (12.5 Hz pitch, 1 Hz style) are resynthesis: durations are not predicted.
    """
    if (body.tokens is None) == (body.units is None):
        raise BadRequestError("give exactly one of 'tokens' (a unit-token string) or 'units' (raw unit streams)")
    if body.tokens is not None:
        units = _speech_units(body.tokens, pipeline, body.seed)
    else:
        units = AlignedUnits(body.units.hubert, body.units.pitch, body.units.style)
    output = await pipeline.synthesize(units, body.speaker, body.style, body.predict_durations)
    return Response(encode_wav(output.audio), media_type=WAV_MEDIA_TYPE)


@router.get("/v1/server", response_model=ServerDescription, responses=error_responses(503))
async def describe_server(pipeline: PipelineDep) -> ServerDescription:
    """What is served: the model id, its variant, the checkpoint root, and whether its weights are random."""
    checkpoint = pipeline.checkpoint
    return ServerDescription(
        model=checkpoint.language_model.path.name,  # the id /v1/models lists
        variant=checkpoint.variant,
        checkpoint_root=str(checkpoint.root),
        random_weights=checkpoint.random_weights,
    )


def _probe_answers(model: type, ok: str, failing: str) -> dict:
    return {200: {"model": model, "description": ok}, 503: {"model": model, "description": failing}}


@router.get("/healthz", responses=_probe_answers(Liveness, "alive", "the LM engine has failed: restart the process"))
async def healthz(request: Request) -> JSONResponse:
    """Liveness: the process serves HTTP and its LM engine has not failed. A dead in-process engine never comes
    back, so failing here lets the orchestrator restart the pod (readiness alone would leave it NotReady forever);
    a remote engine out of reach shows in readiness only, since restarting this gateway would not help."""
    pipeline = getattr(request.app.state, "pipeline", None)
    if pipeline is not None and pipeline.engine.has_failed:
        return JSONResponse({"status": "engine_failed"}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/readyz", responses=_probe_answers(Readiness, "ready", "loading, draining, or the engine stopped"))
async def readyz(request: Request) -> JSONResponse:
    """Readiness: models loaded, warm-up done, engine alive."""
    pipeline = getattr(request.app.state, "pipeline", None)
    if request.app.state.admission.draining:
        return JSONResponse({"ready": False, "draining": True}, status_code=503)
    if pipeline is None or not pipeline.engine.is_healthy:
        return JSONResponse({"ready": False}, status_code=503)
    ready = {"ready": True, "variant": pipeline.checkpoint.variant, "speakers": pipeline.vocoder.speakers}
    if pipeline.gpu_memory is not None:
        ready["gpu_memory"] = pipeline.gpu_memory.gib()
    return JSONResponse(ready)
