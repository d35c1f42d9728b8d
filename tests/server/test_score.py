"""`/v1/score` and zero-shot `/v1/classify` on the real server (vLLM, bfloat16), checked against log-probabilities
computed independently with transformers (float32) from the same tiny LM weights and SentencePiece model."""

import base64
from pathlib import Path

import httpx
import pytest
import sentencepiece
import torch

from spiritserve.checkpoints import open_checkpoint

FIXTURES = Path(__file__).parent.parent / "fixtures"
CLIP = FIXTURES / "espeak_16k_mono.flac"
# bfloat16 (the engine) against float32 (here): measured at most 0.0017 per token on the tiny model (10 candidates,
# 2026-12-02); bfloat16 keeps 8 bits of mantissa, so about 0.4 % of each logit is noise
TOLERANCE_PER_TOKEN = 0.01


class ReferenceLM:
    """The tiny LM in transformers, float32, fed ids built with SentencePiece directly (BOS + the whole string)."""

    def __init__(self, root: Path) -> None:
        from transformers import LlamaForCausalLM

        path = open_checkpoint(root).language_model.path
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
        self.model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def ids(self, text: str) -> list[int]:
        return [self.sp.bos_id(), *self.sp.encode(text)]

    @torch.inference_mode()
    def logprob(self, context: str, continuation: str) -> tuple[float, int]:
        """Sum of log p(token | before) over the ids of `context + continuation` past those of `context`."""
        full, prefix = self.ids(context + continuation), self.ids(context)
        assert full[: len(prefix)] == prefix, "the test's strings must not merge at the join"
        logits = self.model(torch.tensor([full])).logits[0].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        scored = range(len(prefix), len(full))
        return sum(logprobs[position - 1, full[position]].item() for position in scored), len(scored)


@pytest.fixture(scope="module")
def reference(tiny_bundle: Path) -> ReferenceLM:
    return ReferenceLM(tiny_bundle)


def score(client: httpx.Client, prompt: list[dict], candidates: list[dict]) -> dict:
    response = client.post("/v1/score", json={"prompt": prompt, "candidates": candidates})
    assert response.status_code == 200, response.text
    return response.json()


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def speech_tokens(units: list[int]) -> dict:
    return {"type": "speech", "tokens": "".join(f"[Hu{unit}]" for unit in units)}


def assert_close(got: dict, expected: tuple[float, int]) -> None:
    logprob, tokens = expected
    assert got["tokens"] == tokens
    assert got["logprob"] == pytest.approx(logprob, abs=TOLERANCE_PER_TOKEN * tokens)
    assert got["normalized_logprob"] == pytest.approx(got["logprob"] / tokens)


def test_text_continuations_score_as_transformers_does(client: httpx.Client, reference: ReferenceLM) -> None:
    endings = [" sat on the mat.", " flew to the moon yesterday.", " is"]
    body = score(client, [text("The cat")], [text(ending) for ending in endings])
    assert body["prompt_tokens"] == len(reference.ids("[Text]The cat"))
    assert [entry["index"] for entry in body["scores"]] == [0, 1, 2]
    for entry, ending in zip(body["scores"], endings, strict=True):
        assert_close(entry, reference.logprob("[Text]The cat", ending))
    logprobs = [entry["logprob"] for entry in body["scores"]]
    normalized = [entry["normalized_logprob"] for entry in body["scores"]]
    assert body["best"] == logprobs.index(max(logprobs))
    assert body["best_normalized"] == normalized.index(max(normalized))


def prefix_cache_hits(client: httpx.Client) -> float:
    lines = client.get("/metrics").text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith("vllm:prefix_cache_hits_total"))


def test_candidates_of_a_long_prompt_read_it_from_the_prefix_cache(client: httpx.Client, reference: ReferenceLM):
    """The prompt is prefilled once; each candidate reads it from vLLM's prefix cache (whose positions have no
    log-probabilities) and is scored from the engine's own computation of its tokens, as without the cache."""
    story = "The old lighthouse keeper climbed the stairs every evening to light the lamp. " * 20
    endings = [" Then he slept.", " The ships were safe that night, as always.", " Nobody"]
    before = prefix_cache_hits(client)
    body = score(client, [text(story)], [text(ending) for ending in endings])
    assert body["prompt_tokens"] > 256  # more than two of the CPU engine's 128-token cache blocks
    for entry, ending in zip(body["scores"], endings, strict=True):
        assert_close(entry, reference.logprob("[Text]" + story, ending))
    # each candidate found at least the prompt's whole blocks in the cache
    assert prefix_cache_hits(client) - before >= len(endings) * 256


def test_a_cache_hit_up_to_the_candidate_is_not_read_as_scores(client: httpx.Client, reference: ReferenceLM) -> None:
    """A prompt of exactly two whole cache blocks (BOS, "▁", [Speech] and 253 units: 256 tokens): each candidate
    finds all of it cached, and the first candidate token's log-probability would need the cached last position's
    logits, which a cached request does not have: it must be computed again, not read as an empty entry."""
    prompt = [5 + (index * 7) % 400 for index in range(253)]
    candidates = [[11, 12, 13], [300, 301]]
    body = score(client, [speech_tokens(prompt)], [speech_tokens(units) for units in candidates])
    assert body["prompt_tokens"] == 256
    for entry, units in zip(body["scores"], candidates, strict=True):
        context = "[Speech]" + "".join(f"[Hu{unit}]" for unit in prompt)
        assert_close(entry, reference.logprob(context, "".join(f"[Hu{unit}]" for unit in units)))


def test_speech_candidates_after_text_skip_the_marker(client: httpx.Client, reference: ReferenceLM) -> None:
    """Speech after text starts with [Speech]: the marker is context, the units are the candidate."""
    candidates = [[12, 7, 99, 3], [400, 401, 402, 403, 404, 405]]
    body = score(client, [text("Listen:")], [speech_tokens(units) for units in candidates])
    for entry, units in zip(body["scores"], candidates, strict=True):
        unit_string = "".join(f"[Hu{unit}]" for unit in units)
        assert_close(entry, reference.logprob("[Text]Listen:[Speech]", unit_string))
        assert entry["tokens"] == len(units)


def test_an_empty_prompt_scores_the_whole_candidate(client: httpx.Client, reference: ReferenceLM) -> None:
    """sWUGGY's case: nothing before the candidate; BOS, the lone leading piece and the marker are not scored."""
    units = [5, 6, 7, 8, 9]
    (entry,) = score(client, [], [speech_tokens(units)])["scores"]
    unit_string = "".join(f"[Hu{unit}]" for unit in units)
    assert reference.sp.id_to_piece(reference.ids("[Speech]")[1]) == "▁"
    assert_close(entry, reference.logprob("[Speech]", unit_string))
    assert entry["tokens"] == len(units)


def test_audio_candidates_are_tokenized_as_generate_does(client: httpx.Client, reference: ReferenceLM) -> None:
    audio = CLIP.read_bytes()
    tokens = client.post("/v1/tokenize", files={"audio": ("clip.flac", audio, "audio/flac")}).json()["tokens"]
    body = score(
        client,
        [text("She said")],
        [{"type": "speech", "audio_base64": base64.b64encode(audio).decode()}, {"type": "speech", "tokens": tokens}],
    )
    from_audio, from_tokens = body["scores"]
    assert from_audio["tokens"] == from_tokens["tokens"] == tokens.count("[Hu")
    assert from_audio["logprob"] == pytest.approx(from_tokens["logprob"], abs=1e-3)
    assert_close(from_audio, reference.logprob("[Text]She said[Speech]", tokens))


def test_zero_shot_classify_scores_every_label(client: httpx.Client, reference: ReferenceLM) -> None:
    labels = ["weather", "travel", "coffee and breakfast"]
    response = client.post("/v1/classify", json={"input": [text("Will it rain today?")], "labels": labels})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["shots"] == 0 and [entry["label"] for entry in body["scores"]] == labels
    for entry, label in zip(body["scores"], labels, strict=True):
        assert_close(entry, reference.logprob("[Text]Will it rain today?\n", label))
    logprobs = [entry["logprob"] for entry in body["scores"]]
    assert body["label"] == labels[logprobs.index(max(logprobs))]
    normalized = client.post(
        "/v1/classify", json={"input": [text("Will it rain today?")], "labels": labels, "normalize": True}
    ).json()
    by_token = [entry["normalized_logprob"] for entry in normalized["scores"]]
    assert normalized["label"] == labels[by_token.index(max(by_token))]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/score", {"prompt": [], "candidates": []}, 422, "candidates"),
        ("/v1/score", {"candidates": [{"type": "image", "url": "x"}]}, 422, ""),
        ("/v1/score", {"candidates": [{"type": "speech"}]}, 422, "exactly one of"),
        ("/v1/score", {"candidates": [{"type": "speech", "tokens": "[Hu1]" * 4200}]}, 422, "context holds"),
        ("/v1/score", {"prompt": [{"type": "text", "text": "a"}], "candidates": [{"type": "speech", "tokens": "hi"}]},
         422, "unit tokens only"),  # fmt: skip
        ("/v1/classify", {"input": [{"type": "text", "text": "hi"}]}, 422, "labels"),
        ("/v1/classify", {"input": [{"type": "text", "text": "hi"}], "labels": ["a"]}, 422, "labels"),
        ("/v1/classify", {"input": [{"type": "text", "text": "hi"}], "labels": ["a", "a"]}, 422, "distinct"),
        ("/v1/classify", {"input": [{"type": "text", "text": "hi"}], "labels": ["a", "b"], "shots": 2}, 422, "pool"),
    ],
)
def test_bad_input_gets_a_clear_4xx(client: httpx.Client, path: str, body: dict, status: int, message: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
    assert client.get("/readyz").status_code == 200
