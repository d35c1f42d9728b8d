"""Which token ids each output modality may sample, and how many tokens a speech budget allows.

Mirrors the reference's masks (spiritlm-compat.md §10.3) with one serving rule added (§16.1a): only ids
the next stage can consume are allowed — unit ids the vocoder has embeddings for (never the quantizer's
blank `[Hu500]`), and never the unused padding rows, which have no tokenizer piece at all.
"""

import math

from spiritserve.engine.tokenizer import SpiritTextTokenizer
from spiritserve.tokens import STREAM_RATES, OutputModality, UnitKind


def vocodable_unit_ids(tokenizer: SpiritTextTokenizer, vocoder_sizes: dict[UnitKind, int]) -> list[int]:
    """Unit ids of every stream the vocoder reads, cut to its embedding-table sizes (0 = stream absent)."""
    return [token_id for kind, size in vocoder_sizes.items() for token_id in tokenizer.unit_ids[kind][:size]]


def allowed_token_ids(
    tokenizer: SpiritTextTokenizer, output: OutputModality, vocoder_sizes: dict[UnitKind, int]
) -> list[int]:
    """Text output: text pieces (EOS included, so text can end). Speech: vocodable units only (EOS banned,
    so speech runs to its budget; the reference's ban does not hold in transformers: docs/design.md).
    Arbitrary: both plus the modality markers."""
    speech = vocodable_unit_ids(tokenizer, vocoder_sizes)
    if output == OutputModality.TEXT:
        return tokenizer.text_ids
    if output == OutputModality.SPEECH:
        return speech
    return tokenizer.text_ids + list(tokenizer.marker_ids.values()) + speech


def speech_token_budget(seconds: float, vocoder_sizes: dict[UnitKind, int]) -> int:
    """Tokens for `seconds` of speech at the undeduplicated rates of the streams in play (25 Hz HuBERT,
    plus 12.5 Hz pitch and 1 Hz style when expressive): deduplication only makes the audio longer."""
    tokens_per_second = sum(STREAM_RATES[kind] for kind, size in vocoder_sizes.items() if size)
    return max(1, math.ceil(seconds * tokens_per_second))
