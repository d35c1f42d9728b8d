"""Schemathesis against the real server's own OpenAPI document, every route: generated requests, valid and
invalid (schemathesis' positive and negative modes), must never get a 5xx, and every answer must match what
the document says (status, content type, body schema, `Allow` on 405). A fixed seed makes a failure
reproduce; the example counts keep the run near two minutes.

Driven through Hypothesis directly rather than schemathesis' pytest plugin, whose lazy-schema fixture does
not run under pytest 9; the schema comes from the live server, so the document tested is the one served. The
server has small speech and time budgets so that valid requests, which generate, stay cheap."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import serve_process

SEED = 20261201
EXAMPLES = {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 60}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          allow_header_conformance]  # fmt: skip
MODEL_ROUTES = [("POST", "/v1/speech/continue"), ("POST", "/v1/generate"), ("POST", "/v1/tokenize"),
                ("POST", "/v1/synthesize"), ("POST", "/v1/chat/completions"), ("POST", "/v1/audio/speech"),
                ("POST", "/v1/audio/transcriptions")]  # fmt: skip
# Nothing invalid to generate (the model id is any string: unknown ones get their documented 404).
PROBE_ROUTES = [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/v1/models"), ("GET", "/v1/models/{model_id}"),
                ("GET", "/v1/server")]  # fmt: skip
CASES = [(*route, GenerationMode.POSITIVE) for route in MODEL_ROUTES + PROBE_ROUTES] + [
    (*route, GenerationMode.NEGATIVE) for route in MODEL_ROUTES
]


@pytest.fixture(scope="module")
def fuzz_url(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        "SPIRITSERVE_MAX_SPEECH_SECONDS": "2",
        "SPIRITSERVE_DEFAULT_SPEECH_SECONDS": "1",
        "SPIRITSERVE_DEFAULT_TEXT_TOKENS": "8",
        "SPIRITSERVE_GENERATION_TIMEOUT_S": "5",
    }
    with serve_process(tiny_bundle, tmp_path_factory, env) as (url, _):
        yield url


@pytest.fixture(scope="module")
def api_schema(fuzz_url: str):
    return schemathesis.openapi.from_url(f"{fuzz_url}/openapi.json")


def test_the_document_lists_every_route(api_schema):
    served = {(result.ok().method.upper(), result.ok().path) for result in api_schema.get_all_operations()}
    assert set(MODEL_ROUTES + PROBE_ROUTES) <= served, served


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
def test_generated_requests_are_answered_as_documented(
    api_schema, fuzz_url: str, method: str, path: str, mode: GenerationMode
):
    operation = api_schema[path][method]

    @seed(SEED)
    @settings(
        max_examples=EXAMPLES[mode], deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
        database=None,
    )  # fmt: skip
    @given(case=operation.as_strategy(generation_mode=mode))
    def answers_as_documented(case) -> None:
        case.call_and_validate(base_url=fuzz_url, checks=CHECKS, timeout=120)

    answers_as_documented()
