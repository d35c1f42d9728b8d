"""One small exception hierarchy, mapped once to HTTP responses by the server."""


class SpiritServeError(Exception):
    """Base of every error spiritserve raises on purpose."""

    status_code = 500
    retry_after_s: int | None = None  # set: a 429/503 the client should retry after this many seconds


class CheckpointError(SpiritServeError):
    """A checkpoint file is missing, malformed, or does not match the architecture it claims."""


class BadRequestError(SpiritServeError):
    """The caller sent something we cannot serve (the message says what and why)."""

    status_code = 422


class BadAudioError(BadRequestError):
    """The uploaded bytes are not decodable audio, or the audio is unusable (empty, too short)."""

    status_code = 400


class AudioTooLongError(BadRequestError):
    status_code = 413


class UnsupportedMediaTypeError(BadRequestError):
    status_code = 415


class RequestTimeoutError(BadRequestError):
    """The request body did not arrive in time (a stalled or trickling upload)."""

    status_code = 408


class ForbiddenOriginError(SpiritServeError):
    """A browser page from an origin the server does not allow tried to open a websocket."""

    status_code = 403


class EngineUnavailableError(SpiritServeError):
    """The LM engine is not running (still starting, dead, or a remote engine out of reach)."""

    status_code = 503
    retry_after_s = 5  # a remote engine's replacement, or the next health probe, is seconds away


class UnauthorizedError(SpiritServeError):
    """No API key, or a wrong one, where the server requires keys."""

    status_code = 401


# Retry-After of a busy server's 503: an in-flight slot or a queue place frees within about a second.
RETRY_AFTER_BUSY_S = 1
RETRY_AFTER_DRAINING_S = 5  # a replacement replica takes a moment to be ready


class OverloadedError(SpiritServeError):
    """Too much work in flight or queued; the client should retry after `retry_after_s`."""

    status_code = 503

    def __init__(self, message: str, retry_after_s: int = RETRY_AFTER_BUSY_S) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimitedError(OverloadedError):
    """This API key (or client address) sent more requests per minute than it may."""

    status_code = 429


class OutOfAcceleratorMemoryError(OverloadedError):
    """A speech stage ran out of GPU memory on this item even alone; its memory was freed for the next ones."""
