"""The operator's view over HTTP: the session list, the stream of its changes, job figures and the /ops page."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from sse_progress.engines import answered_within
from sse_progress.protocol.errors import ApiError
from sse_progress.protocol.frames import HEARTBEAT, retry_line, shutdown_retry_line
from sse_progress.protocol.session_index import (
    DEFAULT_PAGE,
    FILTERS,
    MAX_PAGE,
    describe,
    finished_by_hour,
    list_sessions,
    now_ms,
    parse_cursor,
    step_durations,
)
from sse_progress.protocol.tokens import Role
from sse_progress.server.index_watch import IndexWatch
from sse_progress.server.job_metrics import JOB_METRICS
from sse_progress.server.service import Service
from sse_progress.server.shutdown import server_is_exiting
from sse_progress.server.transports.sse import STREAM_HEADERS

FULL_RETRY_MS = 5000  # a change-stream client turned away (too many) comes back after this
MAX_HOURS = 48
SHUTDOWN_POLL_SECONDS = 0.5


def watch_of(request: Request) -> IndexWatch:
    watch: IndexWatch = request.app.state.index_watch
    return watch


def _json(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(value), status_code=status, media_type="application/json")


def _int_param(request: Request, name: str, default: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise ApiError(400, f"{name}: must be an integer from 1 to {maximum}, got {raw!r}")
    return int(raw)


async def sessions(request: Request) -> Response:
    """
    Every session the index holds, newest first, with its snapshot (an observe or admin token).
    ---
    summary: List sessions
    parameters:
      - name: status
        in: query
        required: false
        description: >-
          running (pending or running and not stalled), stalled, success, error or cancelled; none = every session
        schema:
          type: string
          enum: [running, stalled, success, error, cancelled]
      - name: limit
        in: query
        required: false
        schema:
          type: integer
          minimum: 1
          maximum: 500
          default: 50
      - name: cursor
        in: query
        required: false
        description: the `next_cursor` of the previous page (empty = the first page)
        schema:
          type: string
          pattern: "^(|[0-9]{1,20}[.][A-Za-z0-9_-]{1,64})$"
    security: token
    responses:
      "200":
        description: a page of sessions; `next_cursor` is null on the last page
        content:
          application/json:
            schema:
              type: object
              required: [success, sessions, next_cursor]
      "400": BadRequest
      "503": Unavailable
    """
    service = Service.of(request)
    service.authorize(request, "*", Role.OBSERVE)
    status = request.query_params.get("status")
    if status is not None and status not in FILTERS:
        raise ApiError(400, f"status: must be one of {', '.join(FILTERS)}, got {status!r}")
    limit = _int_param(request, "limit", DEFAULT_PAGE, MAX_PAGE)
    cursor_text = request.query_params.get("cursor") or ""
    cursor = parse_cursor(cursor_text) if cursor_text else None
    if cursor_text and cursor is None:
        raise ApiError(400, "cursor: send the next_cursor of the previous page unchanged")
    rule = watch_of(request).rule
    page = await answered_within(list_sessions(service.engine.index, rule, status, limit, cursor))
    moment = now_ms()
    return _json(
        {
            "success": True,
            "sessions": [describe(entry, rule, moment) for entry in page.entries],
            "next_cursor": page.next_cursor,
        }
    )


async def figures(request: Request) -> Response:
    """
    Step durations per step (median and p95 over the latest sessions) and finished jobs per hour.
    ---
    summary: Job figures for the ops page
    parameters:
      - name: hours
        in: query
        required: false
        schema:
          type: integer
          minimum: 1
          maximum: 48
          default: 6
    security: token
    responses:
      "200":
        description: the figures
        content:
          application/json:
            schema:
              type: object
              required: [success, steps, finished, running, stalled]
      "400": BadRequest
      "503": Unavailable
    """
    service = Service.of(request)
    service.authorize(request, "*", Role.OBSERVE)
    hours = _int_param(request, "hours", 6, MAX_HOURS)
    watch = watch_of(request)
    index = service.engine.index
    return _json(
        {
            "success": True,
            "steps": await answered_within(step_durations(index)),
            "finished": await answered_within(finished_by_hour(index, hours, now_ms())),
            "running": watch.running,
            "stalled": watch.stalled,
            "stall_after_s": watch.rule.floor_s,
            "stall_factor": watch.rule.factor,
        }
    )


async def changes(request: Request) -> Response:
    """
    Server-Sent Events: every session known to the index (event `session`, change `known`), then each change:
    `started`, `progress`, `stalled`, `resumed`, `finished`.
    ---
    summary: Stream of session index changes
    security: token
    responses:
      "200":
        description: an endless event stream
        content:
          text/event-stream:
            schema:
              type: string
    """
    service = Service.of(request)
    service.authorize(request, "*", Role.OBSERVE)
    watch = watch_of(request)
    heartbeat = service.settings.heartbeat
    subscriber = watch.subscribe()
    if subscriber is None:
        # Full: a 200 that ends at once, so that a browser's EventSource retries later instead of giving up.
        return Response(retry_line(FULL_RETRY_MS), media_type="text/event-stream", headers=STREAM_HEADERS)

    async def body() -> AsyncIterator[bytes]:
        try:
            yield retry_line(service.settings.retry_ms) + b"".join(_frame(record) for record in watch.view())
            quiet_since = time.monotonic()
            while not subscriber.overflowed:
                # Short waits, so that a SIGTERM ends the stream promptly (uvicorn waits for open streams).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(subscriber.wake.wait(), min(SHUTDOWN_POLL_SECONDS, heartbeat))
                if server_is_exiting():
                    yield shutdown_retry_line()
                    return
                records = subscriber.take()
                if records:
                    yield b"".join(_frame(record) for record in records)
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= heartbeat:
                    yield HEARTBEAT
                    quiet_since = time.monotonic()
        finally:
            watch.unsubscribe(subscriber)

    return StreamingResponse(body(), media_type="text/event-stream", headers=STREAM_HEADERS)


def _frame(record: dict[str, Any]) -> bytes:
    return b"event: session\ndata: " + orjson.dumps(record) + b"\n\n"


async def refresh_job_metrics(request: Request) -> None:
    """Called by ``/metrics`` before it renders: the job figures come from the index."""
    await JOB_METRICS.refresh(watch_of(request))
