"""The recording proxy as a fixture: in front of the session's real server."""

import threading
from collections.abc import Iterator

import pytest

from tests.evaluation.proxy import RecordingProxy


@pytest.fixture()
def proxy(server_url: str) -> Iterator[RecordingProxy]:
    recorder = RecordingProxy(server_url)
    thread = threading.Thread(target=recorder.http.serve_forever, daemon=True)
    thread.start()
    yield recorder
    recorder.http.shutdown()
    recorder.http.server_close()
