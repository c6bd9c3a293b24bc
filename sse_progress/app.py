"""``create_app()``: routes, middleware and lifespan, assembled declaratively."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from .auth import TokenAuthority
from .config import Settings
from .engines import Engine, EngineUnavailable, create_engine
from .errors import ApiError, error_response, handle_api_error
from .hub import Hub
from .ratelimit import RateLimiter
from .service import Service
from .transports import ops, publish, snapshot, sse, ws

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
if not WEB_DIR.is_dir():  # installed as a wheel: the web client ships inside the package
    WEB_DIR = Path(__file__).resolve().parent / "web"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


async def demo_page(request: Request) -> Response:
    return FileResponse(
        WEB_DIR / "index.html",
        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"},
    )


async def handle_unavailable(request: Request, exc: Exception) -> Response:
    return error_response(503, "the event store is unavailable; retry shortly", {"Retry-After": "2"})


def _is_stream(scope: dict) -> bool:  # type: ignore[type-arg]
    return scope["method"] == "GET" and scope["path"].endswith("/events")


class NoSniff:
    """Adds ``X-Content-Type-Options: nosniff`` at response start; it never touches body messages."""

    def __init__(self, app: object) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http" or _is_stream(scope):
            # Streams set the header themselves: no wrapper around every send on the hot path.
            await self.app(scope, receive, send)  # type: ignore[operator]
            return

        async def send_with_header(message: dict) -> None:  # type: ignore[type-arg]
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]
            await send(message)  # type: ignore[operator]

        await self.app(scope, receive, send_with_header)  # type: ignore[operator]


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    engine = engine or create_engine(settings)
    hub = Hub(engine, settings.buffer_events, settings.buffer_bytes)
    service = Service(
        settings, engine, hub, TokenAuthority(settings.secrets, settings.insecure), RateLimiter(settings.publish_rate)
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await hub.start()
        try:
            yield
        finally:
            await hub.stop()
            await engine.close()

    middleware = [Middleware(NoSniff)]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_credentials=True,
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
                expose_headers=["ETag"],
            )
        )

    routes = [
        Route("/", demo_page),
        Route("/sessions/{session_id}/events", sse.events, methods=["GET"]),
        Route("/sessions/{session_id}/events", publish.publish, methods=["POST"]),
        Route("/sessions/{session_id}", snapshot.snapshot),
        Route("/sessions/{session_id}/history", snapshot.history),
        WebSocketRoute("/ws/sessions/{session_id}", ws.session_socket),
        Route("/healthz", ops.healthz),
        Route("/readyz", ops.readyz),
        Route("/metrics", ops.metrics),
        Route("/stats", ops.stats),
        Mount("/static", StaticFiles(directory=WEB_DIR, check_dir=False), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={ApiError: handle_api_error, EngineUnavailable: handle_unavailable},
    )
    app.state.service = service
    return app
