"""Errors as values a client can act on: a status code and a sentence saying what to send instead."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.headers)


class AtConnectionLimit(ApiError):
    """SSE_PROGRESS_MAX_CONNECTIONS streams are open: a new one must come back later."""

    def __init__(self) -> None:
        super().__init__(503, "server at its connection limit; retry shortly", {"Retry-After": "5"})


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"success": False, "error": message}, status_code=status, headers=headers)


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


def store_unavailable() -> JSONResponse:
    return error_response(503, "the event store is unavailable; retry shortly", {"Retry-After": "2"})


def store_misconfigured(reason: str) -> JSONResponse:
    """No retry helps: the reason says what to change (the engine URL or the store)."""
    return error_response(503, f"the event store is misconfigured: {reason}")


def store_full() -> JSONResponse:
    return error_response(
        507, "event store is full: it refuses new events until memory is freed; retry later", {"Retry-After": "30"}
    )
