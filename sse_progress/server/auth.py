"""Where a request or WebSocket carries its token; what a token grants is ``protocol.tokens``."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from sse_progress.protocol.tokens import COOKIE_NAME


def token_from(connection: HTTPConnection) -> str | None:
    """The token of a request or WebSocket: ``?token=``, then ``Authorization: Bearer``, then the cookie."""
    token = connection.query_params.get("token")
    if token:
        return token
    scheme, _, credentials = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return connection.cookies.get(COOKIE_NAME) or None
