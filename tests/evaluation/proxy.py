"""A recording proxy in front of the real server, for tests that check what `spiritserve eval` sends and that its
reports follow the server's real answers."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


class RecordingProxy:
    """Forwards every request to the real server and keeps each `/v1/score` body with the server's answer."""

    def __init__(self, upstream: str) -> None:
        self.requests: list[dict] = []
        self.answers: list[dict] = []
        owner, lock = self, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _forward(self, method: str, body: bytes | None) -> None:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                answer = httpx.request(method, upstream + self.path, content=body, headers=headers, timeout=300)
                if body is not None and answer.status_code == 200:
                    with lock:
                        owner.requests.append(json.loads(body))
                        owner.answers.append(answer.json())
                self.send_response(answer.status_code)
                for name in ("Content-Type", "Retry-After"):
                    if name in answer.headers:
                        self.send_header(name, answer.headers[name])
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def do_GET(self) -> None:  # noqa: N802
                self._forward("GET", None)

            def do_POST(self) -> None:  # noqa: N802
                self._forward("POST", self.rfile.read(int(self.headers["Content-Length"])))

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"

    def clear(self) -> None:
        self.requests.clear()
        self.answers.clear()

    def accuracy(self, chosen: list[dict], right: int | list[int] = 0) -> float:
        """The share of the recorded answers to `chosen` requests whose best normalised candidate is the right one
        (`right`: one index for all, or one per request), as the task should count it."""
        answers = [answer for body, answer in zip(self.requests, self.answers, strict=True) if body in chosen]
        rights = right if isinstance(right, list) else [right] * len(answers)
        return sum(answer["best_normalized"] == index for answer, index in zip(answers, rights, strict=True)) / len(
            answers
        )
