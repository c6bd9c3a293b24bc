"""Publishing over HTTP, for producers that are not Python (a PHP page, a shell script)."""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from sse_progress.engines import SessionTerminal
from sse_progress.protocol.errors import ApiError
from sse_progress.protocol.events import INT64_RANGE, EventDraft, InvalidEvent, first_wide_integer, is_valid_session_id
from sse_progress.protocol.tokens import Role
from sse_progress.server.metrics import METRICS
from sse_progress.server.service import Service

MAX_BODY_BYTES = 64 * 1024
FIELDS = ("etapa_atual", "total_etapas", "mensagem", "status", "dados_extra", "timestamp", "publisher")
MAX_SEQUENCE = 2**53 - 1  # exact in the Lua script's numbers


async def read_limited_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body too large: at most {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"body too large: at most {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # Nobody is left to read the answer; an error answer (not sent) keeps a traceback out of the log.
        raise ApiError(400, "the client left before sending the whole body") from None
    return b"".join(chunks)


def parse_json_body(body: bytes) -> Any:
    """The body as JSON, or ``ApiError(400)`` saying what is wrong and where."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ApiError(400, f"body is not JSON: {_where_not_json(body, error)}") from None


def refuse_wide_integers(body: bytes, dados_extra: object) -> None:
    """``ApiError(422)`` naming the first integer literal of ``dados_extra`` past 64 bits: the fast parser makes
    such a literal a float without a word, so the exact one is asked only when a float could have been one."""
    if _may_hold_a_wide_integer(dados_extra):
        try:
            exact = json.loads(body).get("dados_extra")  # tells the literal 1e19 (a float) from 10000000000000000000
        except RecursionError:
            return  # nested past any allowed depth: refused as such by the event's validation
        wide = first_wide_integer(exact, "dados_extra")
        if wide is not None:
            raise ApiError(422, f"{wide}: integer outside the 64-bit range (-2^63 to 2^63-1): send it as a string")


def _where_not_json(body: bytes, error: orjson.JSONDecodeError) -> str:
    try:
        body.decode()
    except UnicodeDecodeError as bad:
        return f"invalid UTF-8 at byte {bad.start} ({bad.reason}); send UTF-8 text"
    return (
        f"{error.msg} at line {error.lineno}, column {error.colno} (position {error.pos}); "
        'send a JSON object such as {"etapa_atual": 1, "total_etapas": 15}'
    )


def _may_hold_a_wide_integer(value: object) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif _may_be_a_wide_integer(item):
            return True
    return False


def _may_be_a_wide_integer(item: object) -> bool:
    """An integer the fast parser kept (up to 2^64-1), or a float that may have been written as an integer."""
    if isinstance(item, float):
        return abs(item) >= 2**63 and item.is_integer()
    return isinstance(item, int) and not isinstance(item, bool) and item not in INT64_RANGE


def draft_from_body(session_id: str, body: bytes) -> EventDraft:
    payload = parse_json_body(body)
    if not isinstance(payload, dict):
        raise ApiError(422, "body: must be a JSON object")
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        raise ApiError(422, f"{unknown[0]}: unknown field; allowed fields are {', '.join(FIELDS)}")
    for required in ("etapa_atual", "total_etapas"):
        if required not in payload:
            raise ApiError(422, f"{required}: required")
    refuse_wide_integers(body, payload.get("dados_extra"))
    timestamp = payload.get("timestamp", "")
    if not isinstance(timestamp, str):
        raise ApiError(422, "timestamp: must be an ISO 8601 string")
    publisher, sequence = publisher_of(payload["publisher"]) if "publisher" in payload else ("", -1)
    try:
        draft = EventDraft(
            session_id=session_id,
            etapa_atual=payload["etapa_atual"],
            total_etapas=payload["total_etapas"],
            status=payload.get("status", "running"),
            mensagem=payload.get("mensagem", ""),
            dados_extra=payload.get("dados_extra"),
            timestamp=timestamp,
            publisher=publisher,
            sequence=sequence,
        )
        draft.timestamp_ms  # noqa: B018 - validates the timestamp
    except InvalidEvent as error:
        raise ApiError(422, str(error)) from None
    except (ValueError, OverflowError):
        raise ApiError(422, "timestamp: must be an ISO 8601 date-time with an offset") from None
    return draft


def publisher_of(field: object) -> tuple[str, int]:
    """``{"id", "sequence"}``: a publish whose sequence number this publisher already stored is not stored again."""
    if not isinstance(field, dict) or set(field) != {"id", "sequence"}:
        raise ApiError(422, 'publisher: must be {"id": <string>, "sequence": <integer>}')
    publisher, sequence = field["id"], field["sequence"]
    if not isinstance(publisher, str) or not is_valid_session_id(publisher):
        raise ApiError(422, "publisher.id: must match ^[A-Za-z0-9_-]{1,64}$")
    if not isinstance(sequence, int) or isinstance(sequence, bool) or not 0 <= sequence <= MAX_SEQUENCE:
        raise ApiError(422, f"publisher.sequence: must be an integer from 0 to {MAX_SEQUENCE}")
    return publisher, sequence


async def publish(request: Request) -> Response:
    """
    Publish one event to a session (a publish or admin token).
    ---
    summary: Publish an event
    parameters:
      - $ref: "#/components/parameters/SessionId"
    security: token
    requestBody:
      required: true
      content:
        application/json:
          schema:
            $ref: "#/components/schemas/PublishBody"
    responses:
      "201":
        description: stored; the envelope as subscribers receive it
        content:
          application/json:
            schema:
              $ref: "#/components/schemas/SnapshotResponse"
      "400": BadRequest
      "409": the session already ended; it accepts no more events
      "413": the body is over 64 KiB
      "422": a field is missing, unknown, of the wrong type or out of range (the error names it)
      "429": RateLimited
      "503": Unavailable
      "507": StoreFull
    """
    service = Service.of(request)
    session_id = service.session_id(request)
    claims = service.authorize(request, session_id, Role.PUBLISH)
    service.limit_publishing(request, session_id, claims)
    draft = draft_from_body(session_id, await read_limited_body(request))
    try:
        with METRICS.publish_latency.time():
            published = await service.engine.publish(draft)
    except SessionTerminal:
        raise ApiError(409, "session already ended: it accepts no more events") from None
    METRICS.events_published.inc()
    return Response(
        b'{"success":true,"data":' + published.envelope + b"}", status_code=201, media_type="application/json"
    )
