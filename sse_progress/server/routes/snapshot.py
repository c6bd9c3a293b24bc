"""JSON for pollers: the latest state (with ETag) and the retained history."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from sse_progress.engines import answered_within
from sse_progress.protocol.errors import ApiError
from sse_progress.protocol.events import ZERO_ID, parse_event_id
from sse_progress.protocol.frames import Frame
from sse_progress.protocol.tokens import Role
from sse_progress.server.service import Service

NOT_FOUND = "no such session: it has no events yet, or they expired"


def _json(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def snapshot(request: Request) -> Response:
    """
    The latest event of a session, with an ETag for conditional polling.
    ---
    summary: The session's latest state
    parameters:
      - $ref: "#/components/parameters/SessionId"
      - name: If-None-Match
        in: header
        required: false
        description: the ETag of a previous answer; unchanged → 304
        schema:
          type: string
    security: token
    responses:
      "200":
        description: the snapshot
        headers:
          ETag:
            description: the latest event id, quoted
            schema:
              type: string
        content:
          application/json:
            schema:
              $ref: "#/components/schemas/SnapshotResponse"
      "304":
        description: nothing new since the ETag sent in If-None-Match
      "400": BadRequest
      "404": NotFound
      "503": Unavailable
    """
    service = Service.of(request)
    session_id = service.session_id(request)
    service.authorize(request, session_id, Role.SUBSCRIBE)
    view = await answered_within(service.engine.read(session_id, None))
    if view.snapshot is None:
        raise ApiError(404, NOT_FOUND)
    etag = f'"{Frame.from_envelope(view.snapshot, session_id).id_text}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag in (tag.strip() for tag in request.headers.get("if-none-match", "").split(",")):
        return Response(status_code=304, headers=headers)
    return _json(b'{"success":true,"data":' + view.snapshot + b"}", headers=headers)


async def history(request: Request) -> Response:
    """
    The retained events of a session after an id, one page at a time.
    ---
    summary: The session's retained history
    parameters:
      - $ref: "#/components/parameters/SessionId"
      - name: after
        in: query
        required: false
        description: >-
          an event id (two unsigned 64-bit integers); `0`, `earliest` or empty = the whole retained history
        schema:
          type: string
          pattern: "^(|0|earliest|[0-9]{1,20}(-[0-9]{1,20})?)$"
    security: token
    responses:
      "200":
        description: >-
          the events after `after`, oldest first: at most one page (a quarter of SSE_PROGRESS_BUFFER_BYTES and of
          SSE_PROGRESS_BUFFER_EVENTS, at least one event); `more` says to ask again after the last one
        content:
          application/json:
            schema:
              $ref: "#/components/schemas/HistoryResponse"
      "400": BadRequest
      "404": NotFound
      "422": "`after` is not an event id"
      "503": Unavailable
    """
    service = Service.of(request)
    session_id = service.session_id(request)
    service.authorize(request, session_id, Role.SUBSCRIBE)
    after_text = request.query_params.get("after", "0")
    after = ZERO_ID if after_text in ("", "earliest", "0") else parse_event_id(after_text)
    if after is None:
        raise ApiError(422, "after: must be an event id such as 1732530000000-0, or 0 for the whole history")
    # One replay page, as a stream's replay reads it: a long history comes over several calls, each asking
    # after the last id it got, so one answer holds a bounded amount of memory whatever the history's size.
    view = await answered_within(service.hub.read_page(session_id, after))
    if view.snapshot is None:
        raise ApiError(404, NOT_FOUND)
    events = b",".join(view.events)
    truncated = b"true" if view.gap and after != ZERO_ID else b"false"
    more = b"true" if view.more else b"false"
    return _json(b'{"success":true,"truncated":' + truncated + b',"more":' + more + b',"events":[' + events + b"]}")
