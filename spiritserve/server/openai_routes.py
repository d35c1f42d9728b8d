"""OpenAI-compatible REST routes: what OpenAI's SDKs call with `base_url = http://HOST:PORT/v1`.

`/v1/chat/completions`, `/v1/audio/speech`, `/v1/audio/transcriptions`, `/v1/models`. Like the native routes they
translate the wire format into one pipeline call and map the result back; admission, auth, metrics and the
disconnect abort are the native routes' own dependencies. Errors on these routes, and only these, take OpenAI's
shape `{"error": {"message", "type", "param", "code"}}` (the route class below), with 400 where the native routes
answer 422, so that the SDKs raise their usual exceptions.

Spirit LM is a base LM over interleaved text and speech, not a chat model: the messages' text and audio parts,
in order (system and developer messages first), are the prompt it continues; roles only order the parts.
"""

import asyncio
import base64
import binascii
import io
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Annotated

import numpy as np
import soundfile
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from spiritserve.audio import PCM_MEDIA_TYPE, SAMPLE_RATE, encode_pcm16, encode_wav
from spiritserve.errors import BadRequestError, SpiritServeError
from spiritserve.few_shot import FewShotPrompts
from spiritserve.pipeline import GenerationInput, GenerationResult, SamplingOptions, SpiritPipeline
from spiritserve.server.error_messages import error_headers
from spiritserve.server.metrics import ServiceMetrics
from spiritserve.server.openai_schemas import (
    AssistantMessage,
    AudioOutputOptions,
    ChatCompletion,
    ChatCompletionAudio,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    CompletionUsage,
    ModelCard,
    ModelList,
    OpenAIErrorResponse,
    SpeechRequest,
    TextPart,
    TranscriptionFormat,
    TranscriptionResponse,
    TranscriptionSegment,
)
from spiritserve.server.routes import (
    ERROR_DESCRIPTIONS,
    WAV_MEDIA_TYPE,
    Json,
    Multipart,
    PipelineDep,
    SettingsDep,
    Slot,
    SpeechTally,
    cancel_on_disconnect,
    decode_audio_bytes,
    decode_upload,
    error_responses,
    stream_pcm,
)
from spiritserve.settings import Settings
from spiritserve.tokens import Modality, OutputModality
from spiritserve.voices import speaker_for

logger = logging.getLogger(__name__)

MODEL_OWNER = "meta"
ALIASES = ("spirit-lm", "spiritlm")  # plus "spirit-lm-<variant>" and the served id itself
AUDIO_EXPIRY_S = 3600  # nothing is stored; `expires_at` is there because the SDKs expect it
SSE_MEDIA_TYPE = "text/event-stream"
# Output formats soundfile writes: format name → (soundfile format, subtype, media type); pcm is raw PCM16.
_ENCODINGS = {
    "wav": ("WAV", "PCM_16", WAV_MEDIA_TYPE),
    "flac": ("FLAC", "PCM_16", "audio/flac"),
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg"),
    "opus": ("OGG", "OPUS", "audio/ogg"),
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
# Before OpenAPI 3.2 an event stream's `schema` describes one event: its `data` is a JSON object (or `[DONE]`).
_SSE_EVENT = {
    "type": "object",
    "properties": {
        "data": {"type": "string", "description": "one JSON object, or [DONE]"},
        "event": {"type": "string"},
    },
    "required": ["data"],
}
_SSE = {SSE_MEDIA_TYPE: {"schema": _SSE_EVENT}}

# --- errors in OpenAI's shape ------------------------------------------------------------------------------------

_ERROR_TYPES = {401: "authentication_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error"}
_ERROR_DESCRIPTIONS = {
    **ERROR_DESCRIPTIONS,
    400: "invalid fields, undecodable audio, or a body that cannot be parsed (the message names the field)",
    404: "an unknown model (`code: model_not_found`)",
}


def openai_error_responses(*codes: int) -> dict:
    """OpenAPI entries for the errors a route can answer, in OpenAI's error shape."""
    return error_responses(*codes, model=OpenAIErrorResponse, descriptions=_ERROR_DESCRIPTIONS)


MODEL_ROUTE_ERRORS = openai_error_responses(400, 401, 404, 408, 413, 415, 429, 500, 503)


class InvalidParameterError(BadRequestError):
    """A value these routes cannot serve; `param` names the field, as OpenAI's errors do."""

    status_code = 400

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class ModelNotFoundError(InvalidParameterError):
    status_code = 404


def _error_code(exc: SpiritServeError) -> str:
    """The exception's own code, else its class name in snake case (`BadAudioError` → `bad_audio`)."""
    if getattr(exc, "code", None):
        return exc.code
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__.removesuffix("Error")).lower()


def openai_error(
    status: int, message: str, param: str | None = None, code: str | None = None, headers: dict | None = None
) -> JSONResponse:
    body = {"message": message, "type": _ERROR_TYPES.get(status, "invalid_request_error"), "param": param, "code": code}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    parts, params = [], []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            parts.append(f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})")
            continue
        location = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path"))
        params.append(location or None)
        parts.append(f"{location}: {error.get('msg')}" if location else str(error.get("msg")))
    return openai_error(400, "; ".join(parts), param=params[0] if params else None, code="invalid_value")


def _spiritserve_error(exc: SpiritServeError) -> JSONResponse:
    status = 400 if exc.status_code == 422 else exc.status_code  # OpenAI answers invalid values with 400
    return openai_error(status, str(exc), getattr(exc, "param", None), _error_code(exc), error_headers(exc))


class OpenAIRoute(APIRoute):
    """Answers the errors raised while validating, admitting or serving a request in OpenAI's shape. Bugs still
    reach the app's handler (logged, a 500); a disconnected client still gets its 499."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return _validation_error(exc)
            except SpiritServeError as exc:
                return _spiritserve_error(exc)
            except StarletteHTTPException as exc:
                return openai_error(exc.status_code, str(exc.detail), headers=exc.headers)

        return handle


# "4XX" in place of FastAPI's default 422 entry, which these routes never answer (invalid values are 400).
_OTHER_CLIENT_ERRORS = {"4XX": {"model": OpenAIErrorResponse, "description": "any other client error"}}
router = APIRouter(
    route_class=OpenAIRoute,
    responses=openai_error_responses(401, 429, 500) | _OTHER_CLIENT_ERRORS,
    tags=["OpenAI-compatible"],
)

# --- shared helpers ----------------------------------------------------------------------------------------------


def served_model(pipeline: SpiritPipeline) -> str:
    """The served model's id: the LM folder's name, e.g. `spirit-lm-base-7b` (vLLM's `model_name` too)."""
    return pipeline.checkpoint.language_model.path.name


def check_model(model: str | None, pipeline: SpiritPipeline) -> str:
    """The rule: absent, the served id, `spirit-lm`, `spiritlm` or `spirit-lm-<variant>` name the served model;
    anything else is a 404 `model_not_found`, as OpenAI answers."""
    name = served_model(pipeline)
    if model is None or model in (name, *ALIASES, f"spirit-lm-{pipeline.checkpoint.variant}"):
        return name
    raise ModelNotFoundError(
        f"the model {model!r} does not exist here; this server serves {name!r} (GET /v1/models)", "model",
        "model_not_found",
    )  # fmt: skip


def speaker_index(voice: str | int | None, pipeline: SpiritPipeline, param: str) -> int | None:
    """The speaker a request's voice names (spiritserve.voices), or a 400 naming `param`."""
    try:
        return speaker_for(voice, list(pipeline.vocoder.speakers or []))
    except ValueError as exc:
        raise InvalidParameterError(str(exc), param) from exc


def _encode(audio: np.ndarray, audio_format: str) -> tuple[bytes, str]:
    """Audio → bytes in a format (`pcm`/`pcm16`: raw 16-bit little-endian) and its media type."""
    if audio_format in ("pcm", "pcm16"):
        return encode_pcm16(audio), PCM_MEDIA_TYPE
    if audio_format == "wav":
        return encode_wav(audio), WAV_MEDIA_TYPE
    container, subtype, media_type = _ENCODINGS[audio_format]
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, format=container, subtype=subtype)
    return buffer.getvalue(), media_type


async def encode_audio(audio: np.ndarray, audio_format: str) -> tuple[bytes, str]:
    return await asyncio.to_thread(_encode, audio, audio_format)


def _sse(payload: dict) -> bytes:
    return f"data: {JSONResponse(payload).body.decode()}\n\n".encode()


def _sse_error(exc: SpiritServeError) -> bytes:
    status = 400 if exc.status_code == 422 else exc.status_code
    error = {"message": str(exc), "type": _ERROR_TYPES.get(status, "invalid_request_error"), "param": None,
             "code": _error_code(exc)}  # fmt: skip
    return _sse({"error": error})


def _finish_reason(result_reason: str) -> str:
    return "stop" if result_reason == "stop" else "length"  # a timeout, like a budget, cut the answer short


def _record(request: Request, result: GenerationResult, output: OutputModality, started: float) -> None:
    metrics = request.app.state.metrics
    metrics.generated_tokens.labels(output.value).inc(result.generated_tokens)
    if result.audio is not None:
        elapsed = time.perf_counter() - started
        metrics.observe_speech(request.scope["route"].path, elapsed, elapsed, len(result.audio.audio) / SAMPLE_RATE)


def _check_text(text: str, settings: Settings, param: str) -> None:
    if len(text) > settings.max_text_chars:
        raise InvalidParameterError(f"a text is {len(text)} characters; the limit is {settings.max_text_chars}", param)


# --- chat completions --------------------------------------------------------------------------------------------


async def _chat_inputs(messages: list[ChatMessage], settings: Settings) -> list[GenerationInput]:
    """The messages' parts in order, system and developer messages first: the interleaved prompt."""
    first = [index for index, message in enumerate(messages) if message.role in ("system", "developer")]
    order = first + [index for index in range(len(messages)) if index not in first]
    inputs: list[GenerationInput] = []
    for index in order:
        content = messages[index].content
        parts = [TextPart(type="text", text=content)] if isinstance(content, str) else content or []
        for number, part in enumerate(parts):
            param = f"messages.{index}.content" + ("" if isinstance(content, str) else f".{number}")
            if isinstance(part, TextPart):
                _check_text(part.text, settings, param)
                if part.text:
                    inputs.append(GenerationInput(Modality.TEXT, text=part.text))
                continue
            try:
                data = base64.b64decode(part.input_audio.data, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidParameterError(f"{param}.input_audio.data is not valid base64: {exc}", param) from exc
            inputs.append(GenerationInput(Modality.SPEECH, audio=await decode_audio_bytes(data, settings)))
    if not inputs:
        raise InvalidParameterError("the messages hold no text and no audio: there is no prompt", "messages")
    return inputs


def _chat_options(body: ChatCompletionRequest, speaker: int | None) -> SamplingOptions:
    given = {"temperature": body.temperature, "top_p": body.top_p, "seed": body.seed, "speaker": speaker,
             "max_new_tokens": body.max_completion_tokens or body.max_tokens}  # fmt: skip
    return SamplingOptions(**{name: value for name, value in given.items() if value is not None})


CHAT_ANSWER = {
    200: {
        "model": ChatCompletion,
        "description": "the completion; with `stream`, server-sent `chat.completion.chunk` events ending `[DONE]`",
        "content": _SSE,
    },
    **MODEL_ROUTE_ERRORS,
}


@router.post("/v1/chat/completions", dependencies=[Json, Slot], response_class=Response, responses=CHAT_ANSWER)
async def chat_completions(
    request: Request, body: ChatCompletionRequest, pipeline: PipelineDep, settings: SettingsDep
) -> Response:
    """OpenAI's chat completions over Spirit LM, a base LM: the messages' `text` and `input_audio` parts, in
    order (system and developer messages first), are the interleaved prompt it continues.

    `modalities: ["text"]` answers in text; with `"audio"` it answers in speech (`message.audio`, in
    `audio.format`, with an empty transcript and `content: null`): Spirit LM answers in one modality.
    `audio.voice` is a speaker name from speakers.txt or its index. With `stream`, the deltas carry
    `content` (text) or `audio.data` (base64 PCM16, 16 kHz mono) as generated.
    """
    model = check_model(body.model, pipeline)
    output = OutputModality.SPEECH if "audio" in body.modalities else OutputModality.TEXT
    audio_options = body.audio or AudioOutputOptions()
    options = _chat_options(body, speaker_index(audio_options.voice, pipeline, "audio.voice"))
    inputs = await _chat_inputs(body.messages, settings)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        token_request = await pipeline.prepare(inputs, output, options)
        metrics = request.app.state.metrics
        events = _chat_events(
            pipeline, metrics, token_request, options, output, completion_id, created, model, include_usage
        )
        return StreamingResponse(events, media_type=SSE_MEDIA_TYPE, headers={"Cache-Control": "no-cache"})
    started = time.perf_counter()
    result = await cancel_on_disconnect(request, pipeline.generate(inputs, output, options, completion_id))
    _record(request, result, output, started)
    audio = None
    if result.audio is not None:
        data, _ = await encode_audio(result.audio.audio, audio_options.format)
        audio = ChatCompletionAudio(
            id=f"audio_{uuid.uuid4().hex}", data=base64.b64encode(data).decode(), expires_at=created + AUDIO_EXPIRY_S,
            transcript="",
        )  # fmt: skip
    message = AssistantMessage(content=None if audio is not None else result.text, audio=audio)
    completion = ChatCompletion(
        id=completion_id, created=created, model=model,
        choices=[Choice(index=0, message=message, finish_reason=_finish_reason(result.finish_reason))],
        usage=CompletionUsage(prompt_tokens=result.prompt_tokens, completion_tokens=result.generated_tokens,
                              total_tokens=result.prompt_tokens + result.generated_tokens),
    )  # fmt: skip
    return JSONResponse(completion.model_dump(mode="json"))


async def _chat_events(
    pipeline: SpiritPipeline,
    metrics: ServiceMetrics,
    token_request,
    options: SamplingOptions,
    output: OutputModality,
    completion_id: str,
    created: int,
    model: str,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """`chat.completion.chunk` events: the role, the deltas, the finish reason, the usage (if asked), `[DONE]`.
    Starlette cancels this when the client disconnects, which aborts the engine request."""
    usage_field = {"usage": None} if include_usage else {}

    def chunk(delta: dict, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse({"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [choice], **usage_field})  # fmt: skip

    completion_tokens = 0
    yield chunk({"role": "assistant", "content": "" if output == OutputModality.TEXT else None})
    try:
        if output == OutputModality.TEXT:
            async with aclosing(pipeline.stream_text(token_request, completion_id)) as pieces:
                async for piece in pieces:
                    completion_tokens = piece.generated_tokens
                    if piece.text:
                        yield chunk({"content": piece.text})
            finish_reason = _finish_reason(piece.finish_reason)
        else:
            audio_id = f"audio_{uuid.uuid4().hex}"
            async with aclosing(pipeline.open_speech_stream(token_request, options, completion_id)) as deltas:
                async for delta in deltas:
                    completion_tokens = delta.generated_tokens
                    if len(delta.audio):
                        data = base64.b64encode(encode_pcm16(delta.audio)).decode()
                        yield chunk({"audio": {"id": audio_id, "data": data, "expires_at": created + AUDIO_EXPIRY_S}})
            yield chunk({"audio": {"id": audio_id, "transcript": ""}})
            finish_reason = "length"  # speech output runs to its budget (EOS is banned)
    except SpiritServeError as exc:  # e.g. the engine failed: the stream has started, so it says so
        logger.warning("request %s: stream ended by %r", completion_id, exc)
        yield _sse_error(exc)
        return
    finally:  # what was generated, also when the client left early
        metrics.generated_tokens.labels(output.value).inc(completion_tokens)
    yield chunk({}, finish_reason)
    if include_usage:
        prompt_tokens = len(token_request.prompt_ids)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip
        yield _sse({"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [], "usage": usage})  # fmt: skip
    yield b"data: [DONE]\n\n"


# --- audio -------------------------------------------------------------------------------------------------------


def get_few_shot(request: Request) -> FewShotPrompts:
    return request.app.state.few_shot


FewShotDep = Annotated[FewShotPrompts, Depends(get_few_shot)]

SPEECH_ANSWER = {
    200: {
        "description": "the speech (16 kHz mono) in `response_format`; wav and pcm are streamed as generated (a WAV "
        "of unknown length); with `stream_format: sse`, `speech.audio.delta` events then `speech.audio.done`",
        "content": {
            WAV_MEDIA_TYPE: _BINARY,
            PCM_MEDIA_TYPE: _BINARY,
            **{media_type: _BINARY for _, _, media_type in _ENCODINGS.values()},
            **_SSE,
        },
    },
    **MODEL_ROUTE_ERRORS,
}


@router.post("/v1/audio/speech", dependencies=[Json, Slot], response_class=Response, responses=SPEECH_ANSWER)
async def create_speech(
    request: Request, body: SpeechRequest, pipeline: PipelineDep, settings: SettingsDep, few_shot: FewShotDep
) -> Response:
    """Text → speech through Spirit LM, the answer forced to speech. Zero-shot the `input` text is the prompt (a
    base LM continues the text in speech; it does not read it aloud); with a few-shot pool configured
    (`SPIRITSERVE_TTS_EXAMPLES`) example readings come first, and the answer ends at the spoken "stop" the
    examples end with (cut from the audio). `voice`: a speaker name or index; `speed`: 1.0.

    Also accepted: `seed`, `max_speech_seconds` (the speech budget; default the server's).
    """
    check_model(body.model, pipeline)
    _check_text(body.input, settings, "input")
    options = SamplingOptions(
        seed=body.seed, max_speech_seconds=body.max_speech_seconds, speaker=speaker_index(body.voice, pipeline, "voice")
    )
    started = time.perf_counter()
    metrics = request.app.state.metrics
    route = request.scope["route"].path
    if body.response_format not in ("wav", "pcm"):  # whole, then encoded
        result = await cancel_on_disconnect(request, few_shot.speak(pipeline, body.input, options))
        _record(request, result, OutputModality.SPEECH, started)
        data, media_type = await encode_audio(result.audio.audio, body.response_format)
        if body.stream_format == "audio":
            return Response(data, media_type=media_type)
        usage = {"input_tokens": result.prompt_tokens, "output_tokens": result.generated_tokens,
                 "total_tokens": result.prompt_tokens + result.generated_tokens}  # fmt: skip

        async def whole() -> AsyncIterator[bytes]:
            yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
            yield _sse({"type": "speech.audio.done", "usage": usage})

        return StreamingResponse(whole(), media_type=SSE_MEDIA_TYPE)
    token_request, stop = await few_shot.speech_request(pipeline, body.input, options)
    tally = SpeechTally()
    wav = body.response_format == "wav"
    audio_bytes = stream_pcm(pipeline.open_speech_stream(token_request, options, stop=stop), wav, metrics, route,
                             started, tally)  # fmt: skip

    if body.stream_format == "audio":
        return StreamingResponse(audio_bytes, media_type=WAV_MEDIA_TYPE if wav else PCM_MEDIA_TYPE)

    async def events() -> AsyncIterator[bytes]:
        try:
            async for data in audio_bytes:
                yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
        except SpiritServeError as exc:
            yield _sse_error(exc)
            return
        input_tokens = len(token_request.prompt_ids)
        usage = {"input_tokens": input_tokens, "output_tokens": tally.generated_tokens,
                 "total_tokens": input_tokens + tally.generated_tokens}  # fmt: skip
        yield _sse({"type": "speech.audio.done", "usage": usage})

    return StreamingResponse(events(), media_type=SSE_MEDIA_TYPE, headers={"Cache-Control": "no-cache"})


TRANSCRIPTION_ANSWER = {
    200: {
        "model": TranscriptionResponse,
        "description": "`{text}` (json), the same with `task`, `language`, `duration`, `segments` (verbose_json), or "
        "the text alone (text)",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    **MODEL_ROUTE_ERRORS,
}


@router.post(
    "/v1/audio/transcriptions", dependencies=[Multipart, Slot], response_class=Response, responses=TRANSCRIPTION_ANSWER
)
async def create_transcription(
    request: Request,
    pipeline: PipelineDep,
    settings: SettingsDep,
    few_shot: FewShotDep,
    file: Annotated[UploadFile, File(description="speech in any common format, any rate, mono or stereo")],
    model: Annotated[str | None, Form(description="the served model's id or an alias; default: it")] = None,
    response_format: Annotated[TranscriptionFormat, Form()] = "json",
    language: Annotated[str | None, Form(description="accepted; Spirit LM was trained on English")] = None,
    prompt: Annotated[str | None, Form(description="accepted and not used (see the route's description)")] = None,
    temperature: Annotated[float, Form(ge=0.0, le=2.0, description="0 (default): greedy")] = 0.0,
    stream: Annotated[bool, Form(description="not supported: false")] = False,
) -> Response:
    """Speech → text through Spirit LM, the answer forced to text.

    Zero-shot (no pool configured) the audio is the prompt, and a base LM continues the speech in text rather than
    transcribing it: expect a loose transcript. With a few-shot pool (`SPIRITSERVE_ASR_EXAMPLES`; how the paper
    measures ASR, spiritlm-compat.md §11) example speech/transcript pairs come first, and the answer ends at the
    examples' end flag. `prompt` is accepted and not used. srt/vtt and streaming are not supported. `json` adds
    `usage` (prompt and answer tokens).
    """
    check_model(model, pipeline)
    if stream:
        raise InvalidParameterError("streamed transcriptions are not supported: send stream=false", "stream")
    waveform = await decode_upload(file, settings)
    options = SamplingOptions(temperature=temperature)
    started = time.perf_counter()
    result = await cancel_on_disconnect(request, few_shot.transcribe(pipeline, waveform, options))
    _record(request, result, OutputModality.TEXT, started)
    text = result.text.strip()
    if response_format == "text":
        return PlainTextResponse(text)
    if response_format == "json":
        usage = {"type": "tokens", "input_tokens": result.prompt_tokens, "output_tokens": result.generated_tokens,
                 "total_tokens": result.prompt_tokens + result.generated_tokens}  # fmt: skip
        return JSONResponse({"text": text, "usage": usage})
    duration = len(waveform) / SAMPLE_RATE
    verbose = TranscriptionResponse(
        text=text, task="transcribe", language=language or "english", duration=duration,
        segments=[TranscriptionSegment(id=0, start=0.0, end=duration, text=text)],
    )  # fmt: skip
    return JSONResponse(verbose.model_dump(mode="json"))


# --- models ------------------------------------------------------------------------------------------------------


def _model_card(pipeline: SpiritPipeline) -> ModelCard:
    created = int(pipeline.checkpoint.language_model.path.stat().st_mtime)
    return ModelCard(id=served_model(pipeline), created=created, owned_by=MODEL_OWNER)


@router.get("/v1/models", response_model=ModelList, responses=openai_error_responses(503))
async def list_models(pipeline: PipelineDep) -> ModelList:
    """The served model (one per server). Requests may name it by this id or by an alias: `spirit-lm`,
    `spiritlm`, `spirit-lm-<variant>`; any other name is a 404 `model_not_found`."""
    return ModelList(data=[_model_card(pipeline)])


@router.get("/v1/models/{model_id}", response_model=ModelCard, responses=openai_error_responses(404, 503))
async def retrieve_model(model_id: str, pipeline: PipelineDep) -> ModelCard:
    """The served model, by its id or an alias."""
    check_model(model_id, pipeline)
    return _model_card(pipeline)
