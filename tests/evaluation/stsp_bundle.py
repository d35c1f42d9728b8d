"""A tiny STSP release for the tests, in the published layout (spiritserve/evaluation/stsp.py has the tree):
audio cut from the repository's espeak-ng / flite fixture clips (no TTS needed at test time), jsonl manifests
and few-shot pools, and tiny RANDOM Hugging Face classifiers written here (nothing is downloaded): a
wav2vec2 audio classifier over the release's Expresso labels with its feature extractor, and a RoBERTa
sentiment classifier with a word-level tokenizer trained on a few sentences.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

FIXTURES = Path(__file__).parent.parent / "fixtures"
RATE = 16_000
SPEECH_LABELS = ("angry", "default", "happy", "sad")  # the release's speech classifier's id2label, in order
TEXT_LABELS = ("negative", "neutral", "positive")  # Hartmann et al.'s 3-class RoBERTa

# Source clips: espeak-ng and flite speech committed with the repository.
CLIPS = (
    "espeak_16k_mono.flac",
    "flite_8k_mono.wav",
    "cmu_goforward_16k_mono.flac",
    "few_shot/asr/01_weather.flac",
    "few_shot/asr/02_train.flac",
    "few_shot/tts/01_garden.flac",
)

TEXT_ITEMS = (
    ("I love this, what a wonderful sunny day", "happy", "positive"),
    ("this is terrible and I am so angry about it", "angry", "negative"),
    ("the train leaves at nine from the north station", "default", "neutral"),
)
POOL_TEXTS = {
    "positive": ("what a lovely surprise", "we had so much fun today"),
    "negative": ("I hate waiting in the rain", "this ruined my whole week"),
    "neutral": ("the meeting is on tuesday", "please close the window"),
}


def _clip(name: str) -> tuple[np.ndarray, int]:
    audio, rate = soundfile.read(FIXTURES / name, dtype="float32", always_2d=True)
    return audio.mean(axis=1), rate


def _write_wav(path: Path, source: str, seconds: float = 1.6) -> None:
    """A WAV of the first `seconds` of a fixture clip, at the clip's own rate."""
    audio, rate = _clip(source)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, audio[: int(seconds * rate)], rate, subtype="PCM_16")


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def make_stsp_data(root: Path) -> dict[str, int]:
    """Audio, manifests and pools under `root`; returns the test items per subset."""

    def wav(name: str, source: str) -> str:  # written under root; the manifests hold the relative path
        _write_wav(root / name, source)
        return name

    sentiments = [sentiment for _, _, sentiment in TEXT_ITEMS]
    emotions = [emotion for _, emotion, _ in TEXT_ITEMS]
    asr = [
        {
            "id": f"asr{index}",
            "wav_path": wav(f"data/expresso/conversational/asr{index}.wav", CLIPS[index]),
            "asr": text,
            "emotion": emotion,
            "sentiment": sentiment,
            "split": "test",
            "speaker": "ex01",
        }
        for index, (text, emotion, sentiment) in enumerate(TEXT_ITEMS)
    ]
    _write_jsonl(root / "manifest/expresso/expresso_asr.test.jsonl", asr)
    read = [
        {
            "id": f"read{index}",
            "wav_path": wav(f"data/expresso/read/ex0{index + 1}_{emotions[index]}.wav", CLIPS[index + 1]),
            "asr": TEXT_ITEMS[index][0],
            "emotion": emotions[index],
            "sentiment": sentiments[index],
            "split": "test",
            "speaker": f"ex0{index + 1}",
        }
        for index in range(3)
    ]
    _write_jsonl(root / "manifest/expresso/expresso_read.test.jsonl", read)
    emov_emotions = ("Amused", "Angry", "Neutral")
    emov = [
        {
            "id": f"emov{index}",
            "wav_path": wav(f"data/emov/{speaker}/{emov_emotions[index].lower()}_1.wav", CLIPS[index + 2]),
            "asr": TEXT_ITEMS[index][0],
            "emotion": emov_emotions[index],
            "split": "test",
            "speaker": speaker,
        }
        for index, speaker in enumerate(("bea", "jenie", "sam"))
    ]
    emov[0]["sentiment"] = "positive"  # the others have only `emotion`: the gold label is mapped from it
    _write_jsonl(root / "manifest/emov/emov.test.jsonl", emov)

    pools: dict[str, list[dict[str, Any]]] = {direction: [] for direction in ("t2t", "t2s", "s2t", "s2s")}
    clip = 0
    for sentiment, texts in POOL_TEXTS.items():
        for text in texts:
            words = text.split()
            first, second = " ".join(words[: len(words) // 2]), " ".join(words[len(words) // 2 :])
            path = wav(f"data/expresso/conversational/pool{clip}.wav", CLIPS[clip % len(CLIPS)])
            clip += 1
            pools["t2t"].append({"prompt": first, "generation": second, "sentiment": sentiment})
            pools["t2s"].append({"prompt": first, "generation": path, "sentiment": sentiment})
            pools["s2t"].append({"prompt": path, "generation": second, "sentiment": sentiment})
            pools["s2s"].append({"prompt": path, "generation": path, "sentiment": sentiment})
    for direction, records in pools.items():
        _write_jsonl(root / f"manifest/few_shot/{direction}.jsonl", records)
    return {"expresso_asr": len(asr), "expresso_read": len(read), "emov": len(emov)}


def make_speech_classifier(folder: Path, labels: tuple[str, ...] = SPEECH_LABELS, seed: int = 0) -> Path:
    """A tiny random wav2vec2 audio classifier (group-norm feature encoder, as wav2vec2-base) + feature extractor."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    torch.manual_seed(seed)
    config = Wav2Vec2Config(
        vocab_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        conv_dim=(16, 16),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        classifier_proj_size=8,
        feat_extract_norm="group",
        initializer_range=0.5,
        id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)},
    )
    Wav2Vec2ForSequenceClassification(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=RATE, padding_value=0.0, do_normalize=True, return_attention_mask=False
    ).save_pretrained(folder)
    return folder


def make_text_tokenizer(folder: Path) -> Path:
    """A word-level tokenizer with RoBERTa's special tokens, trained here on a few sentences."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    sentences = [text for text, _, _ in TEXT_ITEMS] + [text for texts in POOL_TEXTS.values() for text in texts]
    tokenizer.train_from_iterator(sentences, trainers.WordLevelTrainer(special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=128,
    ).save_pretrained(folder)
    return folder


def make_text_classifier(
    folder: Path, labels: tuple[str, ...] = TEXT_LABELS, with_tokenizer: bool = True, seed: int = 0
) -> Path:
    """A tiny random RoBERTa sentiment classifier; with its tokenizer beside it unless `with_tokenizer` is False
    (as the release ships it)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=130,
        initializer_range=0.5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)},
    )
    RobertaForSequenceClassification(config).save_pretrained(folder)
    if with_tokenizer:
        make_text_tokenizer(folder)
    return folder


def make_stsp_bundle(root: Path) -> dict[str, int]:
    """The whole tiny release under `root`; returns the test items per subset."""
    counts = make_stsp_data(root)
    make_speech_classifier(root / "model" / "speech_classifier")
    make_text_classifier(root / "model" / "text_classifier")
    return counts
