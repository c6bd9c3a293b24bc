"""The stream fast path comes from the route table: a ``StreamRoute`` is served past the middleware, by its own
path and methods; everything else goes through the middleware as usual."""

from __future__ import annotations

import httpx
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from sse_progress.config import Settings
from sse_progress.server.app import ProgressApp, StreamRoute, create_app
from sse_progress.server.transports import sse

PASSED_THROUGH: list[str] = []


class Recorder:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        PASSED_THROUGH.append(f"{scope.get('method')} {scope['path']}")
        await self.app(scope, receive, send)


async def via_stack(request: Request) -> Response:
    return PlainTextResponse(f"stack {request.path_params}")


async def fast(scope: Scope, receive: Receive, send: Send) -> None:
    await PlainTextResponse(f"fast {scope['path_params']['name']}")(scope, receive, send)


def app() -> ProgressApp:
    routes: list[BaseRoute] = [
        StreamRoute("/things/{name}/stream", via_stack, fast, methods=["GET"]),
        Route("/things/{name}/stream", via_stack, methods=["POST"]),
    ]
    return ProgressApp(routes=routes, middleware=[Middleware(Recorder)])


async def test_a_get_or_head_on_a_stream_route_skips_the_middleware_and_gets_its_path_params() -> None:
    PASSED_THROUGH.clear()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app()), base_url="http://test") as client:
        assert (await client.get("/things/abc/stream")).text == "fast abc"
        assert (await client.head("/things/abc/stream")).status_code == 200
    assert PASSED_THROUGH == []


async def test_other_methods_and_paths_go_through_the_middleware() -> None:
    PASSED_THROUGH.clear()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app()), base_url="http://test") as client:
        assert (await client.post("/things/abc/stream")).text.startswith("stack")
        assert (await client.get("/things/abc/other")).status_code == 404
        assert (await client.get("/things/a/b/stream")).status_code == 404  # a session id has no slash
    assert PASSED_THROUGH == ["POST /things/abc/stream", "GET /things/abc/other", "GET /things/a/b/stream"]


def test_the_server_declares_its_event_stream_once_in_its_route_table() -> None:
    server = create_app(Settings(insecure=True))
    assert isinstance(server, ProgressApp)
    assert [(route.path, route.serve) for route in server.stream_routes] == [
        ("/sessions/{session_id}/events", sse.serve_events)
    ]
