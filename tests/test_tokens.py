"""Token formats and prompt building against the examples in spiritlm-compat.md §4 and §10.2."""

import pytest

from spiritserve.tokens import (
    Modality,
    OutputModality,
    PromptSegment,
    build_prompt,
    interleave,
    is_unit_string,
    parse_unit_string,
)

# First 20 HuBERT units of the reference example (§5.4) and the start of its base string (§4).
REFERENCE_UNITS = [99, 49, 38, 149, 149, 71, 423, 427, 492, 288, 315, 153, 153, 389, 497, 412, 247, 354, 7, 96]
REFERENCE_STRING_START = "[Hu99][Hu49][Hu38][Hu149][Hu71][Hu423][Hu427][Hu492][Hu288][Hu315][Hu153][Hu389]"

TEXT = PromptSegment(Modality.TEXT, "The largest country in the world is")
SPEECH = PromptSegment(Modality.SPEECH, "[Hu99][Hu49][Hu361]")


def test_base_string_deduplicates_consecutive_units_only():
    assert interleave({"Hu": REFERENCE_UNITS}).startswith(REFERENCE_STRING_START)
    assert interleave({"Hu": [5, 5, 6, 5, 5]}) == "[Hu5][Hu6][Hu5]"
    assert interleave({"Hu": []}) == ""


@pytest.mark.parametrize(
    ("segments", "output", "expected"),
    [
        ([TEXT], OutputModality.TEXT, "[Text]The largest country in the world is"),
        (
            [PromptSegment(Modality.TEXT, "One of the most beautiful cities in the world is")],
            OutputModality.SPEECH,
            "[Text]One of the most beautiful cities in the world is[Speech]",
        ),
        ([SPEECH], OutputModality.TEXT, "[Speech][Hu99][Hu49][Hu361][Text]"),
        ([SPEECH], OutputModality.SPEECH, "[Speech][Hu99][Hu49][Hu361]"),
        ([SPEECH], OutputModality.ARBITRARY, "[Speech][Hu99][Hu49][Hu361]"),
        (
            [PromptSegment(Modality.TEXT, "abc"), SPEECH, PromptSegment(Modality.TEXT, "hello world")],
            OutputModality.ARBITRARY,
            "[Text]abc[Speech][Hu99][Hu49][Hu361][Text]hello world",
        ),
        # consecutive inputs of one modality share a marker and join with no separator
        (
            [PromptSegment(Modality.TEXT, "abc"), PromptSegment(Modality.TEXT, "def"), SPEECH, SPEECH],
            OutputModality.TEXT,
            "[Text]abcdef[Speech][Hu99][Hu49][Hu361][Hu99][Hu49][Hu361][Text]",
        ),
    ],
)
def test_prompt_building_matches_reference_examples(segments, output, expected):
    assert build_prompt(segments, output) == expected


def test_unit_strings_parse_back():
    units = parse_unit_string("[Speech][St71][Pi39][Hu99][Hu49][Text]hi[Hu7]")
    assert units == {"Hu": [99, 49, 7], "Pi": [39], "St": [71]}
    assert is_unit_string("[Hu1][Hu22]") and not is_unit_string("[Hu1]x") and not is_unit_string("[Hu01a]")
