"""Few-shot prompts and their stop rules, without an engine: pools read and tokenized with the tiny bundle's speech
tokenizer, prompt ids checked against whole-string encodings, and the stop rules run on scripted id streams through
the real pipeline (vocoder included), offline and streamed."""

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from spiritserve.checkpoints import open_checkpoint
from spiritserve.engine.engine import TokenDelta, TokenRequest
from spiritserve.engine.tokenizer import SpiritTextTokenizer
from spiritserve.few_shot import (
    BASE_STOP_UNITS,
    TRANSCRIPT_END,
    FewShotPoolError,
    StopUnitsEnd,
    StopUnitsMatcher,
    TranscriptEnd,
    build_prompts,
    continuation_ids,
    dedup,
    read_pool,
)
from spiritserve.pipeline import PipelineLimits, SamplingOptions, SpiritPipeline, StopScan
from spiritserve.tokenizers.speech import SpeechTokenizer
from spiritserve.tokens import OutputModality, unit_piece
from spiritserve.vocoder.base import UnitVocoder

POOLS = Path(__file__).parent / "fixtures" / "few_shot"
LIMITS = PipelineLimits(
    default_speech_seconds=10, max_speech_seconds=60, default_text_tokens=50, generation_timeout_s=60,
    max_model_len=4096,
)  # fmt: skip
SPEECH_UNITS = [7, 7, 12, 300, 45, 45, 99, 150, 201, 3, 64, 88, 410, 17, 256, 9, 31, 77, 120, 5]  # no "stop" in it


def read(folder: Path, stop_clip_required: bool = False):
    return read_pool(folder, max_audio_seconds=30, max_decoded_bytes=2**26, stop_clip_required=stop_clip_required)


@pytest.fixture(scope="module")
def stages(tiny_bundle: Path):
    """The tiny bundle's checkpoint, speech tokenizer and vocoder (a pipeline is built per test: its batchers
    belong to one event loop)."""
    checkpoint = open_checkpoint(tiny_bundle)
    speech_tokenizer = SpeechTokenizer.from_dirs(checkpoint.hubert_dir)
    return checkpoint, speech_tokenizer, UnitVocoder.from_dir(checkpoint.vocoder_dir)


def text_tokenizer(stages) -> SpiritTextTokenizer:
    return SpiritTextTokenizer(stages[0].language_model.tokenizer_path)


class ScriptedEngine:
    """Answers any request with the same ids, a few per delta as vLLM streams them; records the prompts."""

    def __init__(self, ids: list[int], per_delta: int = 3) -> None:
        self.ids = ids
        self.per_delta = per_delta

    async def stream(self, request: TokenRequest, request_id: str, timeout_s: float) -> AsyncIterator[TokenDelta]:
        for start in range(0, len(self.ids), self.per_delta):
            last = start + self.per_delta >= len(self.ids)
            yield TokenDelta(self.ids[start : start + self.per_delta], "length" if last else None)


def with_pipeline(stages, work, engine=None, limits: PipelineLimits = LIMITS):
    """Run `work(pipeline)` in a fresh event loop with a pipeline over `engine`."""

    async def run():
        pipeline = SpiritPipeline(*stages, engine, limits)
        try:
            return await work(pipeline)
        finally:
            await pipeline.close()

    return asyncio.run(run())


# --- pools --------------------------------------------------------------------------------------------------------


def test_pools_are_read_sorted_with_their_transcripts():
    asr = read(POOLS / "asr")
    assert [example.name for example in asr.examples] == ["01_weather", "02_train", "03_coffee"]
    assert asr.examples[1].text == "The train leaves at nine." and asr.stop_clip is None
    tts = read(POOLS / "tts", stop_clip_required=True)
    assert "stop" not in [example.name for example in tts.examples] and len(tts.stop_clip) > 0


def pool_copy(tmp_path: Path, name: str = "tts") -> Path:
    folder = tmp_path / name
    shutil.copytree(POOLS / name, folder)
    return folder


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda folder: (folder / "02_letter.txt").unlink(), r"02_letter\.flac: no transcript"),
        (lambda folder: (folder / "02_letter.flac").unlink(), r"02_letter\.txt: a transcript without audio"),
        (lambda folder: (folder / "03_lamp.flac").write_bytes(b"not audio at all"), r"03_lamp\.flac: unreadable audio"),
        (lambda folder: (folder / "01_garden.txt").write_text("  \n"), r"01_garden\.txt: the transcript is empty"),
        (lambda folder: (folder / "stop.txt").write_text("stop"), r"stop\.txt: the name 'stop' is kept"),
        (lambda folder: (folder / "stop.flac").unlink(), r"the expressive variant needs stop\.<audio>"),
    ],
)
def test_a_bad_pool_is_refused_naming_the_file(tmp_path: Path, damage, message: str):
    folder = pool_copy(tmp_path)
    damage(folder)
    with pytest.raises(FewShotPoolError, match=message):
        read(folder, stop_clip_required=True)


def test_an_empty_or_missing_pool_is_refused(tmp_path: Path):
    with pytest.raises(FewShotPoolError, match="no NAME.<audio> \\+ NAME.txt pairs"):
        read(tmp_path)
    with pytest.raises(FewShotPoolError, match="not a folder"):
        read(tmp_path / "nowhere")


# --- prompt ids ---------------------------------------------------------------------------------------------------


def test_joined_ids_equal_the_whole_prompt_encoded(stages):
    """Prefix ids + query ids are exactly the ids of the joined string, so building by joining lists changes
    nothing the model sees, while the prefix stays the same ids for every query."""
    tokenizer = text_tokenizer(stages)
    prefix = "[Speech][Hu3][Hu9][Text]<START> It's 5 o'clock. <END>[Text]Turn it on. stop[Speech][Hu4]"
    for query in (
        "[Speech][Hu1][Hu2][Text]<START>",
        "[Text]héllo, wörld!! stop[Speech]",
        "[Text] spaced  stop[Speech]",
    ):
        assert tokenizer.encode_prompt(prefix) + continuation_ids(tokenizer, query) == tokenizer.encode_prompt(
            prefix + query
        )


def test_prompts_hold_every_example(stages):
    asr, tts = read(POOLS / "asr"), read(POOLS / "tts")

    async def work(pipeline: SpiritPipeline):
        prompts = await build_prompts(pipeline, asr, tts)
        stop = await pipeline.tokenize(tts.stop_clip)
        return prompts, stop

    prompts, stop = with_pipeline(stages, work)
    tokenizer = text_tokenizer(stages)
    transcription = tokenizer.decode_text(list(prompts.transcription.prefix_ids))
    assert transcription.count("<START>") == transcription.count(TRANSCRIPT_END) == 3
    assert "The train leaves at nine." in transcription
    speech_pieces = "".join(tokenizer.pieces(list(prompts.speech.prefix_ids)))
    assert speech_pieces.count(" stop[Speech]".replace(" ", "▁")) == 3
    assert speech_pieces.count(stop.to_string()) == 3  # each reading ends with the stop word's units
    assert prompts.speech.stop_units == dedup(stop.hubert)
    assert prompts.transcription.prefix_ids[:2] == tuple(tokenizer.encode_prompt("")[:1]) + (
        tokenizer.encode_prompt("[Text]")[1],
    )  # BOS and the dummy-prefix piece, as the reference's whole-string encoding starts


def test_without_a_stop_clip_the_papers_stop_units_are_used(stages, tmp_path: Path):
    folder = pool_copy(tmp_path)
    (folder / "stop.flac").unlink()
    prompts = with_pipeline(stages, lambda pipeline: build_prompts(pipeline, None, read(folder)))
    assert prompts.speech.stop_units == BASE_STOP_UNITS and prompts.transcription is None
    stop_speech = "".join(unit_piece("Hu", unit) for unit in BASE_STOP_UNITS)
    pieces = "".join(text_tokenizer(stages).pieces(list(prompts.speech.prefix_ids)))
    assert pieces.count(stop_speech) == 3


def test_a_pool_too_long_for_the_context_is_refused(stages):
    limits = PipelineLimits(**{**LIMITS.__dict__, "max_model_len": 200})
    with pytest.raises(FewShotPoolError, match=r"few-shot transcription pool .*asr: its 3 examples take \d+ tokens.*"
                       r"more than the model's context of 200 tokens"):  # fmt: skip
        with_pipeline(stages, lambda pipeline: build_prompts(pipeline, read(POOLS / "asr"), None), limits=limits)


# --- stop rules on id streams -------------------------------------------------------------------------------------


def test_the_matcher_finds_the_stop_units_allowing_a_few_edits():
    stop = BASE_STOP_UNITS
    for spoken in (stop, stop[:5] + (1,) + stop[6:], stop[:3] + stop[4:], stop[:8] + (2,) + stop[8:]):
        matcher = StopUnitsMatcher(stop, len(stop) // 4)
        found = [matcher.push(unit) for unit in (*SPEECH_UNITS, *spoken)]
        assert found[-1] == len(SPEECH_UNITS) and not any(start is not None for start in found[:-5])
    matcher = StopUnitsMatcher(stop, len(stop) // 4)
    mangled = [unit + 1 for unit in stop[:9]] + list(stop[9:])  # 9 of 17 wrong: another word
    assert all(matcher.push(unit) is None for unit in (*SPEECH_UNITS, *mangled))


def hubert_ids(tokenizer, units) -> list[int]:
    return [tokenizer.unit_ids["Hu"][unit] for unit in units]


def test_speech_ends_before_its_stop_units_and_holds_back_what_may_be_one(stages):
    tokenizer = text_tokenizer(stages)
    speech, stop = hubert_ids(tokenizer, SPEECH_UNITS), hubert_ids(tokenizer, BASE_STOP_UNITS)
    rule = StopUnitsEnd(tokenizer, BASE_STOP_UNITS)
    assert rule.scan(speech).ended is False
    partial = rule.scan(speech + stop[:10])
    assert not partial.ended and partial.final <= len(speech)  # the stop's start is held back
    assert rule.scan(speech + stop[:10] + stop[10:]) == StopScan(len(speech), True)
    marker = tokenizer.marker_ids["[Text]"]
    rule = StopUnitsEnd(tokenizer, BASE_STOP_UNITS)
    assert rule.scan(speech + [marker] + stop) == StopScan(len(speech), True)  # a modality switch ends it


def test_a_transcript_ends_at_the_end_flag(stages):
    tokenizer = text_tokenizer(stages)
    answer = continuation_ids(tokenizer, "[Text] the cat sat. <END>.[Speech][Hu3]")[1:]  # after the query's [Text]
    rule = TranscriptEnd(tokenizer)
    flag = next(count for count in range(len(answer)) if TRANSCRIPT_END in tokenizer.decode_text(answer[:count]))
    scan = rule.scan(answer[: flag - 1])  # "<END" so far: may be the flag, held back
    assert not scan.ended and tokenizer.decode_text(answer[: scan.final]).strip() == "the cat sat."
    scan = rule.scan(answer[:flag])
    assert scan.ended and tokenizer.decode_text(answer[: scan.final]).strip() == "the cat sat."
    no_flag = continuation_ids(tokenizer, "[Text] the cat[Speech]")[1:]
    assert rule.scan(no_flag).ended and tokenizer.decode_text(no_flag[: rule.scan(no_flag).final]) == "the cat"


# --- through the pipeline -----------------------------------------------------------------------------------------


def speak(stages, ids: list[int], stop: bool, streamed: bool):
    """Speech for a scripted answer, offline or streamed: (tokens, audio)."""
    tokenizer = text_tokenizer(stages)
    request = TokenRequest(prompt_ids=[tokenizer.bos_id], max_tokens=200, allowed_token_ids=None)
    options = SamplingOptions(seed=0)

    async def work(pipeline: SpiritPipeline):
        rule = StopUnitsEnd(tokenizer, BASE_STOP_UNITS) if stop else None
        if not streamed:
            result = await pipeline.run(request, OutputModality.SPEECH, options, stop=rule)
            return result.tokens, result.audio.audio, result.finish_reason
        deltas = [delta async for delta in pipeline.open_speech_stream(request, options, stop=rule)]
        audio = np.concatenate([delta.audio for delta in deltas])
        return "".join(delta.tokens for delta in deltas), audio, deltas[-1].spoken

    return with_pipeline(stages, work, ScriptedEngine(ids))


@pytest.mark.parametrize("streamed", [False, True])
def test_the_stop_word_is_never_heard(stages, streamed: bool):
    """An answer that says the stop units (then goes on) sounds exactly like one that ends before them."""
    tokenizer = text_tokenizer(stages)
    speech, stop = hubert_ids(tokenizer, SPEECH_UNITS), hubert_ids(tokenizer, BASE_STOP_UNITS)
    tokens, audio, last = speak(stages, speech + stop + speech, stop=True, streamed=streamed)
    plain_tokens, plain_audio, _ = speak(stages, speech, stop=False, streamed=streamed)
    assert tokens == plain_tokens == "".join(tokenizer.pieces(speech))
    assert np.array_equal(audio, plain_audio) and len(audio) > 0
    assert last == ("stop" if not streamed else tokens)


def test_a_transcript_through_the_pipeline_loses_its_flag(stages):
    tokenizer = text_tokenizer(stages)
    answer = continuation_ids(tokenizer, "[Text] the cat sat. <END>[Speech]")[1:] + [tokenizer.eos_id]
    request = TokenRequest(prompt_ids=[tokenizer.bos_id], max_tokens=50, allowed_token_ids=None)

    async def work(pipeline: SpiritPipeline):
        return await pipeline.run(request, OutputModality.TEXT, SamplingOptions(), stop=TranscriptEnd(tokenizer))

    result = with_pipeline(stages, work, ScriptedEngine(answer, per_delta=1))
    assert result.text.strip() == "the cat sat." and result.finish_reason == "stop"
