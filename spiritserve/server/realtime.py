"""`/v1/realtime`: streaming voice chat over a websocket, speaking OpenAI's GA Realtime events (docs/realtime.md).

This module is the transport: the route admits a session (realtime_session.py) through the same `Admission` as
REST, then `RealtimeConnection` sends its events and reads client messages until the client leaves, goes idle
or a drain closes it; each message is parsed into a client event (realtime_protocol.py) and handed to the
session's handler for it. Whatever a handler raises becomes an `error` event; the session lives on.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from spiritserve.errors import OverloadedError, SpiritServeError
from spiritserve.pipeline import SpiritPipeline
from spiritserve.server.admission import Admission
from spiritserve.server.realtime_protocol import (
    CLIENT_EVENTS,
    PROTOCOL,
    ConversationItemCreate,
    ConversationItemDelete,
    ConversationItemRetrieve,
    ConversationItemTruncate,
    InputAudioAppend,
    InputAudioClear,
    InputAudioCommit,
    RealtimeError,
    ResponseCancel,
    ResponseCreate,
    ServerEvent,
    SessionUpdate,
    error_event,
    validation_message,
)
from spiritserve.server.realtime_session import RealtimeSession

logger = logging.getLogger(__name__)
router = APIRouter()
TRY_AGAIN_LATER = 1013  # websocket close code: the server is at its session limit
SERVICE_RESTART = 1012  # websocket close code: this replica is draining; reconnect (to another one)

HANDLERS: dict[type, Callable[[RealtimeSession, Any], Awaitable[None]]] = {  # client event → its handler
    SessionUpdate: RealtimeSession.update_session,
    InputAudioAppend: RealtimeSession.append,
    InputAudioCommit: RealtimeSession.commit,
    InputAudioClear: RealtimeSession.clear,
    ResponseCreate: RealtimeSession.create_response,
    ResponseCancel: RealtimeSession.cancel_response,
    ConversationItemCreate: RealtimeSession.create_item,
    ConversationItemDelete: RealtimeSession.delete_item,
    ConversationItemRetrieve: RealtimeSession.retrieve_item,
    ConversationItemTruncate: RealtimeSession.truncate_item,
}


class RealtimeConnection:
    """One session's websocket: events out (one at a time: a response streams while handlers answer), client
    messages in."""

    def __init__(self, websocket: WebSocket, admission: Admission, idle_timeout_s: float, max_message_bytes: int):
        self.websocket, self.admission = websocket, admission
        self.idle_timeout_s, self.max_message_bytes = idle_timeout_s, max_message_bytes
        self._send_lock = asyncio.Lock()

    async def send(self, event: ServerEvent) -> None:
        async with self._send_lock:
            await self.websocket.send_json(event.model_dump(mode="json"))

    async def serve(self, session: RealtimeSession) -> None:
        await self.send(session.created())
        drain_started = asyncio.ensure_future(self.admission.drain_started.wait())
        try:
            while True:
                if self.admission.draining and not session.responding:
                    await self.websocket.close(code=SERVICE_RESTART, reason="the server is shutting down; reconnect")
                    return
                try:
                    message = await self._next_message(session, drain_started)
                except TimeoutError:
                    await self.send(error_event("idle_timeout", "no message for too long; closing the session"))
                    await self.websocket.close(code=1000, reason="idle timeout")
                    return
                if message is None:
                    continue  # a drain started, or the answer a drain waited for ended
                if message["type"] == "websocket.disconnect":
                    return
                await self._handle(session, message.get("text"))
        finally:
            drain_started.cancel()
            await session.close()

    async def _next_message(self, session: RealtimeSession, drain_started: asyncio.Future) -> dict | None:
        """The client's next message; None when a drain starts first, or (while draining) the running answer
        ends first. TimeoutError when the client has been silent too long while nothing was being answered."""
        receive = asyncio.ensure_future(self.websocket.receive())
        wake = {drain_started} if not self.admission.draining else {session.response} if session.responding else set()
        done, _ = await asyncio.wait({receive, *wake}, timeout=self.idle_timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        if receive in done:
            return receive.result()
        receive.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receive
        if not done and not session.responding:  # idle (a client listening to an answer is not)
            raise TimeoutError
        return None

    async def _handle(self, session: RealtimeSession, text: str | None) -> None:
        if text is None:
            await self.send(error_event("binary_not_supported", "send JSON text messages; audio goes in base64"))
            return
        if len(text.encode()) > self.max_message_bytes:
            limit = self.max_message_bytes
            await self.send(error_event("message_too_large", f"a message may be at most {limit} bytes"))
            return
        try:
            payload = json.loads(text)
        except (ValueError, RecursionError) as exc:  # not JSON, nested too deep, an integer of 5000 digits, ...
            await self.send(error_event("invalid_json", f"the message is not valid JSON: {_reason(exc)}"))
            return
        try:
            event = CLIENT_EVENTS.validate_python(payload)
        except ValidationError as exc:
            await self.send(error_event("invalid_event", validation_message(exc), _event_id_of(payload)))
            return
        try:
            await HANDLERS[type(event)](session, event)
        except RealtimeError as exc:
            await self.send(error_event(exc.code, str(exc), event.event_id, exc.param))
        except SpiritServeError as exc:
            await self.send(error_event(type(exc).__name__, str(exc), event.event_id))
        except WebSocketDisconnect:
            raise
        except Exception:  # a bug, not the client's fault: say so, and keep the session
            logger.exception("session %s: %s failed", session.id, event.type)
            await self.send(error_event("server_error", "the server failed to handle this event", event.event_id))


def _event_id_of(payload) -> str | None:
    event_id = payload.get("event_id") if isinstance(payload, dict) else None
    return event_id if isinstance(event_id, str) and len(event_id) <= 128 else None


def _reason(exc: Exception) -> str:
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc)


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket) -> None:
    """Voice chat: see docs/realtime.md for the events."""
    state = websocket.app.state
    pipeline: SpiritPipeline | None = getattr(state, "pipeline", None)
    settings, admission, metrics = state.settings, state.admission, state.metrics
    # Select our subprotocol when offered (browsers sending the key as one need an answer naming a protocol).
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=PROTOCOL if PROTOCOL in offered else None)
    if pipeline is None or not pipeline.engine.is_healthy:
        await websocket.close(code=TRY_AGAIN_LATER, reason="the model is not loaded")
        return
    connection = RealtimeConnection(websocket, admission, settings.realtime_idle_timeout_s,
                                    settings.realtime_max_message_bytes)  # fmt: skip
    try:
        with admission.realtime_session():
            session = RealtimeSession(pipeline, settings, admission, metrics, state.vad_factory, connection.send)
            await connection.serve(session)
    except OverloadedError as exc:  # refused before the session opened: draining, or at the session limit
        await websocket.close(code=TRY_AGAIN_LATER, reason=str(exc))
    except WebSocketDisconnect:
        pass
