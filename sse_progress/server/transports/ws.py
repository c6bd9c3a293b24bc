"""WebSocket: the same frames and replay as SSE, one JSON text message per frame.

Under uvicorn's sans-I/O and wsproto protocols, a live frame that finds the stream caught up is written by the
hub's fan-out as a pre-encoded WebSocket frame (see ``stream_socket.WebSocketWriter``); everything else, and
every frame under other servers, goes through ``send``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from sse_progress.engines import EngineUnavailable
from sse_progress.protocol.errors import ApiError
from sse_progress.protocol.events import format_event_id, now_iso
from sse_progress.protocol.frames import Frame
from sse_progress.protocol.tokens import Role
from sse_progress.server.metrics import METRICS
from sse_progress.server.replay import AlreadyFinished, SessionCursor, SessionExpired
from sse_progress.server.service import Service
from sse_progress.server.stream_socket import cap_send_buffer, drop, transport_of, websocket_writer_of
from sse_progress.server.transports.connection import ConnectionRecord
from sse_progress.server.transports.disconnect import (
    ALREADY_FINISHED,
    CLIENT_LEFT,
    CLOSE_POLICY,
    CLOSE_SERVICE_RESTART,
    CLOSE_TRY_AGAIN,
    FINISHED,
    INTERNAL_ERROR,
    MESSAGE_TOO_BIG,
    SHUT_BY_SERVER,
    STREAM_ENDINGS,
    TOO_SLOW,
    Disconnect,
    disconnect_for,
)

log = logging.getLogger("sse_progress.connections")

MAX_MESSAGE_BYTES = 64 * 1024
MAX_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes, 2 of them the code
CLOSE_TIMEOUT_SECONDS = 5.0
DISCONNECTED = (WebSocketDisconnect, RuntimeError, OSError)

FrameText = Callable[[Frame], str]
"""The message a frame is sent as (the legacy ``/session/<id>`` route renames snapshot frames)."""


def frame_text(frame: Frame) -> str:
    return frame.text


async def session_socket(websocket: WebSocket, render: FrameText = frame_text) -> None:
    service = Service.of(websocket)
    try:
        session_id = service.session_id(websocket)
        service.authorize(websocket, session_id, Role.SUBSCRIBE)
        service.admit_connection()
    except ApiError as error:
        # Accept, then close: a browser shows a refused handshake only as 1006, without the code or the reason.
        await websocket.accept()
        await _close(websocket, CLOSE_TRY_AGAIN if error.status == 503 else CLOSE_POLICY, error.message)
        return
    await websocket.accept()
    resume = websocket.query_params.get("last_event_id")
    try:
        stream = await SessionCursor.open(service.hub, session_id, resume, "ws")
    except AlreadyFinished:
        await _end(websocket, ALREADY_FINISHED)
        return
    except (SessionExpired, EngineUnavailable) as error:
        await _end(websocket, disconnect_for(error))
        return
    # Sent once the session is followed: an event published after the client reads it is not missed.
    try:
        await _send(
            websocket,
            {
                "type": "connection_established",
                "session_id": session_id,
                "timestamp": now_iso(),
                "message": "connected; progress events follow",
            },
        )
    except DISCONNECTED:
        stream.close()
        return
    await WebSocketConnection(websocket, service, stream, resume, render).run()


class WebSocketConnection:
    """One WebSocket client following one session: a task writing frames, a task answering control messages."""

    def __init__(
        self,
        websocket: WebSocket,
        service: Service,
        stream: SessionCursor,
        resume: str | None,
        render: FrameText = frame_text,
    ) -> None:
        self.websocket = websocket
        self.render = render
        self.service = service
        self.stream = stream
        self.connection = ConnectionRecord(stream.listener.session_id, "ws", resume)
        # Starlette wraps ``send`` in a closure; uvicorn's ``receive`` is a method of the protocol holding it.
        self.transport = transport_of(websocket._send) or transport_of(websocket._receive)

    async def run(self) -> None:
        listener = self.stream.listener
        sender = asyncio.ensure_future(self._deliver())
        receiver = asyncio.ensure_future(self._receive())
        # The hub cancels the sender when it is blocked writing to a client that stopped reading.
        listener.task = sender
        try:
            cap_send_buffer(self.transport, self.service.settings.socket_send_buffer)
            # Under uvicorn, live frames that find the stream caught up are written by the hub's fan-out itself.
            listener.writer = websocket_writer_of(self.websocket._receive, self.service.settings.buffer_bytes)
            await asyncio.wait((sender, receiver), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, receiver):
                task.cancel()
            listener.task = None
            listener.writer = None
            # Release the buffer before the close handshake, which waits for a slow client to read.
            self.stream.close()
            ending = self._ending(sender, receiver)
            self.connection.closed(ending.reason, self.stream.sent)
        if ending.reset and drop(self.transport):
            return  # a 1013 would queue behind what the client does not read, and never reach it
        await _end(self.websocket, ending)

    def _ending(self, sender: asyncio.Future[Disconnect], receiver: asyncio.Future[Disconnect]) -> Disconnect:
        if self.stream.listener.aborted:
            return TOO_SLOW
        for task in (sender, receiver):
            if task.done() and not task.cancelled():
                error = task.exception()
                if error is None:
                    return task.result()
                log.error("websocket stream failed", exc_info=error)
                return INTERNAL_ERROR
        return CLIENT_LEFT

    async def _deliver(self) -> Disconnect:
        listener = self.stream.listener
        delivered = METRICS.events_delivered.labels("ws")
        try:
            async for batch in self.stream.batches():
                for frame in batch:  # an empty batch is a heartbeat: WebSocket pings are uvicorn's
                    await listener.write(self.websocket.send_text(self.render(frame)))
                delivered.inc(len(batch))
        except STREAM_ENDINGS as error:
            return disconnect_for(error)
        except DISCONNECTED:
            return CLIENT_LEFT
        return CLIENT_LEFT if listener.gone else FINISHED

    async def _receive(self) -> Disconnect:
        """Answer the client's control messages until it disconnects."""
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    # uvicorn reports its own 1012 close at shutdown as a disconnect.
                    return SHUT_BY_SERVER if message.get("code") == CLOSE_SERVICE_RESTART else CLIENT_LEFT
                raw = message.get("text") or message.get("bytes") or b""
                if len(raw) > MAX_MESSAGE_BYTES:
                    return MESSAGE_TOO_BIG
                await _send(self.websocket, _answer(raw, self.service, self.stream))
        except DISCONNECTED:
            return CLIENT_LEFT


def _answer(raw: str | bytes, service: Service, stream: SessionCursor) -> dict[str, object]:
    try:
        request = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"type": "error", "error": 'invalid JSON: send {"type": "ping"} or {"type": "status_request"}'}
    kind = request.get("type") if isinstance(request, dict) else None
    if kind == "ping":
        return {"type": "pong", "timestamp": now_iso()}
    if kind == "status_request":
        last = stream.last_id
        return {
            "type": "status_response",
            "session_id": stream.listener.session_id,
            "connections": service.hub.connections(stream.listener.session_id),
            "last_event_id": None if last is None else format_event_id(last),
            "status": stream.status,
        }
    return {"type": "error", "error": f"unknown message type {kind!r}: use ping or status_request"}


async def _send(websocket: WebSocket, message: dict[str, object]) -> None:
    await websocket.send_text(orjson.dumps(message).decode())


async def _end(websocket: WebSocket, ending: Disconnect) -> None:
    if ending.close_code is not None:
        await _close(websocket, ending.close_code, ending.close_text)


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    """Close, unless the client is gone; a client that does not read gets the time it takes to read the rest."""
    reason = reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore")
    with contextlib.suppress(TimeoutError, *DISCONNECTED):
        await asyncio.wait_for(websocket.close(code, reason=reason), CLOSE_TIMEOUT_SECONDS)
