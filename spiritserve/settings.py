"""Service configuration: one pydantic-settings object, env prefix `SPIRITSERVE_`, built once in `main()`.

Helm values and the Dockerfile map onto the same environment names. The checkpoint root also honours the
reference's `SPIRITLM_CHECKPOINTS_DIR` (`SPIRITSERVE_CHECKPOINTS` wins when both are set). List-valued settings
are comma-separated in the environment. Each part of the server gets its settings from one method here:
`engine_settings`, `pipeline_limits`, `admission`, `max_body_bytes`.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from spiritserve.engine.engine import EngineDtype, EngineSettings
from spiritserve.numerics import Precision
from spiritserve.server.admission import Admission

if TYPE_CHECKING:  # the pipeline imports torch and every stage; only `pipeline_limits` needs it, when called
    from spiritserve.pipeline import PipelineLimits

# A comma-separated string in the environment (not JSON, pydantic-settings' default for lists).
CommaSeparated = Annotated[list[str], NoDecode]
# vLLM's CPU backend reserves `engine_memory_fraction` of *host* memory: on CPU, unless `engine_kv_cache_bytes` is
# set, the KV cache is this size and the fraction at most CPU_MAX_MEMORY_FRACTION.
CPU_KV_CACHE_BYTES = 512 * 2**20
CPU_MAX_MEMORY_FRACTION = 0.3


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPIRITSERVE_", frozen=True, validate_by_name=True)

    checkpoints: Path | None = Field(
        None,
        validation_alias=AliasChoices("SPIRITSERVE_CHECKPOINTS", "SPIRITLM_CHECKPOINTS_DIR"),
        description="checkpoint root (also read from the reference's SPIRITLM_CHECKPOINTS_DIR); unset: tiny",
    )
    variant: Literal["base", "expressive"] | None = Field(
        None, description="variant to serve; unset: the only one under the root, else base"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="speech stages' device; auto: CUDA if any")
    strict_config: bool = Field(
        False, description="refuse unknown keys in the checkpoint's config files (default: log them and go on)"
    )
    speech_dtype: Precision = Field(
        "float32",
        description="speech encoders' precision (float32 exact, tf32, bfloat16, float16); reduce only where "
        "check-precision shows >= 99.5% unit agreement",
    )
    cuda_graphs: bool = Field(
        True,
        description="on CUDA, pad HuBERT and vocoder batches to fixed shapes replayed as captured graphs (0: eager)",
    )
    vocoder_dtype: Precision = Field(
        "float32", description="vocoder generator's precision (durations stay exact); see check-precision's SNR"
    )

    max_upload_bytes: int = Field(
        64 * 2**20, gt=0, description="largest accepted audio upload (the body limit follows: max_body_bytes)"
    )
    max_audio_seconds: float = Field(300.0, gt=0, description="longest accepted input audio, after decoding")
    max_decoded_bytes: int = Field(  # 300 s of 48 kHz stereo; = audio.DEFAULT_MAX_DECODED_BYTES
        300 * 48_000 * 2 * 4, gt=0, description="largest input audio as decoded float32: rate × channels × s × 4"
    )
    max_text_chars: int = Field(20_000, gt=0, description="longest accepted text input")
    body_read_timeout_s: float = Field(30.0, gt=0, description="a request body must arrive within this; else 408")

    default_speech_seconds: float = Field(10.0, gt=0, description="speech output budget when none is asked")
    max_speech_seconds: float = Field(120.0, gt=0, description="largest speech output budget a request may ask")
    default_text_tokens: int = Field(50, gt=0, description="text output budget when none is asked (STSP: 50)")
    generation_timeout_s: float = Field(120.0, gt=0, description="wall-clock limit of one generation")

    asr_examples: Path | None = Field(
        None, description="few-shot transcription pool: a folder of NAME.<audio> + NAME.txt pairs; unset: zero-shot"
    )
    tts_examples: Path | None = Field(
        None, description="few-shot speech pool, the same layout plus stop.<audio> (spoken 'stop'); unset: zero-shot"
    )
    classify_examples: Path | None = Field(
        None, description="/v1/classify examples: NAME.<audio> + NAME.txt holding its label; unset: zero-shot"
    )

    batch_max_size: int = Field(16, ge=1, le=256, description="most requests one speech-stage batch holds")
    batch_max_wait_ms: float = Field(5.0, ge=0, le=1000, description="how long a batch waits to fill")

    realtime_max_sessions: int = Field(16, ge=1, description="more websocket sessions are refused (close 1013)")
    realtime_idle_timeout_s: float = Field(300.0, gt=0, description="a session with no message this long is closed")
    realtime_max_message_bytes: int = Field(2**20, gt=0, description="larger websocket messages get an error event")
    realtime_context_tokens: int = Field(2048, gt=0, description="conversation kept in the prompt, oldest dropped")

    api_keys: CommaSeparated = Field(
        default_factory=list, description="comma-separated API keys; none (and no file): no auth"
    )
    api_keys_file: Path | None = Field(None, description="file with one API key per line (e.g. a mounted Secret)")
    public_paths: CommaSeparated = Field(
        ["/healthz", "/readyz", "/", "/static/*"], description="paths that need no key (a trailing * means a prefix)"
    )
    allowed_origins: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="browser origins (scheme://host[:port], comma-separated; * = any) that may open a websocket "
        "besides the server's own; unset: localhost, 127.0.0.1 and [::1] on any port",
    )
    max_in_flight: int = Field(64, ge=1, description="model requests at once; more get 503 + Retry-After")
    max_queue_per_stage: int = Field(256, ge=1, description="items waiting per speech stage; more get 503")
    rate_limit_per_minute: int = Field(0, ge=0, description="requests per key (or address) per minute; 0: off")
    drain_timeout_s: float = Field(60.0, ge=0, description="on SIGTERM, how long in-flight work may finish")
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="serve /metrics on this port only, keyless (unset: on the main port)"
    )
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per log line")

    engine_url: str | None = Field(
        None,
        description="a running vLLM OpenAI-compatible server (or vllm-router), e.g. http://engine:8000/v1, used "
        "instead of an engine in this process; unset: in-process",
    )
    engine_wait_s: float = Field(600.0, gt=0, description="remote engine: how long start-up waits for it to answer")
    engine_failover_s: float = Field(
        10.0, ge=0, description="remote engine: how long a request that got no token yet is retried on engine failure"
    )
    engine_dtype: EngineDtype = Field("bfloat16", description="the LM's dtype in vLLM ('auto': 16-bit, vLLM's rule)")
    engine_max_model_len: int = Field(4096, gt=0)
    engine_max_num_seqs: int = Field(64, gt=0)
    engine_kv_cache_bytes: int | None = Field(
        None, gt=0, description="KV cache size; unset: from memory fraction (on CPU: CPU_KV_CACHE_BYTES)"
    )
    engine_memory_fraction: float = Field(0.9, gt=0, le=1, description="vLLM gpu_memory_utilization")
    engine_enforce_eager: bool = False

    @field_validator("checkpoints", "engine_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("api_keys", "public_paths", "allowed_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        """`a, b,c` → ["a", "b", "c"]; an empty string is an empty list (for allowed_origins: own origin only)."""
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @property
    def max_body_bytes(self) -> int:
        """The largest request body: the upload as base64 in JSON (4/3 of it) plus 1 MiB for the multipart framing
        or the JSON around it. The Helm chart sets the Ingress's proxy-body-size with the same formula."""
        return self.max_upload_bytes * 4 // 3 + 2**20

    def engine_settings(self, on_cpu: bool) -> EngineSettings:
        kv_cache_bytes = self.engine_kv_cache_bytes
        memory_fraction = self.engine_memory_fraction
        if on_cpu and kv_cache_bytes is None:
            kv_cache_bytes, memory_fraction = CPU_KV_CACHE_BYTES, min(memory_fraction, CPU_MAX_MEMORY_FRACTION)
        return EngineSettings(
            dtype=self.engine_dtype,
            max_model_len=self.engine_max_model_len,
            max_num_seqs=self.engine_max_num_seqs,
            kv_cache_memory_bytes=kv_cache_bytes,
            gpu_memory_utilization=memory_fraction,
            enforce_eager=self.engine_enforce_eager or on_cpu,
        )

    def pipeline_limits(self) -> "PipelineLimits":
        from spiritserve.pipeline import PipelineLimits

        return PipelineLimits(
            default_speech_seconds=self.default_speech_seconds,
            max_speech_seconds=self.max_speech_seconds,
            default_text_tokens=self.default_text_tokens,
            generation_timeout_s=self.generation_timeout_s,
            max_model_len=self.engine_max_model_len,
            batch_max_size=self.batch_max_size,
            batch_max_wait_s=self.batch_max_wait_ms / 1000,
            max_queue_per_stage=self.max_queue_per_stage,
        )

    def admission(self) -> Admission:
        return Admission(self.max_in_flight, self.realtime_max_sessions)
