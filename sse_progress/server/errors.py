"""The JSON error responses: every refusal is ``{"success": false, "error": "<what to send instead>"}``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sse_progress.protocol.errors import ApiError


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"success": False, "error": message}, status_code=status, headers=headers)


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.headers)


def store_unavailable() -> JSONResponse:
    return error_response(503, "the event store is unavailable; retry shortly", {"Retry-After": "2"})


def store_misconfigured(reason: str) -> JSONResponse:
    """No retry helps: the reason says what to change (the engine URL or the store)."""
    return error_response(503, f"the event store is misconfigured: {reason}")


def store_full() -> JSONResponse:
    return error_response(
        507, "event store is full: it refuses new events until memory is freed; retry later", {"Retry-After": "30"}
    )
