"""A realtime session's audio on the wire: its formats (PCM16 at 24 kHz, G.711 at 8 kHz) to and from float samples,
and the input buffer the user's audio collects in until it is committed."""

import base64

import numpy as np

from spiritserve.audio import decode_pcm16, encode_pcm16
from spiritserve.server import g711
from spiritserve.server.realtime_protocol import (
    PcmaFormat,
    PcmFormat,
    PcmuFormat,
    RealtimeError,
    bytes_per_sample,
    format_rate,
)

AudioFormat = PcmFormat | PcmuFormat | PcmaFormat


def decode_audio(data: bytes, audio_format: AudioFormat) -> np.ndarray:
    """Wire bytes → float32 in [-1, 1) at the format's rate."""
    if isinstance(audio_format, PcmuFormat):
        return g711.decode_mulaw(data).astype(np.float32) / 32768
    if isinstance(audio_format, PcmaFormat):
        return g711.decode_alaw(data).astype(np.float32) / 32768
    return decode_pcm16(data)


def encode_audio(samples: np.ndarray, audio_format: AudioFormat) -> bytes:
    """float32 in [-1, 1] at the format's rate → wire bytes."""
    if isinstance(audio_format, PcmFormat):
        return encode_pcm16(samples)
    pcm = np.frombuffer(encode_pcm16(samples), dtype="<i2")
    return g711.encode_mulaw(pcm) if isinstance(audio_format, PcmuFormat) else g711.encode_alaw(pcm)


def decode_base64(audio: str) -> bytes:
    """The bytes of a base64 `audio` field; ValueError saying what is wrong with it."""
    try:
        return base64.b64decode(audio, validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII characters (a plain ValueError)
        raise ValueError(f"'audio' is not valid base64: {exc}") from exc


class InputAudioBuffer:
    """The user's audio since the last commit, in the session's input format. `start_ms` places it in the
    session's input stream, the timeline VAD events and a turn's prefix padding are counted on."""

    def __init__(self, audio_format: AudioFormat, max_seconds: float, max_decoded_bytes: int) -> None:
        self.format = audio_format
        self.max_seconds, self.max_decoded_bytes = max_seconds, max_decoded_bytes
        self.data = bytearray()
        self.start_ms = 0

    @property
    def rate(self) -> int:
        return format_rate(self.format)

    @property
    def sample_bytes(self) -> int:
        return bytes_per_sample(self.format)

    @property
    def end_sample(self) -> int:
        """Input samples in the stream so far (where a VAD started now begins counting)."""
        return self.start_ms * self.rate // 1000 + len(self.data) // self.sample_bytes

    @property
    def limit(self) -> int:
        """Bytes of input audio a turn may hold: the seconds limit and, as float32, the decoded-size limit."""
        width = self.sample_bytes
        return min(int(self.max_seconds * self.rate) * width, self.max_decoded_bytes // 4 * width)

    def append(self, chunk: bytes) -> None:
        if len(chunk) % self.sample_bytes:
            raise RealtimeError("invalid_audio", "PCM16 audio needs an even byte count")
        if len(self.data) + len(chunk) > self.limit:
            seconds = self.limit / self.sample_bytes / self.rate
            raise RealtimeError("input_audio_buffer_full", f"the input buffer holds at most {seconds:.4g} s; "
                                "commit or clear it")  # fmt: skip
        self.data.extend(chunk)

    def clear(self) -> None:
        self.start_ms += len(self.data) // self.sample_bytes * 1000 // self.rate
        self.data.clear()

    def take(self) -> bytes:
        """The buffered audio, leaving the buffer empty."""
        data = bytes(self.data)
        self.clear()
        return data

    def drop_before(self, at_ms: int) -> None:
        """Forget the audio before `at_ms` of the stream (nothing when the buffer starts later)."""
        rate, width = self.rate, self.sample_bytes
        drop = (max(self.start_ms, at_ms) - self.start_ms) * rate // 1000 * width
        del self.data[:drop]
        self.start_ms += drop // width * 1000 // rate

    def would_hold(self, data: bytes) -> bool:
        """Whether audio given whole (a message's part) is whole samples within a turn's limit."""
        return not len(data) % self.sample_bytes and len(data) <= self.limit
