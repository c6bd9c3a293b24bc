"""``create_app()``: routes, middleware and lifespan, assembled declaratively."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Match, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from sse_progress.config import Settings
from sse_progress.engines import (
    Engine,
    EngineFull,
    EngineMisconfigured,
    EngineUnavailable,
    EngineWrongKind,
    create_engine,
)
from sse_progress.protocol.errors import ApiError
from sse_progress.protocol.session_index import StallRule
from sse_progress.protocol.tokens import TokenAuthority
from sse_progress.server.errors import (
    error_response,
    handle_api_error,
    store_full,
    store_misconfigured,
    store_unavailable,
)
from sse_progress.server.headers import ResponseHeaders
from sse_progress.server.hub import Hub
from sse_progress.server.index_watch import IndexWatch
from sse_progress.server.openapi import openapi_schema
from sse_progress.server.ratelimit import RateLimiter
from sse_progress.server.routes import legacy, ops, publish, sessions, snapshot
from sse_progress.server.service import Service
from sse_progress.server.sockets import raise_open_files_limit
from sse_progress.server.transports import sse, ws

# The browser client and the demo page live inside the package, so a wheel serves them like a checkout.
WEB_DIR = Path(__file__).resolve().parent.parent / "web"  # sse_progress/web, shipped inside the wheel

log = logging.getLogger("sse_progress.app")

GC_YOUNG_THRESHOLD = 50_000

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
WEB_CLIENT_CACHE_CONTROL = "no-cache"


async def demo_page(request: Request) -> Response:
    return FileResponse(
        WEB_DIR / "index.html",
        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": WEB_CLIENT_CACHE_CONTROL},
    )


async def ops_page(request: Request) -> Response:
    return FileResponse(
        WEB_DIR / "ops.html",
        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": WEB_CLIENT_CACHE_CONTROL},
    )


class WebClientFiles(StaticFiles):
    """``/static``: HTML pages get the demo page's CSP, and every file is revalidated (it is not fingerprinted,
    so a cached copy could outlive an upgrade of the server whose protocol it speaks)."""

    def file_response(
        self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = WEB_CLIENT_CACHE_CONTROL
        if str(full_path).endswith(".html"):
            response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return response


async def handle_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405 answers, as JSON like every other error."""
    assert isinstance(exc, HTTPException)
    detail = {404: "no such route; see /openapi.json", 405: f"method {request.method} not allowed here"}
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, detail.get(exc.status_code, exc.detail), headers)


async def handle_unavailable(request: Request, exc: Exception) -> Response:
    if isinstance(exc, EngineWrongKind):
        return store_misconfigured(str(exc))
    return store_full() if isinstance(exc, EngineFull) else store_unavailable()


class StreamRoute(Route):
    """A route whose answers are long-lived streams, served by ``serve`` before any middleware (``ProgressApp``).

    ``endpoint`` is what the route answers through the ordinary stack, which the fast path makes unreachable in
    practice; it keeps the route in the table, in the OpenAPI document and in ``url_path_for``.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], serve: ASGIApp, methods: list[str]) -> None:
        super().__init__(path, endpoint, methods=methods)
        self.serve = serve


class ProgressApp(Starlette):
    """Sends a request matching a ``StreamRoute`` of its table straight to the route's ``serve``, past the middleware.

    A stream lives for minutes and its coroutine stack stays suspended for as long: each middleware layer
    would keep a frame per connection and add a call to every write. The stream endpoint adds the headers
    every answer carries itself (``server/headers.py``). The routes are declared once, in the table given to the app.
    """

    def __init__(self, routes: list[BaseRoute], **options: Any) -> None:
        super().__init__(routes=routes, **options)
        self.stream_routes = [route for route in routes if isinstance(route, StreamRoute)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.stream_routes:
                match, child_scope = route.matches(scope)  # the route's own path and methods (HEAD with GET)
                if match is Match.FULL:
                    scope.update(child_scope)
                    scope["app"] = self
                    await route.serve(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)


def tune_garbage_collector() -> None:
    """Move what startup allocated out of the collector's sight and collect young objects less often.

    Each connection allocates a few hundred objects; with the default thresholds the collector runs every
    few connections and walks every object the app holds, which dominated the cost of a connect storm.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def verify_engine(engine: Engine) -> None:
    """Refuse to start on a wrong engine URL; a store that does not answer yet is checked by /readyz later."""
    try:
        await engine.verify()
    except EngineMisconfigured as error:
        log.error("cannot start: %s", error)
        raise
    except EngineUnavailable as error:
        log.warning("could not check the event store at startup (%s); /readyz checks it again", error)


# Each step of the lifespan's shutdown gets this long: uvicorn bounds the wait for connections, not the
# lifespan, and a step stuck on a store that does not answer would keep the process alive after SIGTERM.
SHUTDOWN_STEP_SECONDS = 3.0


async def stop_within(*steps: Callable[[], Awaitable[None]]) -> None:
    """Run each shutdown step in turn; one that does not finish in time is logged and left behind (not awaited:
    a task that ignores its cancellation would hold up ``wait_for`` as well)."""
    for step in steps:
        task = asyncio.ensure_future(step())
        done, _ = await asyncio.wait({task}, timeout=SHUTDOWN_STEP_SECONDS)
        if not done:
            task.cancel()
            log.error("shutdown: %s did not finish within %g s; going on", step.__qualname__, SHUTDOWN_STEP_SECONDS)
        elif not task.cancelled() and (error := task.exception()) is not None:
            log.error("shutdown: %s failed; going on", step.__qualname__, exc_info=error)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    engine = engine or create_engine(settings)
    logging.getLogger("uvicorn.error").addFilter(sse.HIDE_ABORTED_STREAMS)
    hub = Hub(engine, settings.buffer_events, settings.buffer_bytes, settings.heartbeat)
    service = Service(
        settings, engine, hub, TokenAuthority(settings.secrets, settings.insecure), RateLimiter(settings.publish_rate)
    )
    index_watch = IndexWatch(engine, StallRule(settings.stall_after, settings.stall_factor), settings.ttl)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tune_garbage_collector()
        raise_open_files_limit()
        await verify_engine(engine)
        await hub.start()
        await index_watch.start()
        try:
            yield
        finally:
            await stop_within(index_watch.stop, hub.stop, engine.close)

    middleware = [Middleware(ResponseHeaders, cors_origins=settings.cors_origins)]

    routes = [
        Route("/", demo_page),
        Route("/ops", ops_page),
        Route("/ops/events", sessions.changes),
        Route("/ops/figures", sessions.figures),
        Route("/sessions", sessions.sessions),
        StreamRoute("/sessions/{session_id}/events", sse.events, sse.serve_events, methods=["GET"]),
        Route("/sessions/{session_id}/events", publish.publish, methods=["POST"]),
        Route("/sessions/{session_id}", snapshot.snapshot),
        Route("/sessions/{session_id}/history", snapshot.history),
        WebSocketRoute("/ws/sessions/{session_id}", ws.session_socket),
        Route("/healthz", ops.healthz),
        Route("/readyz", ops.readyz),
        Route("/metrics", ops.metrics),
        Route("/stats", ops.stats),
        Route("/openapi.json", openapi_schema),
        Mount("/static", WebClientFiles(directory=WEB_DIR, check_dir=False), name="static"),
    ]
    if settings.legacy_routes:
        routes += legacy.ROUTES
        # Said at startup: old URLs answering is a choice an operator should see, and undo once pages moved.
        paths = ", ".join(str(getattr(route, "path", route)) for route in legacy.ROUTES)
        log.info("legacy routes on (SSE_PROGRESS_LEGACY_ROUTES): %s", paths)
    app = ProgressApp(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            ApiError: handle_api_error,
            EngineUnavailable: handle_unavailable,
            HTTPException: handle_http_error,
        },
    )
    app.state.service = service
    app.state.index_watch = index_watch
    return app
