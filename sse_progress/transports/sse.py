"""Server-Sent Events: streaming, and poll mode (answer at once and close; the browser's reconnect polls)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response

from ..auth import Role
from ..errors import ApiError
from ..frames import retry_line
from ..metrics import METRICS
from ..replay import AlreadyFinished, ServerClosing, SessionStream, SlowConsumer, plan_replay
from ..service import Service

log = logging.getLogger("sse_progress.connections")
SHUTDOWN_GRACE_SECONDS = 2.0

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Content-Type-Options": "nosniff"}


def resume_id(request: Request) -> str | None:
    return request.headers.get("last-event-id") or request.query_params.get("last_event_id")


async def events(request: Request) -> Response:
    service = Service.of(request)
    session_id = service.session_id(request)
    service.authorize(request, session_id, Role.SUBSCRIBE)
    mode = request.query_params.get("mode", "stream")
    if mode == "poll":
        return await _poll(service, session_id, resume_id(request))
    if mode != "stream":
        raise ApiError(400, "mode must be 'stream' (the default) or 'poll'")
    service.admit_connection()
    try:
        stream = await SessionStream.open(service.hub, session_id, resume_id(request), "sse")
    except AlreadyFinished:
        return Response(status_code=204)
    return EventSourceResponse(
        _body(stream, service.settings.retry_ms),
        headers=STREAM_HEADERS,
        ping=service.settings.heartbeat,
        ping_message_factory=lambda: ServerSentEvent(comment="ping", sep="\n"),
        sep="\n",
        # sse-starlette calls set() on this at shutdown: the listener wakes and the stream says goodbye.
        shutdown_event=stream.listener,  # type: ignore[arg-type]
        shutdown_grace_period=SHUTDOWN_GRACE_SECONDS,
    )


async def _body(stream: SessionStream, retry_ms: int) -> AsyncIterator[bytes]:
    METRICS.open_connections.labels("sse").inc()
    delivered = METRICS.events_delivered.labels("sse")
    started, sent, reason = time.monotonic(), 0, "client left"
    try:
        yield retry_line(retry_ms)
        async for batch in stream.batches():
            # One write per wake-up: frames that arrived together leave together.
            yield b"".join([frame.sse for frame in batch])
            delivered.inc(len(batch))
            sent += len(batch)
        reason = "finished"
    except SlowConsumer:
        reason = "too slow"  # the browser reconnects with Last-Event-ID and replays from the stream
    except ServerClosing:
        reason = "shutdown"
        # Spread the reconnects so the remaining instances are not hit by all clients at once.
        yield retry_line(random.randint(250, 2000))
    finally:
        stream.close()
        METRICS.open_connections.labels("sse").dec()
        _log_close(stream, started, sent, reason)


def _log_close(stream: SessionStream, started: float, sent: int, reason: str) -> None:
    duration = time.monotonic() - started
    transport = stream.listener.transport
    log.info(
        "closed %s stream of session %s after %.1fs, %d events sent (%s)",
        transport,
        stream.listener.session_id,
        duration,
        sent,
        reason,
        extra={
            "fields": {
                "session_id": stream.listener.session_id,
                "transport": transport,
                "duration": round(duration, 3),
                "events_sent": sent,
                "reason": reason,
            }
        },
    )


async def _poll(service: Service, session_id: str, resume: str | None) -> Response:
    try:
        replay = await plan_replay(service.engine, session_id, resume)
    except AlreadyFinished:
        return Response(status_code=204)
    body = retry_line(service.settings.poll_ms) + b"".join([frame.sse for frame in replay.frames])
    METRICS.events_delivered.labels("poll").inc(len(replay.frames))
    return Response(body, media_type="text/event-stream", headers=STREAM_HEADERS)
