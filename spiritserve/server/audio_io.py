"""Audio bytes in any common container → 16 kHz mono float32, and float audio → WAV bytes.

soundfile (libsndfile) reads WAV/FLAC/OGG-Vorbis directly; anything else (MP3, Opus, M4A, WebM) goes
through PyAV's FFmpeg. As the reference does, each channel is resampled to 16 kHz with its resampler
(`spiritserve.resample`, torchaudio's algorithm) and the channels are then averaged; 16 kHz audio is not
resampled. Limits are enforced while decoding, so an hour-long upload is refused without being decoded whole.
"""

import io

import av
import numpy as np
import soundfile

from spiritserve.errors import AudioTooLongError, BadAudioError
from spiritserve.resample import resample

SAMPLE_RATE = 16_000
# Raw little-endian 16-bit mono PCM (audio/L16 would mean big-endian, RFC 2586).
PCM_MEDIA_TYPE = "audio/pcm;rate=16000;channels=1;encoding=s16le"
_UNKNOWN_SIZE = 0xFFFFFFFF
MIN_SAMPLES = 1_280  # 80 ms: the reference drops shorter chunks, so they would give no units at all


def _decode_with_soundfile(data: bytes, max_seconds: float) -> tuple[np.ndarray, int] | None:
    """(channels, samples) float32 and the rate, or None when libsndfile does not know the format."""
    try:
        info = soundfile.info(io.BytesIO(data))
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        return None
    if info.frames / info.samplerate > max_seconds:
        raise AudioTooLongError(f"audio is {info.frames / info.samplerate:.1f} s long; the limit is {max_seconds:g} s")
    audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)  # (frames, channels)
    return audio.T, rate


def _decode_with_pyav(data: bytes, max_seconds: float) -> tuple[np.ndarray, int]:
    """(channels, samples) float32 and the rate."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise BadAudioError("the upload has no audio stream")
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate or stream.rate
            # Planar float keeps every channel separate (converts the sample format only, not the rate).
            resampler = av.AudioResampler(format="fltp", rate=rate)
            pieces, total = [], 0
            for frame in container.decode(stream):
                for converted in resampler.resample(frame):
                    planes = converted.to_ndarray()  # (channels, samples)
                    if pieces and len(planes) != len(pieces[0]):
                        raise BadAudioError("the number of channels changes within the audio stream")
                    pieces.append(planes)
                    total += planes.shape[1]
                if total > max_seconds * rate:
                    raise AudioTooLongError(f"audio is longer than the limit of {max_seconds:g} s")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise BadAudioError(f"could not decode the upload as audio ({exc})") from exc
    if not pieces:
        raise BadAudioError("the audio stream holds no samples")
    return np.concatenate(pieces, axis=1).astype(np.float32, copy=False), rate


def decode_audio(data: bytes, max_seconds: float) -> np.ndarray:
    """Decode, resample each channel to 16 kHz, then mix to mono (the reference's order).
    Raises BadAudioError / AudioTooLongError with reasons."""
    if not data:
        raise BadAudioError("the audio upload is empty")
    decoded = _decode_with_soundfile(data, max_seconds) or _decode_with_pyav(data, max_seconds)
    channels, rate = decoded  # (channels, samples)
    if not np.isfinite(channels).all():
        raise BadAudioError("the audio contains NaN or infinite samples")
    audio = resample(channels, rate, SAMPLE_RATE).mean(axis=0)  # a 16 kHz input is only averaged
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
