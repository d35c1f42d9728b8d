"""Audio bytes in any common container → 16 kHz mono float32, and float audio → WAV bytes.

soundfile (libsndfile) reads WAV/FLAC/OGG/MP3 directly; anything else (M4A, WebM, …) goes through PyAV's FFmpeg.
As the reference does, each channel is resampled to 16 kHz with its resampler (`spiritserve.resample`,
torchaudio's algorithm) and the channels are then averaged; 16 kHz audio is not resampled.

Memory per request is bounded by bytes, not seconds: the decoded float32 samples (rate × channels × seconds × 4)
may not exceed `max_decoded_bytes`. The limits are checked from the header before anything is decoded, and again
block by block while decoding into one preallocated buffer, so neither a decompression bomb (a tiny FLAC of
silence declaring 192 kHz × 8 channels × 299 s) nor a header that understates the length gets past them. Channels
are then resampled one at a time into a running sum, so one request peaks at a small multiple of the limit (about
2.6 × for 384 kHz mono; docs/design.md, tests/server/test_hostile_audio.py).
"""

import io
import struct
from dataclasses import dataclass

import av
import numpy as np
import soundfile

from spiritserve.errors import AudioTooLongError, BadAudioError, UnsupportedMediaTypeError
from spiritserve.resample import resample

SAMPLE_RATE = 16_000
# Raw little-endian 16-bit mono PCM (audio/L16 would mean big-endian, RFC 2586).
PCM_MEDIA_TYPE = "audio/pcm;rate=16000;channels=1;encoding=s16le"
_UNKNOWN_SIZE = 0xFFFFFFFF
MIN_SAMPLES = 1_280  # 80 ms: the reference drops shorter chunks, so they would give no units at all

# Accepted input formats: telephone-band and lower rates up to 384 kHz studio masters; up to 7.1 surround.
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 8
# 300 s of 48 kHz stereo as float32 (115.2 MB): the longest accepted audio at the highest common speech rate.
DEFAULT_MAX_DECODED_BYTES = 300 * 48_000 * 2 * 4
_BYTES_PER_SAMPLE = 4  # float32 after decoding
_BLOCK_FRAMES = 1 << 16  # frames libsndfile decodes per read
_SF_UNKNOWN_FRAMES = (1 << 63) - 1  # libsndfile's frame count when the header gives no length (a streamed FLAC)
# FFmpeg demuxers whose stream durations come from the file's header (or, for Ogg, its last page), not from an
# estimate out of the bit rate (MP3 without a Xing header, ADTS AAC): only those are trusted before decoding.
_DECLARED_DURATION_FORMATS = frozenset(
    {"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "flac", "wav", "w64", "aiff", "caf", "ogg"}
)
_WAV_PCM, _WAV_FLOAT, _WAV_EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
_WAV_MAX_CHUNKS = 64  # chunks looked at for 'fmt ' (it comes first or after a few; a hostile file may hold millions)


@dataclass(frozen=True)
class _Limits:
    max_seconds: float
    max_decoded_bytes: int

    def check_format(self, rate: int, channels: int) -> None:
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise BadAudioError(
                f"the audio's sample rate is {rate} Hz; accepted rates are {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz"
            )
        if not 1 <= channels <= MAX_CHANNELS:
            raise BadAudioError(f"the audio has {channels} channels; accepted are 1 to {MAX_CHANNELS}")

    def check_length(self, rate: int, channels: int, frames: int, *, declared: bool) -> None:
        """`frames` as the header declares them (`declared`), or as decoded so far."""
        decoded_bytes = frames * channels * _BYTES_PER_SAMPLE
        seconds = frames / rate
        limit = f"the limit is {self.max_decoded_bytes / 1e6:.1f} MB"
        if decoded_bytes > self.max_decoded_bytes and declared:
            raise AudioTooLongError(
                f"audio decodes to {decoded_bytes / 1e6:.1f} MB ({rate} Hz × {channels} channels × {seconds:.1f} s "
                f"as float32, as its header declares); {limit}"
            )
        if decoded_bytes > self.max_decoded_bytes:
            raise AudioTooLongError(
                f"audio decodes to more than its header declares: decoding stopped at {decoded_bytes / 1e6:.1f} MB "
                f"({rate} Hz × {channels} channels × {seconds:.1f} s as float32); {limit}"
            )
        if seconds > self.max_seconds:
            length = f"{seconds:.1f} s long" if declared else f"longer than its header declares ({seconds:.1f} s)"
            raise AudioTooLongError(f"audio is {length}; the limit is {self.max_seconds:g} s")


class _Samples:
    """(channels, frames) float32, filled block by block within the limits: preallocated for the length the header
    declares, grown (at most to the limit) only when the stream holds more."""

    def __init__(self, rate: int, channels: int, frames: int, limits: _Limits) -> None:
        self.rate, self.limits = rate, limits
        self.max_frames = limits.max_decoded_bytes // (channels * _BYTES_PER_SAMPLE)
        self.array = np.empty((channels, min(frames, self.max_frames)), np.float32)
        self.length = 0

    def append(self, block: np.ndarray) -> None:
        """A (channels, n) block; refused before it is stored if the audio would exceed a limit."""
        channels, count = block.shape
        if channels != len(self.array):
            raise BadAudioError(f"the number of channels changes within the audio ({len(self.array)}, then {channels})")
        end = self.length + count
        self.limits.check_length(self.rate, channels, end, declared=False)
        if not np.isfinite(block).all():
            raise BadAudioError("the audio contains NaN or infinite samples")
        if end > self.array.shape[1]:  # by half again: a few copies for an unknown length, never past the limit
            grown = np.empty((channels, min(max(end, 3 * self.array.shape[1] // 2), self.max_frames)), np.float32)
            grown[:, : self.length] = self.array[:, : self.length]
            self.array = grown
        self.array[:, self.length : end] = block
        self.length = end

    def result(self) -> np.ndarray:
        return self.array[:, : self.length]


def _wav_format(data: bytes) -> tuple[int, int, int, int] | None:
    """A RIFF/WAVE header's (format code, channels, rate, bits per sample), or None for anything else."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    position = 12
    for _ in range(_WAV_MAX_CHUNKS):
        if position + 8 > len(data):
            return None
        chunk, size = data[position : position + 4], int.from_bytes(data[position + 4 : position + 8], "little")
        if chunk == b"fmt ":
            if size < 16 or position + 24 > len(data):
                return None
            code, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, position + 8)
            return code, channels, rate, bits
        position += 8 + size + size % 2
    return None


def _check_wav_header(data: bytes, limits: _Limits) -> None:
    """Values no decoder should be handed (libsndfile and FFmpeg refuse some only with cryptic reasons)."""
    header = _wav_format(data)
    if header is None:
        return
    code, channels, rate, bits = header
    limits.check_format(rate, channels)
    if bits == 0 and code in (_WAV_PCM, _WAV_FLOAT, _WAV_EXTENSIBLE):
        raise BadAudioError("the WAV header says 0 bits per sample")


def _soundfile_reason(exc: Exception) -> str:
    return str(getattr(exc, "error_string", exc)).strip().rstrip(".")


def _decode_with_soundfile(data: bytes, limits: _Limits) -> tuple[np.ndarray, int] | str:
    """(channels, samples) float32 and the rate; or, when libsndfile cannot open the bytes or the header has no
    length, libsndfile's reason (then FFmpeg tries). Bytes it opens but cannot decode are refused here."""
    try:
        sound = soundfile.SoundFile(io.BytesIO(data))
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        return _soundfile_reason(exc)
    with sound:
        rate, channels, frames = sound.samplerate, sound.channels, sound.frames
        if frames >= _SF_UNKNOWN_FRAMES:
            return "the header gives no length"
        limits.check_format(rate, channels)
        limits.check_length(rate, channels, frames, declared=True)
        samples = _Samples(rate, channels, frames, limits)
        block = np.empty((min(_BLOCK_FRAMES, max(frames, 1)), channels), np.float32)  # (frames, channels)
        try:
            while samples.length < frames:
                read = sound.read(out=block[: frames - samples.length])
                if not len(read):
                    break  # shorter than the header says: keep what is there, as every player does
                samples.append(read.T)
        except (soundfile.LibsndfileError, RuntimeError) as exc:
            raise BadAudioError(f"could not decode the {sound.format} audio: {_soundfile_reason(exc)}") from exc
    return samples.result(), rate


def _declared_frames(container: av.container.InputContainer, stream: av.AudioStream, rate: int) -> int | None:
    if container.format.name not in _DECLARED_DURATION_FORMATS:
        return None
    if stream.duration and stream.time_base:
        return int(stream.duration * stream.time_base * rate)
    if container.duration:
        return int(container.duration * rate / av.time_base)
    return None


def _decode_with_pyav(data: bytes, limits: _Limits, soundfile_reason: str) -> tuple[np.ndarray, int]:
    """(channels, samples) float32 and the rate."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                kinds = sorted({stream.type for stream in container.streams}) or ["no streams"]
                raise UnsupportedMediaTypeError(
                    f"the upload has no audio stream ({container.format.name}: {', '.join(kinds)}); send audio"
                )
            stream = container.streams.audio[0]
            if stream.codec_context is None:
                header = _wav_format(data)
                codec = f"WAV format code {header[0]:#06x}" if header else f"its codec in {container.format.name}"
                raise UnsupportedMediaTypeError(f"the audio cannot be decoded: no decoder for {codec}")
            rate, channels = stream.codec_context.sample_rate, stream.codec_context.channels
            limits.check_format(rate, channels)
            frames = _declared_frames(container, stream, rate)
            if frames is not None:
                limits.check_length(rate, channels, frames, declared=True)
            # Room for the declared length and an encoder's padding; for an unknown length, a second to start.
            samples = _Samples(rate, channels, frames + rate // 4 if frames is not None else rate, limits)
            # Interleaved float (the sample format only, not the rate). Not planar: PyAV 18 reads past the end of
            # a frame's plane pointers when it has 8 or more planes (`AudioFrame.planes`), a segfault for 7.1 audio.
            resampler = av.AudioResampler(format="flt", rate=rate)
            for frame in container.decode(stream):
                for converted in resampler.resample(frame):
                    interleaved = converted.to_ndarray()  # (1, samples · channels)
                    samples.append(interleaved.reshape(-1, converted.layout.nb_channels).T)  # (channels, samples)
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise BadAudioError(
            f"could not decode the upload as audio (libsndfile: {soundfile_reason}; FFmpeg: {reason})"
        ) from exc
    if not samples.length:
        raise BadAudioError("the audio stream holds no samples")
    return samples.result(), rate


def _resample_and_mix(channels: np.ndarray, rate: int) -> np.ndarray:
    """Each channel to 16 kHz, then their mean: one channel at a time into a running sum (the same float32
    numbers as resampling them together and `mean(axis=0)`, without a (channels, 16 kHz samples) array)."""
    mono = np.array(resample(channels[0], rate, SAMPLE_RATE), dtype=np.float32)  # a copy: 16 kHz returns a view
    for channel in channels[1:]:
        mono += resample(channel, rate, SAMPLE_RATE)
    if len(channels) > 1:
        mono /= len(channels)
    return mono


def decode_audio(data: bytes, max_seconds: float, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> np.ndarray:
    """Decode, resample each channel to 16 kHz, then mix to mono (the reference's order).
    Raises BadAudioError (400), AudioTooLongError (413) or UnsupportedMediaTypeError (415) with reasons."""
    if not data:
        raise BadAudioError("the audio upload is empty")
    limits = _Limits(max_seconds, max_decoded_bytes)
    _check_wav_header(data, limits)
    decoded = _decode_with_soundfile(data, limits)
    channels, rate = _decode_with_pyav(data, limits, decoded) if isinstance(decoded, str) else decoded
    audio = _resample_and_mix(channels, rate)  # a 16 kHz input is only averaged
    if len(audio) < MIN_SAMPLES:
        raise BadAudioError(
            f"audio is {1000 * len(audio) / SAMPLE_RATE:.0f} ms long; at least {1000 * MIN_SAMPLES // SAMPLE_RATE} ms "
            "is needed for one speech unit"
        )
    return audio


def encode_wav(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM WAV, the format every player and the reference's examples use."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(audio, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def encode_pcm16(audio: np.ndarray) -> bytes:
    """Float audio in [-1, 1] → little-endian 16-bit samples (what WAV's data chunk holds)."""
    return (np.clip(audio, -1.0, 1.0) * 32767).round().astype("<i2").tobytes()


def decode_pcm16(data: bytes) -> np.ndarray:
    """Little-endian 16-bit samples → float32 in [-1, 1) (the inverse of `encode_pcm16`)."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768


def streaming_wav_header(sample_rate: int = SAMPLE_RATE) -> bytes:
    """A 44-byte PCM16 mono WAV header for a stream of unknown length (sizes 0xFFFFFFFF: 'until EOF',
    which ffmpeg, browsers and soundfile accept)."""
    byte_rate = sample_rate * 2
    return (
        b"RIFF"
        + _UNKNOWN_SIZE.to_bytes(4, "little")
        + b"WAVE"
        + b"fmt "
        + (16).to_bytes(4, "little")
        + (1).to_bytes(2, "little")
        + (1).to_bytes(2, "little")
        + sample_rate.to_bytes(4, "little")
        + byte_rate.to_bytes(4, "little")
        + (2).to_bytes(2, "little")
        + (16).to_bytes(2, "little")
        + b"data"
        + _UNKNOWN_SIZE.to_bytes(4, "little")
    )
