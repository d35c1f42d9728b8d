"""Record the golden vectors of tests/test_golden.py by running the reference implementation itself.

RUNS ONLY in the throwaway reference venv, never in the project's .venv, with the reference tree
(facebookresearch/spiritlm at commit 52fb2f4, extracted) on PYTHONPATH. From the repository root:

    PYTHONPATH=/work/spiritlm-ref /work/refvenv/bin/python scripts/reference/record_golden.py

(that venv: torch and torchaudio 2.9.1, transformers 4.51.3, torchfcpe 0.0.4, sentencepiece, omegaconf,
soundfile; CPU). Add ``--rebuild-bundle`` to first rewrite tests/fixtures/golden/bundle/ from
``spiritserve make-tiny`` (which needs the project's .venv next to it); without it the committed bundle is
used as it is.

The reference is a tool here, nothing more: its code is imported and run, never copied into the project.
It is run unchanged, with one stand-in: ``Wav2Vec2FeatureExtractor.from_pretrained("facebook/wav2vec2-base")``
(the style encoder's only hub access) returns an extractor built from the settings spiritserve vendors
(spiritserve/tokenizers/style.py). Everything else is observed, not altered: forward hooks and a spy on
``torch.repeat_interleave`` read values the reference computes anyway.

Which reference function produces each field of tests/fixtures/golden/expected.json:
- ``clips.<clip>.<variant>.{hubert,pitch,style}``: ``SpiritLMTokenizer.encode_units(waveform)`` of
  ``spiritlm.speech_tokenizer.spiritlm_base()`` / ``spiritlm_expressive()`` (FCPE), on the clip read as
  float32 with soundfile (16 kHz mono, so no resampling happens on either side).
- ``clips.<clip>.<variant>.string``: ``SpiritLMTokenizer.units2string(units)`` of those units.
- ``vocoder[].durations``: the per-unit durations ``CodeGenerator.forward`` computes from its duration
  predictor and passes to ``torch.repeat_interleave``; ``vocoder[]`` audio (audio.npz): the waveform of
  ``SpiritLMTokenizer.decode(tokens, speaker_id)`` (string → ``string2units`` → vocoder with duration
  prediction), the base vocoder's global style set through its ``default_style`` attribute.
- ``resynthesis[]`` audio: ``SpiritLMTokenizer.decode(units, speaker_id, dur_pred=...)`` on the raw unit
  dict of ``clips``: ``dur_pred=False`` for base (as the reference README does for raw units), the default
  for expressive (the reference turns duration prediction off itself when pitch and HuBERT counts differ).
- ``prompts[].prompt``: ``Spiritlm._build_prompt(inputs, output_modality)`` (on an instance given only its
  speech tokenizer and text tokenizer; no LM weights are needed or loaded); ``prompts[].ids``: that prompt
  through ``LlamaTokenizer.from_pretrained(lm_folder, add_bos_token=True, add_eos_token=False)``, called as
  ``Spiritlm.generate`` calls it.
- ``margins``: how far the recorded values are from a decision boundary (top-2 logit gaps of the HuBERT
  quantizer and the style classifier, the nearest-codeword distance gap of the pitch VQ-VAE, the distance of
  each predicted duration exp(x) - 1 above 1 from the nearest .5). Informational: a tiny margin means a
  value could flip under a different float implementation.

Reference defaults are used throughout: speaker 2, base style 8 ("conv-default"), plus one vector per
variant with another speaker (and, for base, another style).
"""

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import random
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
GOLDEN = FIXTURES / "golden"
BUNDLE = GOLDEN / "bundle"

# Must be set before spiritlm is imported: its modules read the root at import time.
os.environ["SPIRITLM_CHECKPOINTS_DIR"] = str(BUNDLE)
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import soundfile  # noqa: E402
import torch  # noqa: E402

REFERENCE_COMMIT = "52fb2f4"
BUNDLE_SEED = 10  # make-tiny's --seed for the committed bundle (issue #10); distinct from the tests' seed 0
VARIANTS = ("base", "expressive")
MODEL_NAMES = {"base": "spirit-lm-base-7b", "expressive": "spirit-lm-expressive-7b"}
# The LM folder's small files; pytorch_model.bin is left out (prompt ids need only the tokenizer).
LM_SMALL_FILES = (
    "config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "tokenizer_config.json",
)
# Paths relative to tests/fixtures; all 16 kHz mono.
CLIPS = ("espeak_16k_mono.flac", "golden/flite_slt_16k_mono.flac", "golden/flite_awb_16k_mono.flac")
SPEAKER = 2  # reference default (SpiritLMTokenizer.decode, spiritlm_base/expressive)
BASE_STYLE = 8  # reference default of spiritlm_base ("conv-default")

PROMPTS = [  # (name, variant, inputs as (modality, text or clip), output modality)
    ("text-to-text", "base", [("text", "The largest country in the world is")], "text"),
    ("text-to-text-unicode", "base", [("text", "Café déjà vu, naïve 東京 🙂  two  spaces\tand a tab")], "text"),
    ("speech-to-text", "base", [("speech", CLIPS[0])], "text"),
    ("text-to-speech", "base", [("text", "One of the most beautiful cities in the world is")], "speech"),
    ("speech-to-speech", "base", [("speech", CLIPS[1])], "speech"),
    (
        "interleaved",
        "base",
        [("text", "Listen: "), ("speech", CLIPS[0]), ("text", "and then "), ("text", "say it twice.")]
        + [("speech", CLIPS[1])],
        "arbitrary",
    ),
    ("expressive-speech-to-text", "expressive", [("speech", CLIPS[2])], "text"),
    ("expressive-text-to-speech", "expressive", [("text", "Tell me a story about the sea.")], "speech"),
    (
        "expressive-interleaved",
        "expressive",
        [("speech", CLIPS[1]), ("text", " and "), ("speech", CLIPS[2])],
        "arbitrary",
    ),
]
RESYNTHESIS = [("base", CLIPS[0]), ("expressive", CLIPS[1])]  # (variant, clip); 81 units, 40 pitch: padded


# --- the committed bundle ----------------------------------------------------------------------------------


def rebuild_bundle() -> None:
    """tests/fixtures/golden/bundle/ from `spiritserve make-tiny` (both variants, one root), LM weights left out."""
    spiritserve = ROOT / ".venv" / "bin" / "spiritserve"
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            command = [str(spiritserve), "make-tiny", "--out", tmp, "--variant", variant, "--seed", str(BUNDLE_SEED)]
            subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        shutil.rmtree(BUNDLE, ignore_errors=True)
        shutil.copytree(Path(tmp) / "speech_tokenizer", BUNDLE / "speech_tokenizer")
        for name in MODEL_NAMES.values():
            folder = BUNDLE / "spiritlm_model" / name
            folder.mkdir(parents=True)
            for file in LM_SMALL_FILES:
                shutil.copy2(Path(tmp) / "spiritlm_model" / name / file, folder / file)
    lengthen_durations()
    print(f"rebuilt {BUNDLE.relative_to(ROOT)}")


def lengthen_durations() -> None:
    """Centre both vocoders' predicted log(1 + duration) on 1.0 instead of make-tiny's 0.7.

    make-tiny's durations are mostly 1 and 2; centred on 1.0 (spread about ±0.4), exp(x) - 1 spans about
    0.5–5, so durations 1 to 5 all occur and many have a fractional part of .5 or more, where rounding to
    nearest and rounding down disagree.
    """
    for folder in ("hifigan_spiritlm_base", "hifigan_spiritlm_expressive_w2v2"):
        path = BUNDLE / "speech_tokenizer" / folder / "generator.pt"
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        checkpoint["generator"]["dur_predictor.proj.bias"].fill_(1.0)
        torch.save(checkpoint, path)


# --- the reference, with its one hub access replaced ---------------------------------------------------------


def offline_feature_extractor() -> None:
    """Serve the style encoder's feature extractor from spiritserve's vendored settings, not the hub."""
    from transformers import Wav2Vec2FeatureExtractor

    hub_from_pretrained = Wav2Vec2FeatureExtractor.from_pretrained

    def from_pretrained(name, *args, **kwargs):
        if name != "facebook/wav2vec2-base":
            return hub_from_pretrained(name, *args, **kwargs)
        return Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False
        )

    Wav2Vec2FeatureExtractor.from_pretrained = staticmethod(from_pretrained)


class Margins:
    """Smallest distance to a decision boundary seen per kind of decision (read through forward hooks)."""

    def __init__(self) -> None:
        self.smallest = {"hubert_logit_gap": math.inf, "style_logit_gap": math.inf}
        self.smallest |= {"pitch_distance_gap": math.inf, "duration_half_gap": math.inf}
        self.rounding_matters = 0  # predicted durations where rounding down would differ from rounding

    def note(self, kind: str, values: torch.Tensor) -> None:
        if values.numel():
            self.smallest[kind] = min(self.smallest[kind], float(values.detach().min()))

    def top2_gap(self, kind: str):
        def hook(module, inputs, logits):
            top2 = logits.float().topk(2, dim=-1).values
            self.note(kind, top2[..., 0] - top2[..., 1])

        return hook

    def durations_hook(self, module, inputs, log_durations):
        durations = torch.exp(log_durations.float()) - 1
        above_one = durations[durations > 1]
        self.note("duration_half_gap", (above_one - above_one.floor() - 0.5).abs())
        self.rounding_matters += int((above_one - above_one.floor() >= 0.5).sum())

    def watch(self, hubert, style_encoder, f0_tokenizer, vocoders) -> None:
        hubert.quantizer_model.encoder.register_forward_hook(self.top2_gap("hubert_logit_gap"))
        style_encoder.classifier.register_forward_hook(self.top2_gap("style_logit_gap"))
        for vocoder in vocoders:
            vocoder.vocoder.model.dur_predictor.register_forward_hook(self.durations_hook)
        block_class = type(f0_tokenizer.quantizer.vq.level_blocks[0])
        quantise = block_class.quantise

        def watched_quantise(block, x):
            distances = torch.cdist(x.float(), block.k.float())  # (N·T, codes); only the gap is kept
            nearest2 = distances.topk(2, dim=-1, largest=False).values
            self.note("pitch_distance_gap", nearest2[:, 1] - nearest2[:, 0])
            return quantise(block, x)

        block_class.quantise = watched_quantise

    def as_dict(self) -> dict[str, float | int]:
        smallest = {kind: round(value, 6) for kind, value in self.smallest.items()}
        return smallest | {"durations_where_floor_differs": self.rounding_matters}


@contextmanager
def captured_durations():
    """Collect the duration tensors the reference vocoder passes to torch.repeat_interleave (one per stream)."""
    seen: list[list[int]] = []
    original = torch.repeat_interleave

    def spy(input, repeats=None, *args, **kwargs):
        if isinstance(repeats, torch.Tensor):
            seen.append(repeats.view(-1).tolist())
        return original(input, repeats, *args, **kwargs)

    torch.repeat_interleave = spy
    try:
        yield seen
    finally:
        torch.repeat_interleave = original


def one_duration_list(seen: list[list[int]]) -> list[int] | None:
    """The durations of one decode call: every stream was expanded by the same list (or none was)."""
    if not seen:
        return None
    assert all(durations == seen[0] for durations in seen), "streams expanded by different durations"
    return seen[0]


# --- recording ---------------------------------------------------------------------------------------------


def read_clip(clip: str) -> np.ndarray:
    audio, rate = soundfile.read(FIXTURES / clip, dtype="float32")
    assert rate == 16000 and audio.ndim == 1, (clip, rate, audio.shape)
    return audio


def vocoder_token_strings() -> list[dict]:
    """Fixed token strings for the vocoder vectors: seeded, so the same on every run.

    Base: 40 HuBERT units with one immediate repeat (decoding must not deduplicate). Expressive: HuBERT units
    before the first style and pitch token (back-filled), pitch changing every 1–3 units, style every 12.
    """
    rng = random.Random(20241028)
    base_units = rng.sample(range(500), 40)
    base_units[10] = base_units[9]
    base = "".join(f"[Hu{unit}]" for unit in base_units)
    expressive = "[Hu17][Hu342]"
    for index in range(38):
        if index % 12 == 0:
            expressive += f"[St{rng.randrange(100)}]"
        if index % 12 == 0 or rng.random() < 0.45:
            expressive += f"[Pi{rng.randrange(64)}]"
        expressive += f"[Hu{rng.randrange(500)}]"
    short_base = "".join(f"[Hu{unit}]" for unit in base_units[:20])
    styles_at = [index for index in range(len(expressive)) if expressive.startswith("[St", index)]
    short_expressive = expressive[: styles_at[2]]  # two styles, 26 units
    cases = [  # (name, variant, tokens, speaker, base style)
        ("base-default", "base", base, SPEAKER, BASE_STYLE),
        ("base-speaker0-style3", "base", short_base, 0, 3),
        ("expressive-default", "expressive", expressive, SPEAKER, None),
        ("expressive-speaker1", "expressive", short_expressive, 1, None),
    ]
    keys = ("name", "variant", "tokens", "speaker", "style")
    return [dict(zip(keys, case, strict=True)) for case in cases]


def int_units(units: dict[str, str], variant: str) -> dict[str, list[int]]:
    keys = ("hubert",) if variant == "base" else ("hubert", "pitch", "style")
    return {key: [int(unit) for unit in units[key].split()] for key in keys}


def record() -> None:
    offline_feature_extractor()
    from spiritlm.model.spiritlm_model import ContentType, GenerationInput, OutputModality, Spiritlm
    from spiritlm.speech_tokenizer import spiritlm_base, spiritlm_expressive
    from transformers import LlamaTokenizer

    torch.manual_seed(0)  # nothing here should draw random numbers; fixed anyway
    speech_tokenizers = {"base": spiritlm_base(), "expressive": spiritlm_expressive()}
    expressive = speech_tokenizers["expressive"]
    margins = Margins()
    margins.watch(
        expressive.hubert_model,
        expressive.style_model,
        expressive.pitch_model,
        [tokenizer.hifigan_model for tokenizer in speech_tokenizers.values()],
    )
    audio: dict[str, np.ndarray] = {}

    clips: dict[str, dict] = {}
    for clip in CLIPS:
        waveform = read_clip(clip)
        digest = hashlib.sha256((FIXTURES / clip).read_bytes()).hexdigest()
        clips[clip] = {"sha256": digest, "samples": len(waveform)}
        for variant, tokenizer in speech_tokenizers.items():
            units = tokenizer.encode_units(torch.from_numpy(waveform))
            clips[clip][variant] = int_units(units, variant) | {"string": tokenizer.units2string(units)}

    vocoder = []
    for case in vocoder_token_strings():
        tokenizer = speech_tokenizers[case["variant"]]
        if case["style"] is not None:  # decode() takes no style: the base vocoder falls back to default_style
            tokenizer.hifigan_model.default_style = case["style"]
        with captured_durations() as seen:
            wav = tokenizer.decode(case["tokens"], speaker_id=case["speaker"])
        if case["style"] is not None:
            tokenizer.hifigan_model.default_style = BASE_STYLE
        case["durations"] = one_duration_list(seen)
        case["samples"] = len(wav)
        audio[case["name"]] = wav.astype(np.float32)
        vocoder.append(case)

    resynthesis = []
    for variant, clip in RESYNTHESIS:
        units = {key: " ".join(map(str, values)) for key, values in clips[clip][variant].items() if key != "string"}
        dur_pred = variant != "base"  # base: as the README does for raw units; expressive: the reference decides
        with captured_durations() as seen:
            wav = speech_tokenizers[variant].decode(units, speaker_id=SPEAKER, dur_pred=dur_pred)
        assert one_duration_list(seen) is None, "resynthesis predicted durations"
        name = f"resynthesis-{variant}"
        audio[name] = wav.astype(np.float32)
        resynthesis.append(
            {"name": name, "variant": variant, "clip": clip, "speaker": SPEAKER, "predict_durations": dur_pred}
            | {"samples": len(wav)}
        )

    prompts = []
    for name, variant, inputs, output in PROMPTS:
        language_model = Spiritlm.__new__(Spiritlm)  # no __init__: no LM weights, no device probing
        language_model.speech_tokenizer = speech_tokenizers[variant]
        language_model.tokenizer = LlamaTokenizer.from_pretrained(
            BUNDLE / "spiritlm_model" / MODEL_NAMES[variant], add_bos_token=True, add_eos_token=False
        )
        generation_inputs = [
            GenerationInput(content=text, content_type=ContentType.TEXT)
            if modality == "text"
            else GenerationInput(content=torch.from_numpy(read_clip(text)), content_type=ContentType.SPEECH)
            for modality, text in inputs
        ]
        prompt = language_model._build_prompt(generation_inputs, OutputModality[output.upper()])
        ids = language_model.tokenizer(prompt)["input_ids"]  # as Spiritlm.generate tokenizes its prompt
        prompts.append(
            {"name": name, "variant": variant, "inputs": [list(item) for item in inputs], "output": output}
            | {"prompt": prompt, "ids": ids}
        )

    expected = {
        "about": "Golden vectors recorded from the reference implementation; see README.md beside this file.",
        "reference": {"repository": "facebookresearch/spiritlm", "commit": REFERENCE_COMMIT},
        "recorded_with": {name: importlib.metadata.version(name) for name in ("torch", "transformers", "torchfcpe")},
        "bundle": "bundle",
        "bundle_seed": BUNDLE_SEED,
        "speaker": SPEAKER,
        "base_style": BASE_STYLE,
        "margins": margins.as_dict(),
        "clips": clips,
        "vocoder": vocoder,
        "resynthesis": resynthesis,
        "prompts": prompts,
    }
    (GOLDEN / "expected.json").write_text(dumps(expected) + "\n")
    np.savez_compressed(GOLDEN / "audio.npz", **audio)
    summarize(expected)


def dumps(value, indent: int = 0) -> str:
    """JSON with objects indented and lists of numbers kept on one line (readable, diffable, compact)."""
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(key)}: {dumps(item, indent + 2)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}" if items else "{}"
    if isinstance(value, list) and any(isinstance(item, dict | list) for item in value):
        items = [inner + dumps(item, indent + 2) for item in value]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(value, ensure_ascii=False)


def summarize(expected: dict) -> None:
    for clip, entry in expected["clips"].items():
        streams = {key: units for key, units in entry["expressive"].items() if key != "string"}
        counts = [f"{key} {len(units)} ({len(set(units))} distinct)" for key, units in streams.items()]
        print(f"{clip}: {entry['samples']} samples; {', '.join(counts)}")
    for case in expected["vocoder"]:
        durations = case["durations"]
        print(f"{case['name']}: {len(durations)} units, durations {min(durations)}..{max(durations)}", end=", ")
        print(f"{case['samples']} samples")
    print("margins:", expected["margins"])
    thin = [kind for kind, value in expected["margins"].items() if isinstance(value, float) and value < 1e-4]
    if thin:
        print(f"WARNING: margins under 1e-4 ({thin}): those values may flip under other float implementations")
    size = sum(path.stat().st_size for path in GOLDEN.rglob("*") if path.is_file())
    print(f"tests/fixtures/golden: {size / 2**20:.2f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild-bundle", action="store_true", help="rewrite the bundle from spiritserve make-tiny")
    args = parser.parse_args()
    if importlib.util.find_spec("spiritlm") is None:
        parser.error("the reference is not importable: run with PYTHONPATH=/work/spiritlm-ref in the reference venv")
    if args.rebuild_bundle:
        rebuild_bundle()
    record()


if __name__ == "__main__":
    main()
