"""spiritserve against golden vectors recorded from the reference implementation itself.

Other tests compute their expected values with spiritserve's own code, so a fidelity slip that stays
self-consistent (rounding durations down, another tie order when interleaving, a missing BOS) passes them.
The expected values here were produced by facebookresearch/spiritlm (commit 52fb2f4), run by
scripts/reference/record_golden.py on the committed tiny official-layout bundle and 16 kHz clips in
tests/fixtures/golden/ (see the README there). spiritserve loads the same bundle through its own loaders.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from spiritserve.checkpoints import HUBERT_DIR, LANGUAGE_MODELS_DIR, MODEL_NAMES, PITCH_DIR, STYLE_DIR, VOCODER_DIRS
from spiritserve.engine.tokenizer import SpiritTextTokenizer
from spiritserve.tokenizers.phonetic import PhoneticTokenizer
from spiritserve.tokenizers.pitch import PitchTokenizer
from spiritserve.tokenizers.speech import SpeechTokenizer, SpeechUnits
from spiritserve.tokenizers.style import StyleTokenizer
from spiritserve.tokens import (
    Modality,
    OutputModality,
    PromptSegment,
    align_units,
    build_prompt,
    interleave,
    parse_units,
)
from spiritserve.vocoder.base import UnitVocoder, VocodeRequest

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "golden"
EXPECTED = json.loads((GOLDEN / "expected.json").read_text())
BUNDLE = GOLDEN / EXPECTED["bundle"]
VARIANTS = ("base", "expressive")
AUDIO_STEP = 1 / 32768  # one 16-bit step: the audio tolerance

CLIP_CASES = [(variant, clip) for clip in EXPECTED["clips"] for variant in VARIANTS]
CLIP_IDS = [f"{variant}-{Path(clip).stem}" for variant, clip in CLIP_CASES]


def by_name(cases: list[dict]) -> dict:
    return {"argvalues": cases, "ids": [case["name"] for case in cases]}


@pytest.fixture(scope="module")
def speech_tokenizers() -> dict[str, SpeechTokenizer]:
    phonetic = PhoneticTokenizer.from_dir(BUNDLE / HUBERT_DIR)
    pitch, style = PitchTokenizer.from_dir(BUNDLE / PITCH_DIR), StyleTokenizer.from_dir(BUNDLE / STYLE_DIR)
    return {"base": SpeechTokenizer(phonetic), "expressive": SpeechTokenizer(phonetic, pitch, style)}


@pytest.fixture(scope="module")
def units_of(speech_tokenizers):
    """spiritserve's units of a clip, encoded once per variant and clip."""
    cache: dict[tuple[str, str], SpeechUnits] = {}

    def encode(variant: str, clip: str) -> SpeechUnits:
        if (variant, clip) not in cache:
            waveform, rate = soundfile.read(FIXTURES / clip, dtype="float32")
            assert rate == 16000
            cache[variant, clip] = speech_tokenizers[variant].encode([waveform])[0]
        return cache[variant, clip]

    return encode


@pytest.fixture(scope="module")
def vocoders() -> dict[str, UnitVocoder]:
    return {variant: UnitVocoder.from_dir(BUNDLE / VOCODER_DIRS[variant]) for variant in VARIANTS}


@pytest.fixture(scope="module")
def reference_audio() -> dict[str, np.ndarray]:
    with np.load(GOLDEN / "audio.npz") as archive:
        return {name: archive[name] for name in archive.files}


def assert_same_audio(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape, f"{len(ours)} samples, the reference has {len(reference)}"
    worst = float(np.abs(ours - reference).max())
    assert worst <= AUDIO_STEP, f"differs from the reference by up to {worst * 32768:.2f} 16-bit steps"


def vocode_request(case: dict) -> VocodeRequest:
    """A golden token string as the pipeline vocodes generated speech: parsed (§8.3), then vocoded."""
    units = align_units(parse_units(case["tokens"]), expressive=case["variant"] == "expressive")
    return VocodeRequest(units.hubert, case["speaker"], case["style"], True, units.pitch or None, units.style or None)


@pytest.mark.parametrize("clip", EXPECTED["clips"])
def test_clips_are_the_ones_recorded(clip):
    """A regenerated clip (tests/fixtures/make_clips.sh) needs the golden vectors recorded again."""
    digest = hashlib.sha256((FIXTURES / clip).read_bytes()).hexdigest()
    assert digest == EXPECTED["clips"][clip]["sha256"], f"{clip} changed: rerun scripts/reference/record_golden.py"


@pytest.mark.parametrize(("variant", "clip"), CLIP_CASES, ids=CLIP_IDS)
def test_units_match_the_reference(units_of, variant, clip):
    expected = {stream: units for stream, units in EXPECTED["clips"][clip][variant].items() if stream != "string"}
    assert units_of(variant, clip).as_dict() == expected


@pytest.mark.parametrize(("variant", "clip"), CLIP_CASES, ids=CLIP_IDS)
def test_token_strings_match_the_reference(units_of, variant, clip):
    expected = EXPECTED["clips"][clip][variant]
    reference_units = {"Hu": expected["hubert"], "Pi": expected.get("pitch", []), "St": expected.get("style", [])}
    assert interleave(reference_units) == expected["string"]  # the interleaving rule alone
    assert units_of(variant, clip).to_string() == expected["string"]  # and end to end from the audio


@pytest.mark.parametrize("case", **by_name(EXPECTED["prompts"]))
def test_prompt_ids_match_the_reference(units_of, case):
    segments = [
        PromptSegment(Modality.TEXT, content)
        if modality == "text"
        else PromptSegment(Modality.SPEECH, units_of(case["variant"], content).to_string())
        for modality, content in case["inputs"]
    ]
    prompt = build_prompt(segments, OutputModality(case["output"]))
    assert prompt == case["prompt"]
    tokenizer = SpiritTextTokenizer(BUNDLE / LANGUAGE_MODELS_DIR / MODEL_NAMES[case["variant"]] / "tokenizer.model")
    assert tokenizer.encode_prompt(prompt) == case["ids"]


@pytest.mark.parametrize("case", **by_name(EXPECTED["vocoder"]))
def test_vocoder_durations_match_the_reference(vocoders, case):
    request = vocode_request(case)
    _, durations = vocoders[case["variant"]].frame_features(request)
    assert durations == case["durations"]


@pytest.mark.parametrize("case", **by_name(EXPECTED["vocoder"]))
def test_vocoder_audio_matches_the_reference(vocoders, reference_audio, case):
    request = vocode_request(case)
    output = vocoders[case["variant"]].decode(request)
    assert_same_audio(output.audio, reference_audio[case["name"]])


@pytest.mark.parametrize("case", **by_name(EXPECTED["resynthesis"]))
def test_resynthesis_matches_the_reference(vocoders, reference_audio, case):
    """Raw, undeduplicated units straight from the speech tokenizer: one frame per unit."""
    units = EXPECTED["clips"][case["clip"]][case["variant"]]
    output = vocoders[case["variant"]].decode(
        VocodeRequest(
            units["hubert"],
            case["speaker"],
            predict_durations=case["predict_durations"],
            pitch=units.get("pitch"),
            style_units=units.get("style"),
        )
    )
    assert output.durations == [1] * len(units["hubert"])
    assert_same_audio(output.audio, reference_audio[case["name"]])


@pytest.mark.parametrize("variant", VARIANTS)
def test_batched_vocoding_matches_the_reference(vocoders, reference_audio, variant):
    """The serving path: every golden string of a variant in one batch, cut into short windows."""
    cases = [case for case in EXPECTED["vocoder"] if case["variant"] == variant]
    outputs = vocoders[variant].decode_batch([vocode_request(case) for case in cases], window_frames=16)
    for case, output in zip(cases, outputs, strict=True):
        assert output.durations == case["durations"], case["name"]
        assert_same_audio(output.audio, reference_audio[case["name"]])
