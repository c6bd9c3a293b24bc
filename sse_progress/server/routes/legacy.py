"""The older system's endpoints, for pages that have not moved yet (on with ``SSE_PROGRESS_LEGACY_ROUTES=1``).

``GET /api/get_progress.php?session=<id>`` and ``GET /get_progress?session=<id>`` answer as the older PHP
poller did; ``WS /session/<id>`` serves the older ``RPAWebSocketClient``, which handles only ``progress_update``
messages: the state a late joiner starts from (a snapshot, or a reset) is sent as one.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from sse_progress.engines import answered_within
from sse_progress.protocol.errors import ApiError
from sse_progress.protocol.events import is_valid_session_id
from sse_progress.protocol.frames import Frame
from sse_progress.protocol.tokens import Role
from sse_progress.server.routes.snapshot import NOT_FOUND
from sse_progress.server.service import Service
from sse_progress.server.transports import ws

INVALID_SESSION = "session: give ?session=<id>, 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'"


async def get_progress(request: Request) -> Response:
    """
    The latest state in the older PHP endpoint's shape.
    ---
    summary: The session's latest state, as the older get_progress.php answered it
    parameters:
      - name: session
        in: query
        required: true
        schema:
          type: string
          pattern: "^[A-Za-z0-9_-]{1,64}$"
    security: token
    responses:
      "200":
        description: >-
          `{"success": true, "data": <snapshot>}`, or `{"success": false, "error": …}` for a session with no
          events (yet), as the older endpoint answered, so that a poller started before the job's first step waits
        content:
          application/json:
            schema:
              oneOf:
                - $ref: "#/components/schemas/SnapshotResponse"
                - $ref: "#/components/schemas/Error"
      "400": BadRequest
      "503": Unavailable
    """
    service = Service.of(request)
    session_id = request.query_params.get("session", "")
    if not is_valid_session_id(session_id):
        raise ApiError(400, INVALID_SESSION)
    service.authorize(request, session_id, Role.SUBSCRIBE)
    view = await answered_within(service.engine.read(session_id, None))
    if view.snapshot is None:
        body = orjson.dumps({"success": False, "error": NOT_FOUND})
    else:
        body = b'{"success":true,"data":' + view.snapshot + b"}"
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-cache"})


def as_progress_update(frame: Frame) -> str:
    """The older client ignores every ``type`` but ``progress_update``: a snapshot or reset frame becomes one."""
    if frame.kind == "progress_update":
        return frame.text
    message = orjson.loads(frame.data)
    message["type"] = "progress_update"
    return orjson.dumps(message).decode()


async def legacy_session_socket(websocket: WebSocket) -> None:
    await ws.session_socket(websocket, as_progress_update)


ROUTES: list[BaseRoute] = [
    Route("/api/get_progress.php", get_progress),
    Route("/get_progress", get_progress),
    WebSocketRoute("/session/{session_id}", legacy_session_socket),
]
