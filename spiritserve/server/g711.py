"""G.711 μ-law and A-law (8 kHz telephone audio, one byte per sample), as ITU-T G.711 and Sun's g711.c define them.

`encode_*` takes PCM16 samples (int16 array) and returns bytes; `decode_*` takes bytes and returns int16 samples.
"""

import numpy as np

_MULAW_BIAS = 0x84  # 132: added before the segment search, taken off again when decoding
_MULAW_CLIP = 8159  # on 14 bits


def encode_mulaw(samples: np.ndarray) -> bytes:
    """(N,) int16 → N μ-law bytes (on 14 bits, as g711.c)."""
    pcm = samples.astype(np.int32) >> 2
    sign = np.where(pcm < 0, 0x80, 0x00)
    magnitude = np.minimum(np.minimum(np.abs(pcm), _MULAW_CLIP) + (_MULAW_BIAS >> 2), 0x1FFF)  # 33 ... 8191
    exponent = np.clip(np.floor(np.log2(magnitude)).astype(np.int32) - 5, 0, 7)  # segment 0..7
    mantissa = (magnitude >> (exponent + 1)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def decode_mulaw(data: bytes) -> np.ndarray:
    """N μ-law bytes → (N,) int16."""
    code = ~np.frombuffer(data, dtype=np.uint8).astype(np.int32) & 0xFF
    exponent = (code >> 4) & 0x07
    magnitude = ((((code & 0x0F) << 3) + _MULAW_BIAS) << exponent) - _MULAW_BIAS
    return np.where(code & 0x80, -magnitude, magnitude).astype(np.int16)


def encode_alaw(samples: np.ndarray) -> bytes:
    """(N,) int16 → N A-law bytes."""
    pcm = samples.astype(np.int32) >> 3  # A-law works on 13 bits
    sign = np.where(pcm >= 0, 0x80, 0x00)
    magnitude = np.minimum(np.where(pcm >= 0, pcm, -pcm - 1), 0xFFF)
    exponent = np.maximum(np.floor(np.log2(np.maximum(magnitude, 1))).astype(np.int32) - 4, 0)  # segment 0..7
    mantissa = np.where(exponent == 0, magnitude >> 1, magnitude >> exponent) & 0x0F
    return ((sign | (exponent << 4) | mantissa) ^ 0x55).astype(np.uint8).tobytes()


def decode_alaw(data: bytes) -> np.ndarray:
    """N A-law bytes → (N,) int16."""
    code = np.frombuffer(data, dtype=np.uint8).astype(np.int32) ^ 0x55
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)
