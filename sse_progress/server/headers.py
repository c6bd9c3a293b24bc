"""The headers every answer carries, decided in one place: ``nosniff`` always, CORS for the configured origins.

``ResponseHeaders`` applies them to every response of the routed stack and answers CORS preflights; the stream
fast path (``ProgressApp``), which runs before any middleware, adds ``response_headers(...)`` to its response
itself, so a stream gets exactly what any other answer gets.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

NOSNIFF = (b"x-content-type-options", b"nosniff")
ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Accept, Accept-Language, Content-Language, Content-Type, Authorization, Last-Event-ID"
EXPOSE_HEADERS = "ETag"
PREFLIGHT_MAX_AGE = "600"


def origin_allowed(origin: str | None, cors_origins: Iterable[str]) -> bool:
    return origin is not None and any(allowed in (origin, "*") for allowed in cors_origins)


def response_headers(
    origin: str | None, cors_origins: Iterable[str], present: Iterable[tuple[bytes, bytes]] = ()
) -> list[tuple[bytes, bytes]]:
    """What to add to a response's ``present`` headers for a request from ``origin``."""
    added = [] if NOSNIFF in present else [NOSNIFF]
    if origin_allowed(origin, cors_origins):
        assert origin is not None
        added += [
            (b"access-control-allow-origin", origin.encode()),
            (b"access-control-allow-credentials", b"true"),
            (b"access-control-expose-headers", EXPOSE_HEADERS.encode()),
            (b"vary", b"Origin"),
        ]
    return added


def preflight(origin: str, cors_origins: Iterable[str]) -> Response:
    """The answer to a CORS preflight: what a page of an allowed origin may send, or 400 naming the refusal."""
    if not origin_allowed(origin, cors_origins):
        return PlainTextResponse("Disallowed CORS origin", status_code=400, headers={"Vary": "Origin"})
    return Response(
        status_code=200,
        headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
            "Vary": "Origin",
        },
    )


class ResponseHeaders:
    """Adds ``response_headers`` at response start (it never touches body messages); answers preflights."""

    def __init__(self, app: ASGIApp, cors_origins: tuple[str, ...]) -> None:
        self.app = app
        self.cors_origins = cors_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_headers = Headers(scope=scope)
        origin = request_headers.get("origin")
        if (
            self.cors_origins
            and scope["method"] == "OPTIONS"
            and origin is not None
            and "access-control-request-method" in request_headers
        ):
            await preflight(origin, self.cors_origins)(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = list(message.get("headers", []))
                message["headers"] = [*present, *response_headers(origin, self.cors_origins, present)]
            await send(message)

        await self.app(scope, receive, send_with_headers)
