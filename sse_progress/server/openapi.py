"""The OpenAPI 3.1 description of the HTTP API, served at ``GET /openapi.json``.

Starlette's ``SchemaGenerator`` reads each operation from the YAML after ``---`` in its endpoint's docstring.
An operation that needs a token says ``security: token``; this module expands it, once for all, into the three
ways to send one and the 401 and 403 answers. An answer is written on one line: the name of a shared one
(``"503": Unavailable``) stands for a reference to it; any other text (``"409": the session already ended``) is
the description of an error answer of the route's own, which gets the error body. It also holds what the
operations share (schemas, parameters, responses, security schemes, referenced as ``#/components/...``) and the
operations of the endpoints that carry no YAML of their own: the SSE stream, the demo page and the static files.
The WebSocket route is not HTTP and is described in ``info.description`` only.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.schemas import SchemaGenerator

from sse_progress.protocol.events import MAX_DADOS_EXTRA_DEPTH, MAX_STEP, STATUSES
from sse_progress.protocol.tokens import COOKIE_NAME

TOKEN_SECURITY: list[dict[str, list[str]]] = [{"tokenQuery": []}, {"bearerToken": []}, {"tokenCookie": []}]


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        response["headers"] = headers
    return response


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}}
NULLABLE_NUMBER = {"type": ["number", "null"]}

COMPONENTS: dict[str, Any] = {
    "securitySchemes": {
        "tokenQuery": {"type": "apiKey", "in": "query", "name": "token"},
        "bearerToken": {"type": "http", "scheme": "bearer"},
        "tokenCookie": {"type": "apiKey", "in": "cookie", "name": COOKIE_NAME},
    },
    "parameters": {
        "SessionId": {
            "name": "session_id",
            "in": "path",
            "required": True,
            "description": "the session (one run of one job)",
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
        },
        "LastEventIdQuery": {
            "name": "last_event_id",
            "in": "query",
            "required": False,
            "description": (
                "resume after this event id; `earliest` or `0` = the whole history. Any other text that is not an "
                "id answers with a `reset` frame. The `Last-Event-ID` header wins over it."
            ),
            "schema": {"type": "string"},
        },
        "LastEventIdHeader": {
            "name": "Last-Event-ID",
            "in": "header",
            "required": False,
            "description": "what a browser's EventSource sends when it reconnects; same meaning as `last_event_id`",
            "schema": {"type": "string"},
        },
    },
    "schemas": {
        "Error": {
            "type": "object",
            "required": ["success", "error"],
            "properties": {"success": {"const": False}, "error": {"type": "string", "description": "what was wrong"}},
            "additionalProperties": False,
        },
        "EventId": {"type": "string", "pattern": "^[0-9]{1,20}-[0-9]{1,20}$", "examples": ["1732530000000-0"]},
        "Envelope": {
            "type": "object",
            "description": "one event of a session (docs/protocol.md §1)",
            "required": [
                "id",
                "type",
                "session_id",
                "etapa_atual",
                "total_etapas",
                "percentual",
                "status",
                "mensagem",
                "dados_extra",
                "timestamp",
                "eta_seconds",
            ],
            "properties": {
                "id": {"$ref": "#/components/schemas/EventId"},
                "type": {"enum": ["progress_update", "snapshot", "reset"]},
                "session_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                "etapa_atual": {"type": "integer", "minimum": 0, "maximum": MAX_STEP},
                "total_etapas": {"type": "integer", "minimum": 1, "maximum": MAX_STEP},
                "percentual": {"type": "number", "minimum": 0, "maximum": 100},
                "status": {"enum": list(STATUSES)},
                "mensagem": {"type": "string"},
                "dados_extra": {"type": ["object", "null"]},
                "timestamp": {"type": "string", "description": "ISO 8601 with offset"},
                "eta_seconds": NULLABLE_NUMBER,
            },
        },
        "PublishBody": {
            "type": "object",
            "required": ["etapa_atual", "total_etapas"],
            "additionalProperties": False,
            "properties": {
                "etapa_atual": {"type": "integer", "minimum": 0, "maximum": MAX_STEP, "description": "current step"},
                "total_etapas": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_STEP,
                    "description": "number of steps",
                },
                "mensagem": {"type": "string", "default": ""},
                "status": {"enum": list(STATUSES), "default": "running"},
                "dados_extra": {
                    "type": ["object", "null"],
                    "description": f"job data; at most {MAX_DADOS_EXTRA_DEPTH} levels deep",
                },
                "timestamp": {
                    "description": "when the job reported the event (ISO 8601 with offset); empty or absent: now",
                    "anyOf": [{"type": "string", "format": "date-time"}, {"const": ""}],
                },
                "publisher": {
                    "type": "object",
                    "description": "a retried publish whose sequence this publisher already stored is not stored again",
                    "required": ["id", "sequence"],
                    "additionalProperties": False,
                    "properties": {
                        "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                        "sequence": {"type": "integer", "minimum": 0, "maximum": 2**53 - 1},
                    },
                },
            },
        },
        "SseEvent": {
            "type": "object",
            "description": "one frame of the stream (OpenAPI 3.1: the schema of a text/event-stream is one event's)",
            "required": ["event", "data"],
            "properties": {
                "id": {"$ref": "#/components/schemas/EventId"},
                "event": {"enum": ["snapshot", "progress_update", "reset"]},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"$ref": "#/components/schemas/Envelope"},
                },
                "retry": {"type": "integer", "minimum": 0},
            },
        },
        "SnapshotResponse": {
            "type": "object",
            "required": ["success", "data"],
            "properties": {"success": {"const": True}, "data": {"$ref": "#/components/schemas/Envelope"}},
        },
        "HistoryResponse": {
            "type": "object",
            "required": ["success", "truncated", "more", "events"],
            "properties": {
                "success": {"const": True},
                "truncated": {"type": "boolean", "description": "events after `after` were trimmed or expired"},
                "more": {"type": "boolean", "description": "more events follow: ask again after the last one"},
                "events": {"type": "array", "items": {"$ref": "#/components/schemas/Envelope"}},
            },
        },
    },
    "responses": {
        "BadRequest": _error("the session id (or another parameter) is not valid"),
        "Unauthorized": _error("the token is missing, malformed, tampered with or expired"),
        "Forbidden": _error("the token is for another session, or its role does not allow this"),
        "NotFound": _error("no such session: it has no events yet, or they expired"),
        "Unavailable": _error("the event store is unavailable, or the server is at its connection limit", RETRY_AFTER),
        "RateLimited": _error("too many events for this token and session (SSE_PROGRESS_PUBLISH_RATE)", RETRY_AFTER),
        "StoreFull": _error(
            "the event store is full (Redis at maxmemory with noeviction); it stores nothing until freed", RETRY_AFTER
        ),
    },
}

INFO_DESCRIPTION = (
    "Live progress of long-running jobs over Server-Sent Events, WebSocket and polling; docs/protocol.md is the "
    'contract. Every error is `{"success": false, "error": "..."}`. The WebSocket route '
    "`/ws/sessions/{session_id}?token=…&last_event_id=…` sends the same frames as JSON messages."
)

SSE_EVENTS_OPERATION: dict[str, Any] = {
    "summary": "Follow a session: an SSE stream, or one poll",
    "description": (
        "Without a resume id: a `snapshot` frame, then live frames. With one: every event after it, or a `reset` "
        "frame when it cannot be honoured. The stream ends after the terminal event; `mode=poll` answers at once "
        "with the pending frames and a `retry:` line (the poll interval)."
    ),
    "parameters": [
        {"$ref": "#/components/parameters/SessionId"},
        {
            "name": "mode",
            "in": "query",
            "required": False,
            "schema": {"enum": ["stream", "poll"], "default": "stream"},
        },
        {"$ref": "#/components/parameters/LastEventIdQuery"},
        {"$ref": "#/components/parameters/LastEventIdHeader"},
    ],
    "security": TOKEN_SECURITY,
    "responses": {
        "200": {
            "description": (
                "`retry:` first, then frames (`id:`, `event:` snapshot/progress_update/reset, `data:`). When the event"
                " store is unavailable or the server is at its connection limit: a comment naming the problem and a"
                " jittered `retry:`, then the end of the response (an EventSource reconnects by itself)"
            ),
            "headers": {
                "Cache-Control": {"schema": {"type": "string", "const": "no-cache"}},
                "X-Accel-Buffering": {"schema": {"type": "string", "const": "no"}},
            },
            "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/SseEvent"}}},
        },
        "204": {"description": "the client already has the terminal event: it must not reconnect"},
        "400": {"$ref": "#/components/responses/BadRequest"},
        "401": {"$ref": "#/components/responses/Unauthorized"},
        "403": {"$ref": "#/components/responses/Forbidden"},
    },
}

DEMO_PAGE_OPERATION: dict[str, Any] = {
    "summary": "The demo page",
    "description": "`/?session=<id>&token=<token>` follows that session in the browser.",
    "parameters": [
        {"name": "session", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "token", "in": "query", "required": False, "schema": {"type": "string"}},
    ],
    "responses": {"200": {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}}},
}

STATIC_FILE_OPERATION: dict[str, Any] = {
    "summary": "The web client's files (progress-client.js, the demo page's script and style)",
    "parameters": [{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}],
    "responses": {
        "200": {"description": "the file", "content": {"*/*": {"schema": {}}}},
        "404": _error("no such file"),
    },
}

# Operations of endpoints without YAML docstrings, by path and method; an endpoint's own YAML takes precedence.
SUPPLEMENTARY_OPERATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "/": {"get": DEMO_PAGE_OPERATION},
    "/sessions/{session_id}/events": {"get": SSE_EVENTS_OPERATION},
    "/static/{path}": {"get": STATIC_FILE_OPERATION},
}


def needs_token(operation: dict[str, Any]) -> None:
    """Expand ``security: token``: the ways to send a token, and the answers to a missing or refused one."""
    operation["security"] = copy.deepcopy(TOKEN_SECURITY)
    responses = operation.setdefault("responses", {})
    responses.setdefault("401", {"$ref": "#/components/responses/Unauthorized"})
    responses.setdefault("403", {"$ref": "#/components/responses/Forbidden"})
    operation["responses"] = dict(sorted(responses.items()))


def expand_one_line_answers(operation: dict[str, Any]) -> None:
    """Expand each answer written as one line: a shared answer's name, or an error answer's description."""
    responses: dict[str, Any] = operation.get("responses", {})
    for status, response in responses.items():
        if isinstance(response, str):
            shared = response in COMPONENTS["responses"]
            responses[status] = {"$ref": f"#/components/responses/{response}"} if shared else _error(response)


def build_schema(routes: list[BaseRoute]) -> dict[str, Any]:
    """The whole document: the docstring operations of ``routes`` plus the supplementary ones."""
    generator = SchemaGenerator(
        {
            "openapi": "3.1.0",
            "info": {"title": "sse-progress", "version": "1", "description": INFO_DESCRIPTION},
            "components": copy.deepcopy(COMPONENTS),
        }
    )
    schema = generator.get_schema(routes)
    paths: dict[str, dict[str, Any]] = schema["paths"]
    for operations in paths.values():
        for operation in operations.values():
            expand_one_line_answers(operation)
            if operation.get("security") == "token":
                needs_token(operation)
    for path, operations in SUPPLEMENTARY_OPERATIONS.items():
        for method, operation in operations.items():
            paths.setdefault(path, {}).setdefault(method, copy.deepcopy(operation))
    schema["paths"] = dict(sorted(paths.items()))
    return schema


async def openapi_schema(request: Request) -> Response:
    """
    The OpenAPI description of this API.
    ---
    summary: This document
    responses:
      "200":
        description: the OpenAPI 3.1 document
        content:
          application/json:
            schema:
              type: object
    """
    body: bytes | None = getattr(request.app.state, "openapi_json", None)
    if body is None:
        body = orjson.dumps(build_schema(request.app.routes))
        request.app.state.openapi_json = body  # the routes never change: build once per app
    return Response(body, media_type="application/json")
