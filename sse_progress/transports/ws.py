"""WebSocket: the same frames and replay as SSE, one JSON text message per frame."""

from __future__ import annotations

import asyncio

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..auth import Role
from ..engines import EngineUnavailable
from ..errors import ApiError
from ..events import format_event_id, now_iso
from ..metrics import METRICS
from ..replay import AlreadyFinished, SessionStream, SlowConsumer
from ..service import Service

MAX_MESSAGE_BYTES = 64 * 1024
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN = 1013


async def session_socket(websocket: WebSocket) -> None:
    service = Service.of(websocket)
    try:
        session_id = service.session_id(websocket)
        service.authorize(websocket, session_id, Role.SUBSCRIBE)
        service.admit_connection()
    except ApiError as error:
        code = CLOSE_TRY_AGAIN if error.status == 503 else CLOSE_POLICY
        await websocket.close(code, reason=error.message[:120])
        return
    await websocket.accept()
    await _send(
        websocket,
        {
            "type": "connection_established",
            "session_id": session_id,
            "timestamp": now_iso(),
            "message": "connected; progress events follow",
        },
    )
    try:
        stream = await SessionStream.open(service.hub, session_id, websocket.query_params.get("last_event_id"), "ws")
    except AlreadyFinished:
        await websocket.close(CLOSE_NORMAL, reason="session already finished")
        return
    except EngineUnavailable:
        await websocket.close(CLOSE_TRY_AGAIN, reason="event store unavailable")
        return

    METRICS.open_connections.labels("ws").inc()
    sender = asyncio.ensure_future(_deliver(websocket, stream))
    receiver = asyncio.ensure_future(_receive(websocket, service, stream))
    try:
        await asyncio.wait((sender, receiver), return_when=asyncio.FIRST_COMPLETED)
        if sender.done() and sender.exception() is None:
            await websocket.close(sender.result())
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass  # the client went away
    finally:
        for task in (sender, receiver):
            task.cancel()
        stream.close()
        METRICS.open_connections.labels("ws").dec()


async def _deliver(websocket: WebSocket, stream: SessionStream) -> int:
    delivered = METRICS.events_delivered.labels("ws")
    try:
        async for batch in stream.batches():
            for frame in batch:
                await websocket.send_text(frame.text)
            delivered.inc(len(batch))
    except SlowConsumer:
        return CLOSE_TRY_AGAIN
    except (WebSocketDisconnect, RuntimeError, OSError):
        return CLOSE_GOING_AWAY
    return CLOSE_NORMAL


async def _receive(websocket: WebSocket, service: Service, stream: SessionStream) -> None:
    """Answer the client's control messages until it disconnects."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text") or message.get("bytes") or b""
            if len(raw) > MAX_MESSAGE_BYTES:
                await websocket.close(CLOSE_TOO_BIG, reason="message over 64 KiB")
                return
            await _send(websocket, _answer(raw, service, stream))
    except (WebSocketDisconnect, RuntimeError, OSError):
        return


def _answer(raw: str | bytes, service: Service, stream: SessionStream) -> dict[str, object]:
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
