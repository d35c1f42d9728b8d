"""What a request's `voice` selects: speakers by name or index, and OpenAI's voice names for OpenAI clients."""

import pytest

from spiritserve.voices import OPENAI_VOICES, speaker_for

SPEAKERS = ["ex01", "ex02", "ex03", "ex04"]


def test_speakers_by_name_or_index_and_none_for_the_default():
    assert speaker_for("ex03", SPEAKERS) == 2 and speaker_for(1, SPEAKERS) == 1 and speaker_for("3", SPEAKERS) == 3
    assert speaker_for(None, SPEAKERS) is None


def test_openai_voice_names_cycle_through_the_speakers():
    assert [speaker_for(name, SPEAKERS) for name in OPENAI_VOICES[:6]] == [0, 1, 2, 3, 0, 1]
    assert speaker_for("Alloy", SPEAKERS) == 0  # as OpenAI, case does not matter
    assert speaker_for("shimmer", []) == 0  # a vocoder without speakers.txt has one speaker
    assert speaker_for("ash", ["ash", "x"]) == 0  # a speaker of that name wins (else 1)


@pytest.mark.parametrize("voice", ["nobody", 4, "-1", ""])
def test_anything_else_is_refused_with_the_choices(voice):
    with pytest.raises(ValueError, match=r"unknown voice .*ex01.*0-3.*OpenAI"):
        speaker_for(voice, SPEAKERS)
