"""Tiny datasets in the published layouts the eval tasks read (docs/evaluation.md), for the tests.

The speech items are slices of the repository's espeak-ng / flite fixture clips (the tests need no TTS installed):
what matters is that each item is real speech in a real file; the scores on a random-weights model are noise.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import soundfile

FIXTURES = Path(__file__).parent.parent / "fixtures"
RATE = 16_000


def _speech() -> np.ndarray:
    clip, rate = soundfile.read(FIXTURES / "espeak_16k_mono.flac", dtype="float32")
    assert rate == RATE
    return clip


def write_clip(path: Path, index: int, seconds: float = 0.6) -> Path:
    """A short WAV cut from the fixture speech at an offset that depends on `index` (so items differ)."""
    clip = _speech()
    length = int(seconds * RATE)
    start = (index * 2903) % max(1, len(clip) - length)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, clip[start : start + length], RATE, subtype="PCM_16")
    return path


def make_zerospeech(root: Path, ids: int = 3, voices: tuple[str, ...] = ("Alex", "Victoria")) -> dict[str, int]:
    """lexical/dev and syntactic/dev (gold.csv + WAVs) and blimp/data/*.jsonl; returns the expected item counts."""
    lexical = root / "lexical" / "dev"
    lexical.mkdir(parents=True)
    words = [("brick", "blick"), ("garden", "gardel"), ("window", "windoz"), ("tiger", "tigep")]
    rows = []
    clip = 0
    for word_id in range(ids):
        word, non_word = words[word_id % len(words)]
        for voice in voices:
            for text, correct in ((word, 1), (non_word, 0)):
                filename = f"lx{clip:04d}"
                write_clip(lexical / f"{filename}.wav", clip)
                rows.append(
                    {
                        "filename": filename,
                        "word": text,
                        "phones": "b r I k",
                        "length": len(text),
                        "frequency": 10 if correct else "",
                        "voice": voice,
                        "id": word_id,
                        "correct": correct,
                    }
                )
                clip += 1
    _write_csv(lexical / "gold.csv", rows)

    syntactic = root / "syntactic" / "dev"
    syntactic.mkdir(parents=True)
    sentences = [("the dog runs", "the dog run"), ("she has eaten", "she have eaten")]
    rows = []
    for pair_id, (good, bad) in enumerate(sentences):
        for voice in voices:
            for text, correct in ((good, 1), (bad, 0)):
                filename = f"sx{clip:04d}"
                write_clip(syntactic / f"{filename}.wav", clip)
                rows.append(
                    {
                        "filename": filename,
                        "type": "agreement",
                        "subtype": "subject_verb",
                        "voice": voice,
                        "id": pair_id,
                        "correct": correct,
                        "transcription": text,
                    }
                )
                clip += 1
    _write_csv(syntactic / "gold.csv", rows)

    blimp = root / "blimp" / "data"
    blimp.mkdir(parents=True)
    lines = [
        {
            "sentence_good": "Who should Derek hug?",
            "sentence_bad": "Who should Derek hug Mary?",
            "UID": "wh_vs_that",
            "pair_id": 0,
        },
        {
            "sentence_good": "Many girls insulted themselves.",
            "sentence_bad": "Many girls insulted herself.",
            "UID": "anaphor_gender",
            "pair_id": 0,
        },
    ]
    (blimp / "anaphor_gender.jsonl").write_text(json.dumps(lines[1]) + "\n")
    (blimp / "wh_vs_that.jsonl").write_text(json.dumps(lines[0]) + "\n\n")
    return {
        "swuggy/speech": ids * len(voices),
        "swuggy/text": ids,
        "sblimp/speech": len(sentences) * len(voices),
        "sblimp/text": len(lines),
    }


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


STORIES = [
    (
        "Tom wanted a dog. He saved his money. He went to the shelter. He saw a puppy.",
        "He adopted the puppy.",
        "He bought a car.",
    ),
    (
        "Ann baked a cake. She used chocolate. Her friends came over. They sang a song.",
        "They ate the cake together.",
        "She went swimming in the sea.",
    ),
    (
        "Sam lost his keys. He searched the house. He looked in the car. He asked his wife.",
        "She had them in her bag.",
        "He learned to play the violin.",
    ),
]


def make_storycloze(root: Path, stories: int = 3) -> int:
    """sSC/ and tSC/: the release's whole-story WAVs (index-prefixed, true first) + our manifest.jsonl with split
    audio. Returns the number of stories per benchmark and setting."""
    clip = 100
    for folder in ("sSC", "tSC"):
        base = root / folder
        records = []
        for story in range(stories):
            prompt, true, other = STORIES[story % len(STORIES)]
            write_clip(base / f"{2 * story}_story{story}_pos.wav", clip, 0.9)
            write_clip(base / f"{2 * story + 1}_story{story}_neg.wav", clip + 1, 0.9)
            write_clip(base / "split" / f"{story}_prompt.wav", clip + 2, 0.6)
            write_clip(base / "split" / f"{story}_true.wav", clip + 3, 0.4)
            write_clip(base / "split" / f"{story}_other.wav", clip + 4, 0.4)
            clip += 5
            records.append(
                {
                    "id": f"story{story}",
                    "prompt": prompt,
                    "endings": [true, other],
                    "prompt_audio": f"split/{story}_prompt.wav",
                    "endings_audio": [f"split/{story}_true.wav", f"split/{story}_other.wav"],
                }
            )
        (base / "manifest.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return stories


def make_mmlu(root: Path, subjects: tuple[str, ...] = ("astronomy", "high_school_biology"), questions: int = 2) -> int:
    """data/dev/<subject>_dev.csv (5 rows) and data/test/<subject>_test.csv, no header. Returns the test count."""
    for split in ("dev", "test"):
        (root / "data" / split).mkdir(parents=True, exist_ok=True)
    for subject in subjects:
        dev = [
            [f"Dev question {i} about {subject}, with a comma?", "one", "two", "three", "four", "ABCD"[i % 4]]
            for i in range(5)
        ]
        test = [
            [f"Test question {i}?", "red", "green", "blue", "yellow", "ABCD"[(i + 1) % 4]] for i in range(questions)
        ]
        for split, rows in (("dev", dev), ("test", test)):
            with (root / "data" / split / f"{subject}_{split}.csv").open("w", newline="") as stream:
                csv.writer(stream).writerows(rows)
    return len(subjects) * questions
