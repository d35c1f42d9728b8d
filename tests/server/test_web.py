"""The voice-chat page at `/`: served as plain files, and a spoken turn in a real headless Chromium.

The browser is Debian's Chromium (`apt-get install chromium`; scripts/test.sh installs it) driven by
Playwright. Its fake microphone plays a committed speech clip followed by silence, so the server's VAD
ends the turn by itself, exactly as with a person talking.
"""

import re
from urllib.parse import urlsplit

import pytest

TURN_TIMEOUT_MS = 45_000


def test_the_page_and_its_files_are_served_from_here(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'src="static/app.js"' in page.text and not re.search(r'(src|href)="(https?:)?//', page.text)
    for name, kind in [("app.js", "javascript"), ("recorder-worklet.js", "javascript"), ("app.css", "text/css")]:
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"], name
    assert client.get("/static/missing.js").status_code == 404
    assert client.get("/static/../web.py").status_code == 404
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(path.startswith("/static") for path in paths)


# Hides AudioWorklet, as on a page served over plain http from another host: the ScriptProcessor path runs.
WITHOUT_AUDIO_WORKLET = "Object.defineProperty(BaseAudioContext.prototype, 'audioWorklet', {get: () => undefined})"


@pytest.mark.parametrize("recorder", ["audioworklet", "scriptprocessor"])
def test_a_spoken_turn_in_the_browser_gets_a_streamed_spoken_answer(browser, server_url, recorder):
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
    # Everything came from this server: the page, its files, and the websocket.
    server = urlsplit(server_url).netloc
    assert requests and all(urlsplit(url).netloc == server for url in requests), requests
    assert sockets == [f"ws://{server}/v1/realtime"]

    page.click("#start")  # now "Stop"
    assert page.inner_text("#status") == "stopped" and page.inner_text("#start") == "Start"
