"""EvalClient against a mock transport: parsing, retries after Retry-After, error messages, connection errors."""

import asyncio
import base64
import json

import httpx
import pytest

from spiritserve.evaluation.client import (
    EvalClient,
    EvalConnectionError,
    EvalServerError,
    audio_item,
    retry_after_seconds,
    text_item,
)

SCORES = {
    "prompt_tokens": 3,
    "scores": [
        {"index": 0, "logprob": -2.0, "tokens": 2, "normalized_logprob": -1.0},
        {"index": 1, "logprob": -1.5, "tokens": 1, "normalized_logprob": -1.5},
    ],
    "best": 1,
    "best_normalized": 0,
}


def run(handler, coroutine_factory, **kwargs):
    async def main():
        async with EvalClient("http://server/", transport=httpx.MockTransport(handler), **kwargs) as client:
            return await coroutine_factory(client), client

    return asyncio.run(main())


def test_score_sends_the_body_and_parses_the_answer() -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("authorization"), json.loads(request.content)))
        return httpx.Response(200, json=SCORES)

    prompt, candidates = [text_item("Hello")], [text_item(" a"), text_item(" b")]
    result, _ = run(handler, lambda client: client.score(prompt, candidates), api_key="k")
    assert seen == [("/v1/score", "Bearer k", {"prompt": prompt, "candidates": candidates})]
    assert result.best == 1 and result.best_normalized == 0 and result.prompt_tokens == 3
    assert [score.tokens for score in result.scores] == [2, 1]


def test_429_and_503_are_retried_after_retry_after() -> None:
    answers = iter(
        [
            httpx.Response(429, headers={"Retry-After": "0"}, json={"error": {"type": "rate_limited", "message": "x"}}),
            httpx.Response(503, headers={"Retry-After": "0"}, json={"error": {"type": "overloaded", "message": "y"}}),
            httpx.Response(200, json=SCORES),
        ]
    )
    result, client = run(lambda request: next(answers), lambda client: client.score([], [text_item("a")] * 2))
    assert result.best == 1 and client.retries == 2 and client.requests == 3


def test_retries_are_bounded_with_a_clear_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429, headers={"Retry-After": "0"}, json={"error": {"type": "rate_limited", "message": "slow down"}}
        )

    with pytest.raises(EvalServerError, match=r"429 \(rate_limited\): slow down \(still refused after 3 tries\)"):
        run(handler, lambda client: client.score([], [text_item("a")]), max_tries=3)


def test_other_errors_carry_the_servers_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"type": "invalid_request", "message": "joined sequence too long"}})

    with pytest.raises(EvalServerError) as raised:
        run(handler, lambda client: client.generate({"inputs": []}))
    assert raised.value.status == 400 and raised.value.message == "joined sequence too long"
    assert "/v1/generate answered 400 (invalid_request)" in str(raised.value)


def test_a_wrong_number_of_scores_is_an_error() -> None:
    with pytest.raises(EvalServerError, match="2 scores for 3 candidates"):
        run(lambda request: httpx.Response(200, json=SCORES), lambda client: client.score([], [text_item("a")] * 3))


def test_unreachable_server() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(EvalConnectionError, match="cannot reach the server at http://server: connection refused"):
        run(handler, lambda client: client.server_info())


def test_concurrency_is_bounded() -> None:
    in_flight = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return httpx.Response(200, json=SCORES)

    async def many(client: EvalClient):
        return await asyncio.gather(*(client.score([], [text_item("a")] * 2) for _ in range(12)))

    results, _ = run(handler, many, concurrency=3)
    assert len(results) == 12 and peak == 3


def test_items_and_retry_after(tmp_path) -> None:
    path = tmp_path / "a.wav"
    path.write_bytes(b"RIFF1234")
    assert audio_item(path) == {"type": "speech", "audio_base64": base64.b64encode(b"RIFF1234").decode()}
    assert text_item("x") == {"type": "text", "text": "x"}
    assert retry_after_seconds("2") == 2 and retry_after_seconds(None) == 1 and retry_after_seconds("soon") == 1
    assert retry_after_seconds("3600") == 60
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # a date in the past: now
