"""Expressive interleaving and parse-back, against hand-worked examples (spiritlm-compat.md §4, §8)."""

from spiritserve.tokens import (
    FALLBACK_PITCH,
    MOST_COMMON_STYLES,
    AlignedUnits,
    UnitAligner,
    align_units,
    fallback_style,
    interleave,
    parse_unit_string,
    parse_units,
)

# The first 20 HuBERT and pitch units of the reference example (§5.4, §6.3); style 71 (§7).
HUBERT = [99, 49, 38, 149, 149, 71, 423, 427, 492, 288, 315, 153, 153, 389, 497, 412, 247, 354, 7, 96]
PITCH = [39, 39, 39, 48, 56, 40, 42, 39, 51, 40, 43, 54, 3, 35, 39, 25, 58, 26, 44, 40]
REFERENCE_START = "[St71][Pi39][Hu99][Hu49][Hu38][Hu149][Hu71][Pi48][Hu423][Hu427][Pi56][Hu492][Hu288][Pi40][Hu315]"


def test_reference_expressive_string_start():
    assert interleave({"Hu": HUBERT, "Pi": PITCH, "St": [71]}).startswith(REFERENCE_START)


def test_ties_put_style_before_pitch_before_hubert():
    text = interleave({"Hu": list(range(26)), "Pi": list(range(13)), "St": [5, 6]})
    assert text.startswith("[St5][Pi0][Hu0]")  # all three at t = 0
    # Around 1 s: Pi12 at 0.96 s, Hu24 at 24/24.99 = 0.9604 s, St6 at 1.0 s, Hu25 at 1.0004 s.
    assert "[Pi12][Hu24][St6][Hu25]" in text


def test_dedup_hubert_and_pitch_but_not_style():
    text = interleave({"Hu": [1, 1, 1, 2], "Pi": [3, 3], "St": [7, 7, 7]})
    units = parse_unit_string(text)
    assert units == {"Hu": [1, 2], "Pi": [3], "St": [7, 7, 7]}


def test_hubert_clock_drifts_one_frame_per_hundred_seconds():
    # Hu index 2499 is truly at 99.96 s but is stamped 2499/24.99 = 100.0 s, tying with the pitch token of
    # 100.0 s (index 1250), which therefore sorts one Hu token earlier than true time.
    hubert = [index % 500 for index in range(2502)]
    pitch = [index % 64 for index in range(1252)]
    text = interleave({"Hu": hubert, "Pi": pitch})
    assert f"[Hu{2498 % 500}][Pi{1250 % 64}][Hu{2499 % 500}][Hu{2500 % 500}]" in text
    # Early on the clocks agree: the pitch token of 4.0 s (index 50) precedes Hu index 100 (4.0016 s).
    assert f"[Hu99][Pi{50 % 64}][Hu100]" in text


def test_parse_back_pre_duplicates_and_back_fills():
    aligned = align_units(parse_units("[Hu1][Hu2][Pi5][Hu3][St9][Hu4][Pi6][Hu5]"))
    assert aligned.hubert == [1, 2, 3, 4, 5]
    assert aligned.pitch == [5, 5, 5, 5, 6]  # Hu1, Hu2 back-filled with the first pitch seen later
    assert aligned.style == [9, 9, 9, 9, 9]


def test_missing_style_falls_back_deterministically():
    aligned = align_units(parse_units("[Pi5][Hu1][Hu2]"))
    assert aligned.style == [MOST_COMMON_STYLES[0]] * 2
    seeded = {align_units(parse_units("[Pi5][Hu1]"), expressive=True, style_seed=seed).style[0] for seed in range(20)}
    assert seeded == set(MOST_COMMON_STYLES)
    assert fallback_style(3) == fallback_style(3)
    assert align_units(parse_units("[Hu1][Hu2]")).pitch == [FALLBACK_PITCH] * 2  # expressive without any Pi
    assert align_units(parse_units("[Hu1][Hu2]"), expressive=False) == AlignedUnits([1, 2], [], [])  # base: no streams


def test_round_trip_string_to_units_to_string():
    base = interleave({"Hu": HUBERT})
    assert interleave({"Hu": parse_unit_string(base)["Hu"]}) == base
    expressive = interleave({"Hu": HUBERT, "Pi": PITCH, "St": [71]})
    parsed = parse_unit_string(expressive)
    assert parsed["Hu"] == [unit for i, unit in enumerate(HUBERT) if i == 0 or unit != HUBERT[i - 1]]
    assert parsed["Pi"] == [unit for i, unit in enumerate(PITCH) if i == 0 or unit != PITCH[i - 1]]
    aligned = align_units(parse_units(expressive))
    assert aligned.hubert == parsed["Hu"] and len(aligned.pitch) == len(aligned.style) == len(aligned.hubert)


def test_streaming_alignment_equals_offline_alignment():
    text = interleave({"Hu": HUBERT * 3, "Pi": PITCH * 3, "St": [71, 83, 71]})
    pieces = ["[" + piece for piece in text.split("[")[1:]]
    aligner = UnitAligner(expressive=True, max_held=25)
    streamed = [aligner.push(parse_units(piece)) for piece in pieces] + [aligner.finish()]
    joined = AlignedUnits(
        *(sum((getattr(part, name) for part in streamed), []) for name in ("hubert", "pitch", "style"))
    )
    assert joined == align_units(parse_units(text))
    assert streamed[2].hubert == [99]  # St, Pi, Hu: the first frame is final as soon as it arrives


def test_streaming_holds_frames_until_pitch_and_style_arrive_then_caps():
    aligner = UnitAligner(expressive=True, max_held=3)
    assert aligner.push(parse_units("[Hu1][Pi4]")) == AlignedUnits([], [], [])  # no style yet: held
    released = aligner.push(parse_units("[Hu2][Hu3]"))  # the cap: fall back rather than wait longer
    assert released == AlignedUnits([1, 2, 3], [4, 4, 4], [MOST_COMMON_STYLES[0]] * 3)
    assert aligner.push(parse_units("[St9][Hu5]")) == AlignedUnits([5], [4], [9])
