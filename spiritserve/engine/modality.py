"""Which token ids each output modality may sample, and how many tokens a speech budget allows.

Mirrors the reference's masks (spiritlm-compat.md §10.3) with one serving rule added (§16.1a): only ids
the next stage can consume are allowed — Hu ids the vocoder has embeddings for (never the quantizer's
blank `[Hu500]`), and never the unused padding rows, which have no tokenizer piece at all.
"""

import math

from spiritserve.tokenizers.text import SpiritTextTokenizer
from spiritserve.tokens import OutputModality

# Undeduplicated HuBERT rate: a speech token lasts at least one 40 ms frame, so seconds × 25 bounds the tokens.
HUBERT_TOKENS_PER_SECOND = 25.0


def vocodable_unit_ids(tokenizer: SpiritTextTokenizer, vocoder_units: int) -> list[int]:
    return tokenizer.unit_ids["Hu"][:vocoder_units]


def allowed_token_ids(tokenizer: SpiritTextTokenizer, output: OutputModality, vocoder_units: int) -> list[int]:
    """Text output: text pieces (EOS included, so text can end). Speech: vocodable units only (EOS banned,
    as in the reference, so speech runs to its budget). Arbitrary: both plus the modality markers."""
    speech = vocodable_unit_ids(tokenizer, vocoder_units)
    if output == OutputModality.TEXT:
        return tokenizer.text_ids
    if output == OutputModality.SPEECH:
        return speech
    return tokenizer.text_ids + list(tokenizer.marker_ids.values()) + speech


def speech_token_budget(seconds: float) -> int:
    return max(1, math.ceil(seconds * HUBERT_TOKENS_PER_SECOND))
