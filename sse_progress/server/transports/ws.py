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
from sse_progress.server.replay import AlreadyFinished, ServerClosing, SessionCursor, SessionExpired, SlowConsumer
from sse_progress.server.service import Service
from sse_progress.server.stream_socket import cap_send_buffer, drop, transport_of, websocket_writer_of
from sse_progress.server.transports.connection import ConnectionRecord

log = logging.getLogger("sse_progress.connections")

MAX_MESSAGE_BYTES = 64 * 1024
MAX_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes, 2 of them the code
CLOSE_TIMEOUT_SECONDS = 5.0
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013
DISCONNECTED = (WebSocketDisconnect, RuntimeError, OSError)

Ending = tuple[int | None, str]
"""How a connection ends: the close code to send (None: the socket is already closed) and the logged reason."""

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
        await _close(websocket, CLOSE_NORMAL, "session already finished")
        return
    except SessionExpired:
        await _close(websocket, CLOSE_NORMAL, "session expired: nothing is stored any more")
        return
    except EngineUnavailable:
        await _close(websocket, CLOSE_TRY_AGAIN, "event store unavailable")
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
        cap_send_buffer(self.transport, self.service.settings.socket_send_buffer)
        # Under uvicorn, live frames that find the stream caught up are written by the hub's fan-out itself.
        listener.writer = websocket_writer_of(self.websocket._receive, self.service.settings.buffer_bytes)
        sender = asyncio.ensure_future(self._deliver())
        receiver = asyncio.ensure_future(self._receive())
        # The hub cancels the sender when it is blocked writing to a client that stopped reading.
        listener.task = sender
        try:
            await asyncio.wait((sender, receiver), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, receiver):
                task.cancel()
            listener.task = None
            listener.writer = None
            # Release the buffer before the close handshake, which waits for a slow client to read.
            self.stream.close()
            code, reason = self._ending(sender, receiver)
            self.connection.closed(reason, self.stream.sent)
        if reason == "too slow" and drop(self.transport):
            return  # reset: a 1013 would queue behind what the client does not read, and never reach it
        if code is not None:
            await _close(self.websocket, code, reason)

    def _ending(self, sender: asyncio.Future[Ending], receiver: asyncio.Future[Ending]) -> Ending:
        if self.stream.listener.aborted:
            return CLOSE_TRY_AGAIN, "too slow"
        for task in (sender, receiver):
            if task.done() and not task.cancelled():
                error = task.exception()
                if error is None:
                    return task.result()
                log.error("websocket stream failed", exc_info=error)
                return CLOSE_INTERNAL_ERROR, "internal error"
        return None, "client left"

    async def _deliver(self) -> Ending:
        listener = self.stream.listener
        delivered = METRICS.events_delivered.labels("ws")
        try:
            async for batch in self.stream.batches():
                for frame in batch:  # an empty batch is a heartbeat: WebSocket pings are uvicorn's
                    await listener.write(self.websocket.send_text(self.render(frame)))
                delivered.inc(len(batch))
        except SlowConsumer:
            return CLOSE_TRY_AGAIN, "too slow"
        except ServerClosing:
            return CLOSE_SERVICE_RESTART, "shutdown"
        except EngineUnavailable:
            return CLOSE_TRY_AGAIN, "event store unavailable"
        except SessionExpired:
            return CLOSE_NORMAL, "session expired: nothing is stored any more"
        except DISCONNECTED:
            return None, "client left"
        if listener.gone:
            return None, "client left"
        return CLOSE_NORMAL, "finished"

    async def _receive(self) -> Ending:
        """Answer the client's control messages until it disconnects."""
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    # uvicorn reports its own 1012 close at shutdown as a disconnect.
                    return None, "shutdown" if message.get("code") == CLOSE_SERVICE_RESTART else "client left"
                raw = message.get("text") or message.get("bytes") or b""
                if len(raw) > MAX_MESSAGE_BYTES:
                    return CLOSE_TOO_BIG, "message over 64 KiB"
                await _send(self.websocket, _answer(raw, self.service, self.stream))
        except DISCONNECTED:
            return None, "client left"


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


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    """Close, unless the client is gone; a client that does not read gets the time it takes to read the rest."""
    reason = reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore")
    with contextlib.suppress(TimeoutError, *DISCONNECTED):
        await asyncio.wait_for(websocket.close(code, reason=reason), CLOSE_TIMEOUT_SECONDS)
