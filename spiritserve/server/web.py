"""The browser voice-chat page: `GET /` and its static files (plain HTML/JS, no build step).

The page talks to `/v1/realtime` (docs/realtime.md, OpenAI's GA events): it records the microphone, streams
24 kHz PCM16 (`audio/pcm`) with server VAD on, and plays the streamed 24 kHz answer gaplessly. It keeps the
conversation as turns (a player for what was said and for each answer, with its time to first audio) and shows
what is served (`GET /v1/server`), warning when the weights are random. Everything it loads comes from this
server (its Content-Security-Policy says so); nothing is fetched from elsewhere.
"""

import functools
from importlib import resources
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(str(resources.files("spiritserve.server") / "static"))
# Only this origin: scripts (the audio worklet too), styles, the websocket; `data:` only for the empty favicon;
# `blob:` only for media: the conversation's players play WAVs the page builds from the audio sent and received.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; media-src 'self' blob:; object-src 'none'; base-uri 'self'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def index() -> HTMLResponse:
    """The voice-chat page. Query parameters preset its controls (e.g. `?max_response_seconds=1`)."""
    headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"}
    return HTMLResponse(_page(), headers=headers)


@functools.cache
def _page() -> str:
    return (STATIC_DIR / "index.html").read_text(encoding="utf-8")


def static_files() -> StaticFiles:
    """The page's scripts and styles, to mount at `/static`."""
    return StaticFiles(directory=STATIC_DIR)
