"""Errors as values a client can act on: a status code and a sentence saying what to send instead.

Plain exceptions, so token checks and validation raise them without the server installed; ``server.errors``
turns them into responses.
"""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class AtConnectionLimit(ApiError):
    """SSE_PROGRESS_MAX_CONNECTIONS streams are open: a new one must come back later."""

    def __init__(self) -> None:
        super().__init__(503, "server at its connection limit; retry shortly", {"Retry-After": "5"})
