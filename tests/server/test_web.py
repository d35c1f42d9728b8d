"""The voice-chat page at `/`: served as plain files, what it shows of the served model (`GET /v1/server`),
and a spoken turn in a real headless Chromium.

The browser is Debian's Chromium (`apt-get install chromium`; scripts/test.sh installs it) driven by
Playwright. Its fake microphone plays a committed speech clip followed by silence, so the server's VAD
ends the turn by itself, exactly as with a person talking.
"""

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import serve_process

TURN_TIMEOUT_MS = 45_000
KEY = "sk-test-page"
# An <audio> element's duration once its metadata has loaded (or why it cannot play).
PLAYABLE_DURATION = """(audio) => new Promise((resolve, reject) => {
  if (audio.readyState >= HTMLMediaElement.HAVE_METADATA) return resolve(audio.duration);
  audio.addEventListener("loadedmetadata", () => resolve(audio.duration), { once: true });
  audio.addEventListener("error", () => reject(new Error(`unplayable: ${audio.error.message}`)), { once: true });
})"""


def test_the_page_and_its_files_are_served_from_here(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self';" in policy and "media-src 'self' blob:;" in policy
    assert 'src="static/app.js"' in page.text and not re.search(r'(src|href)="(https?:)?//', page.text)
    for name, kind in [("app.js", "javascript"), ("recorder-worklet.js", "javascript"), ("app.css", "text/css")]:
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"], name
    assert client.get("/static/missing.js").status_code == 404
    assert client.get("/static/../web.py").status_code == 404
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(path.startswith("/static") for path in paths)


def test_the_server_says_what_it_serves(client, tiny_bundle: Path):
    served = client.get("/v1/server")
    assert served.status_code == 200
    model = client.get("/v1/models").json()["data"][0]["id"]
    assert served.json() == {
        "model": model,
        "variant": "base",
        "checkpoint_root": str(tiny_bundle),
        "random_weights": True,
    }


@pytest.fixture(scope="module")
def keyed_url(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_process(tiny_bundle, tmp_path_factory, {"SPIRITSERVE_API_KEYS": KEY}) as (url, _):
        yield url


def test_with_keys_on_the_description_needs_the_key_the_page_was_opened_with(keyed_url, browser, tiny_bundle):
    refused = httpx.get(f"{keyed_url}/v1/server")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    served = httpx.get(f"{keyed_url}/v1/server", headers={"Authorization": f"Bearer {KEY}"})
    assert served.status_code == 200 and served.json()["checkpoint_root"] == str(tiny_bundle)

    page = browser.new_page()
    page.goto(f"{keyed_url}/?api_key={KEY}")
    page.wait_for_selector("#random_weights", state="visible")
    assert str(tiny_bundle) in page.inner_text("#served")
    page.goto(keyed_url)  # without the key the page says how to give it
    page.wait_for_function("() => document.querySelector('#served').innerText.includes('api_key=KEY')")
    assert page.is_hidden("#random_weights")
    page.close()


# Hides AudioWorklet, as on a page served over plain http from another host: the ScriptProcessor path runs.
WITHOUT_AUDIO_WORKLET = "Object.defineProperty(BaseAudioContext.prototype, 'audioWorklet', {get: () => undefined})"


@pytest.mark.parametrize("recorder", ["audioworklet", "scriptprocessor"])
def test_a_spoken_turn_in_the_browser_gets_a_streamed_spoken_answer(browser, server_url, tiny_bundle, recorder):
    page = browser.new_page()
    if recorder == "scriptprocessor":
        page.add_init_script(WITHOUT_AUDIO_WORKLET)
    requests, sockets, console_errors = [], [], []
    page.on("request", lambda request: requests.append(request.url))
    page.on("websocket", lambda socket: sockets.append(socket.url))
    page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
    page.on("pageerror", lambda error: console_errors.append(str(error)))

    page.goto(f"{server_url}/?max_response_seconds=1&seed=3&silence_ms=300")
    assert page.input_value("#max_response_seconds") == "1"
    # What is served, and that its speech is noise (the tiny bundle's random weights).
    page.wait_for_selector("#random_weights", state="visible")
    assert "random weights" in page.inner_text("#random_weights")
    served = page.inner_text("#served")
    assert "spirit-lm-base-7b" in served and "base variant" in served and str(tiny_bundle) in served
    page.click("#start")
    try:
        page.wait_for_function(
            "() => window.spiritserve.samplesPlayed > 0 && window.spiritserve.responsesCompleted >= 1",
            timeout=TURN_TIMEOUT_MS,
        )
    except Exception as exc:
        state = page.evaluate("() => window.spiritserve")
        pytest.fail(f"no spoken answer played: {exc}\nstate: {state}\nlog:\n{page.inner_text('#log')}")
    state = page.evaluate("() => window.spiritserve")
    log = page.inner_text("#log")

    assert state["lastError"] is None and not console_errors, (state, console_errors, log)
    assert state["recorder"] == recorder and state["inputSampleRate"] == 24000  # audio/pcm at 24 kHz
    assert state["chunksSent"] > 0 and state["turnsCommitted"] >= 1  # the server's VAD ended the turn
    assert state["audioDeltas"] >= 1 and state["samplesPlayed"] % 960 == 0  # whole vocoder hops, 24 kHz
    answer = re.search(r"answer completed: \d+ tokens, (\d+\.\d+) s of audio", log)
    assert answer and 0 < float(answer.group(1)) <= 1.0, log  # at most the 1 s of speech asked
    # The conversation, as turns: what was said, then the answer, each with a player; the answer's time to first audio.
    turns = page.locator("#turns > li")
    assert turns.first.get_attribute("class") == "turn user"
    assert turns.first.locator("audio").evaluate(PLAYABLE_DURATION) > 0
    completed = page.locator("#turns > li.assistant[data-status=completed]").first
    assert completed.locator("audio").evaluate(PLAYABLE_DURATION) == pytest.approx(float(answer.group(1)), abs=0.01)
    assert re.search(r"first audio after \d+ ms", completed.inner_text()), completed.inner_text()
    # Everything came from this server: the page, its files, and the websocket; the players' audio is made by the
    # page (blob: URLs of this origin).
    server = urlsplit(server_url).netloc
    assert requests and all(urlsplit(url.removeprefix("blob:")).netloc == server for url in requests), requests
    assert sockets == [f"ws://{server}/v1/realtime"]

    page.click("#start")  # now "Stop"
    assert page.inner_text("#status") == "stopped" and page.inner_text("#start") == "Start"
