"""The extended SentencePiece tokenizer of a tiny bundle reproduces the reference's ids (compat §3.2a, §3.3)."""

from pathlib import Path

import pytest

from spiritserve.checkpoints import LANGUAGE_MODELS_DIR, MODEL_NAMES
from spiritserve.engine.tokenizer import SpiritTextTokenizer
from spiritserve.errors import CheckpointError


@pytest.fixture(scope="module")
def tokenizer(tiny_bundle: Path) -> SpiritTextTokenizer:
    return SpiritTextTokenizer(tiny_bundle / LANGUAGE_MODELS_DIR / MODEL_NAMES["base"] / "tokenizer.model")


def test_unit_pieces_land_where_the_official_ids_are(tokenizer):
    assert tokenizer.marker_ids == {"[Text]": 32000, "[Speech]": 32001}
    hubert = tokenizer.unit_ids["Hu"]
    assert (hubert[0], hubert[99], hubert[500], len(hubert)) == (32002, 32101, 32502, 501)
    assert not tokenizer.is_expressive
    assert (tokenizer.bos_id, tokenizer.eos_id) == (1, 2)


def test_text_prompt_starts_with_a_lone_dummy_prefix_piece(tokenizer):
    ids = tokenizer.encode_prompt("[Text]The largest country in the world is")
    assert tokenizer.pieces(ids[:6]) == ["<s>", "▁", "[Text]", "The", "▁largest", "▁country"]
    assert ids[2] == 32000 and 2 not in ids  # marker id from the vocabulary; no EOS appended


def test_speech_to_text_prompt_ids(tokenizer):
    ids = tokenizer.encode_prompt("[Speech][Hu99][Hu49][Hu361][Text]")
    assert tokenizer.pieces(ids) == ["<s>", "▁", "[Speech]", "[Hu99]", "[Hu49]", "[Hu361]", "[Text]"]
    assert ids[3:6] == [32101, 32051, 32363]


def test_generated_ids_classify_back(tokenizer):
    assert tokenizer.classify(32101).unit == 99 and tokenizer.classify(32101).unit_kind == "Hu"
    assert tokenizer.classify(32001).marker == "[Speech]"
    text_piece = tokenizer.classify(tokenizer.encode_prompt("hello")[-1])
    assert text_piece.marker is None and text_piece.unit_kind is None


def test_a_plain_llama_tokenizer_is_refused(tmp_path):
    import mistral_common

    plain = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    with pytest.raises(CheckpointError, match=r"modality markers"):
        SpiritTextTokenizer(plain)
    with pytest.raises(CheckpointError, match="not found"):
        SpiritTextTokenizer(tmp_path / "tokenizer.model")
