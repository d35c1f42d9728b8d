"""Graceful drain on SIGTERM, as Kubernetes sends it before it stops a pod.

Readiness turns false and new work is refused (503 Retry-After, websocket 1013) at once; requests and
websocket answers already running may finish, up to `drain_timeout_s`; then uvicorn shuts down and the
process exits 0. Open realtime sessions refuse new responses, and each is closed with 1012 (service restart:
reconnect) as soon as it has no answer running, so its client moves to another replica instead of waiting
for the shutdown. A second signal, or SIGINT, keeps uvicorn's own immediate behaviour.
"""

import asyncio
import logging
import signal
import socket
from types import FrameType

import uvicorn

from spiritserve.server.admission import Admission

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, admission: Admission, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.admission = admission
        self.drain_timeout_s = drain_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self._loop is None or self.admission.draining:
            super().handle_exit(sig, frame)
            return
        # Not recorded as a captured signal: uvicorn would re-raise it after shutdown and exit with 143.
        self.admission.draining = True
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self.admission.drain_started.set()
        self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        logger.info("SIGTERM: draining (readiness false, new work refused) for up to %.0f s", self.drain_timeout_s)
        deadline = asyncio.get_running_loop().time() + self.drain_timeout_s
        while self.admission.busy and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        if self.admission.busy:
            logger.warning("drain deadline reached with work still running; shutting down anyway")
        self.should_exit = True
