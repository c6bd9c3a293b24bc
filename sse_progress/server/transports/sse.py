"""Server-Sent Events: streaming, and poll mode (answer at once and close; the browser's reconnect polls).

The stream is written by ``SseResponse``, a small ASGI response: after the headers it writes pre-encoded
frames straight to the server's ``send`` (the app routes streams past its middleware), one write per
wake-up, with no timer or wrapper per connection and one extra task that notices the client leaving. Under
uvicorn, live frames that find the stream caught up skip even that: the hub's fan-out writes their pre-framed
chunk to the socket itself (see ``stream_socket.SocketWriter``); elsewhere every frame goes through ``send``. The
hub's single timer sends the heartbeats, aborts writes to clients that stopped reading, and ends every stream
when the server stops. ``SSE_PROGRESS_RESPONDER=sse-starlette`` serves streams with sse-starlette's
``EventSourceResponse`` instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextvars import ContextVar

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from sse_progress.engines import EngineUnavailable, answered_within
from sse_progress.protocol.errors import ApiError, AtConnectionLimit
from sse_progress.protocol.frames import (
    CONNECTION_LIMIT_RETRY_MS,
    HEARTBEAT,
    STORE_UNAVAILABLE_RETRY_MS,
    retry_line,
    try_again_body,
)
from sse_progress.protocol.tokens import Role
from sse_progress.server.errors import error_response
from sse_progress.server.headers import response_headers
from sse_progress.server.hub import Listener
from sse_progress.server.metrics import METRICS
from sse_progress.server.replay import (
    AlreadyFinished,
    SessionCursor,
    SessionExpired,
    plan_replay,
)
from sse_progress.server.service import Service
from sse_progress.server.stream_socket import cap_send_buffer, chunked_writer_of, drop, transport_of
from sse_progress.server.transports.connection import ConnectionRecord
from sse_progress.server.transports.disconnect import (
    CLIENT_LEFT,
    FINISHED,
    STREAM_ENDINGS,
    TOO_SLOW,
    Disconnect,
    disconnect_for,
)

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Content-Type-Options": "nosniff"}
EVENT_STREAM_RAW_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    *[(name.lower().encode(), value.encode()) for name, value in STREAM_HEADERS.items()],
]
STREAM_ABORTED: ContextVar[bool] = ContextVar("sse_progress_stream_aborted", default=False)


def _try_again(problem: str, reason: str, window_ms: tuple[int, int]) -> Response:
    """200 and an empty stream with a ``retry:``: a 503 would make a browser's EventSource stop for good."""
    METRICS.streams_deferred.labels(reason).inc()
    return Response(try_again_body(problem, window_ms), media_type="text/event-stream", headers=STREAM_HEADERS)


def resume_id(request: Request) -> str | None:
    return request.headers.get("last-event-id") or request.query_params.get("last_event_id")


async def serve_events(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI endpoint the app calls directly (see ``ProgressApp``): errors and response headers handled here."""
    # The response is built in another frame, so the request parsed for it is not kept for the stream's life.
    response = await _respond(Request(scope, receive))
    await response(scope, receive, send)


async def _respond(request: Request) -> Response:
    try:
        response = await events(request)
    except AtConnectionLimit:
        response = _try_again("server at its connection limit", "connection_limit", CONNECTION_LIMIT_RETRY_MS)
    except ApiError as error:
        response = error_response(error.status, error.message, error.headers)
    except EngineUnavailable:
        response = _try_again("event store unavailable", "store_unavailable", STORE_UNAVAILABLE_RETRY_MS)
    origin = request.headers.get("origin")
    cors_origins = Service.of(request).settings.cors_origins
    response.raw_headers.extend(response_headers(origin, cors_origins, response.raw_headers))
    return response


async def events(request: Request) -> Response:
    service = Service.of(request)
    session_id = service.session_id(request)
    service.authorize(request, session_id, Role.SUBSCRIBE)
    mode = request.query_params.get("mode", "stream")
    if mode == "poll":
        return await _poll(service, session_id, resume_id(request))
    if mode != "stream":
        raise ApiError(400, "mode must be 'stream' (the default) or 'poll'")
    if request.method == "HEAD":  # the headers a stream would get, without opening one
        return Response(media_type="text/event-stream", headers=STREAM_HEADERS)
    service.admit_connection()
    resume = resume_id(request)
    try:
        stream = await SessionCursor.open(service.hub, session_id, resume, "sse")
    except (AlreadyFinished, SessionExpired):
        return Response(status_code=204)
    if service.settings.responder == "sse-starlette":
        return _sse_starlette_response(stream, service, resume)
    return SseResponse(
        stream, service.settings.retry_ms, resume, service.settings.socket_send_buffer, service.settings.buffer_bytes
    )


class SseResponse(Response):
    """Writes one session's stream to one client until the terminal event, a shutdown, or the client leaves."""

    def __init__(
        self,
        stream: SessionCursor,
        retry_ms: int,
        resume: str | None,
        send_buffer: int = 0,
        buffer_bytes: int = 1 << 20,
    ) -> None:
        # Not Response.__init__: it would announce a Content-Length for the empty body.
        self.status_code = 200
        self.background = None
        self.raw_headers = list(EVENT_STREAM_RAW_HEADERS)  # middleware may append to it
        self.stream = stream
        self.retry_ms = retry_ms
        self.resume = resume
        self.send_buffer = send_buffer
        self.buffer_bytes = buffer_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        listener = self.stream.listener
        listener.task = asyncio.current_task()
        connection = ConnectionRecord(listener.session_id, "sse", self.resume)
        transport = transport_of(send)
        ending = CLIENT_LEFT
        watcher: asyncio.Future[None] | None = None
        # Everything after the count is inside the try: a client may be gone already (even before the first
        # byte), and whatever fails then, the finally must undo the count and release the listener.
        try:
            watcher = asyncio.ensure_future(_notice_departure(receive, listener))
            cap_send_buffer(transport, self.send_buffer)
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await _write(send, listener, retry_line(self.retry_ms))
            listener.writer = chunked_writer_of(send, self.buffer_bytes)
            ending = await _deliver(self.stream, send)
            if ending.reset and drop(transport):
                STREAM_ABORTED.set(True)
                return  # reset: an ordinary end would wait for the client to read what is queued for it
            await _write(send, listener, b"", more_body=False)
        except asyncio.CancelledError:
            if not listener.aborted:
                raise
            # The client stopped reading (its buffer overflowed, or one write was in progress at two
            # heartbeats): drop the connection. It reconnects with Last-Event-ID and replays from the stream.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            STREAM_ABORTED.set(True)
            ending = TOO_SLOW
            drop(transport)  # reset: uvicorn's close would wait, forever, to flush what the client does not read
        except (OSError, RuntimeError):
            # uvicorn's send raises on a transport closed under it (a client that left while a request it
            # pipelined kept the server from reading its close): the client left, nothing failed.
            if transport is None or not transport.is_closing():
                raise
        finally:
            if watcher is not None:
                watcher.cancel()
            listener.task = None
            listener.writer = None
            self.stream.close()
            connection.closed(ending.reason, self.stream.sent)


async def _deliver(stream: SessionCursor, send: Send) -> Disconnect:
    """Writes every batch the stream's task handles; returns why the stream ended."""
    listener = stream.listener
    delivered = METRICS.events_delivered.labels("sse")
    try:
        async for batch in stream.batches():
            if not batch:
                await _write(send, listener, HEARTBEAT)
                continue
            # One write per wake-up: frames that arrived together leave together.
            await _write(send, listener, batch[0].sse if len(batch) == 1 else b"".join([f.sse for f in batch]))
            delivered.inc(len(batch))
    except STREAM_ENDINGS as error:
        ending = disconnect_for(error)
        if ending.sse_last_words is not None:
            await _write(send, listener, ending.sse_last_words())
        return ending
    return CLIENT_LEFT if listener.gone else FINISHED


async def _write(send: Send, listener: Listener, body: bytes, more_body: bool = True) -> None:
    await listener.write(send({"type": "http.response.body", "body": body, "more_body": more_body}))


class HideAbortedStreams(logging.Filter):
    """uvicorn reports a response that ended without its last message as an error; for a stream aborted
    because its client stopped reading that is the intent, and the connection log already says why.

    uvicorn logs it in the request's own task, after the app returned, so the flag the stream set in that
    task's context tells this stream from any other response that ended early."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "ASGI callable returned without completing response." and STREAM_ABORTED.get())


HIDE_ABORTED_STREAMS = HideAbortedStreams()  # one instance, so adding it again changes nothing


async def _notice_departure(receive: Receive, listener: Listener) -> None:
    # The server's send returns silently once the client is gone; only receive() says so.
    message: Message = await receive()
    while message["type"] != "http.disconnect":
        message = await receive()
    listener.left()


def _sse_starlette_response(stream: SessionCursor, service: Service, resume: str | None) -> Response:
    return EventSourceResponse(
        _sse_starlette_body(stream, service.settings.retry_ms, resume),
        headers=STREAM_HEADERS,
        ping=service.settings.heartbeat,
        ping_message_factory=lambda: ServerSentEvent(comment="ping", sep="\n"),
        sep="\n",
        shutdown_event=_ShutdownSignal(stream.listener),  # type: ignore[arg-type]
        shutdown_grace_period=2.0,
    )


class _ShutdownSignal:
    """What sse-starlette calls ``set()`` on at shutdown: the listener wakes and the stream says goodbye."""

    __slots__ = ("set",)

    def __init__(self, listener: Listener) -> None:
        self.set = listener.shut_down


async def _sse_starlette_body(stream: SessionCursor, retry_ms: int, resume: str | None) -> AsyncIterator[bytes]:
    connection = ConnectionRecord(stream.listener.session_id, "sse", resume)
    delivered = METRICS.events_delivered.labels("sse")
    ending = CLIENT_LEFT
    try:
        yield retry_line(retry_ms)
        async for batch in stream.batches():
            if batch:  # sse-starlette sends its own heartbeats
                yield b"".join([frame.sse for frame in batch])
                delivered.inc(len(batch))
        ending = FINISHED
    except STREAM_ENDINGS as error:
        ending = disconnect_for(error)
        if ending.sse_last_words is not None:
            yield ending.sse_last_words()
    finally:
        stream.close()
        connection.closed(ending.reason, stream.sent)


async def _poll(service: Service, session_id: str, resume: str | None) -> Response:
    try:
        # One page: a longer history comes over the next polls, each asking from the last id it got.
        replay = await answered_within(plan_replay(service.hub.read_page, session_id, resume))
    except (AlreadyFinished, SessionExpired):
        return Response(status_code=204)
    retry_ms = 0 if replay.more else service.settings.poll_ms  # the rest of the history is there already
    body = retry_line(retry_ms) + b"".join([frame.sse for frame in replay.frames])
    if not replay.frames and resume is None:
        # Nothing published yet: still give the browser an id, so its next poll asks for everything after
        # the start instead of a snapshot that would skip the events in between.
        body += b"id: 0\n\n"
    METRICS.events_delivered.labels("poll").inc(len(replay.frames))
    return Response(body, media_type="text/event-stream", headers=STREAM_HEADERS)
