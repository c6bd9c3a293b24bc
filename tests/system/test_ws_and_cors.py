"""WebSocket control messages and limits; CORS closed by default and open to configured origins."""

from __future__ import annotations

import json

import httpx
import pytest
import websockets

from tests.support.clients import Publisher
from tests.support.processes import LiveServer, running


def ws_url(server: LiveServer, session_id: str, token: str) -> str:
    return server.url.replace("http://", "ws://") + f"/ws/sessions/{session_id}?token={token}"


async def test_ping_status_request_and_bad_messages(server: LiveServer, session_id: str) -> None:
    publisher = Publisher(server.url, server.token(session_id, "publish"), session_id)
    latest = await publisher.step(3)
    await publisher.aclose()
    async with websockets.connect(ws_url(server, session_id, server.token(session_id))) as socket:
        greeting = json.loads(await socket.recv())
        assert greeting["type"] == "connection_established" and greeting["session_id"] == session_id
        assert json.loads(await socket.recv())["type"] == "snapshot"
        await socket.send(json.dumps({"type": "ping"}))
        assert json.loads(await socket.recv())["type"] == "pong"
        await socket.send(json.dumps({"type": "status_request"}))
        status = json.loads(await socket.recv())
        assert status == {
            "type": "status_response", "session_id": session_id, "connections": 1,
            "last_event_id": latest["id"], "status": "running",
        }  # fmt: skip
        await socket.send("{not json")
        assert json.loads(await socket.recv())["type"] == "error"
        await socket.send(json.dumps({"type": "dance"}))
        error = json.loads(await socket.recv())
        assert error["type"] == "error" and "dance" in error["error"]
        await socket.send(json.dumps({"type": "ping"}))  # still open after errors
        assert json.loads(await socket.recv())["type"] == "pong"


async def test_a_message_over_64_kib_closes_with_1009(server: LiveServer, session_id: str) -> None:
    async with websockets.connect(ws_url(server, session_id, server.token(session_id)), max_size=None) as socket:
        await socket.recv()
        await socket.send("x" * (65 * 1024))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await socket.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_a_bad_token_is_refused_with_1008(server: LiveServer, session_id: str) -> None:
    with pytest.raises((websockets.ConnectionClosed, websockets.InvalidStatus)) as refused:
        async with websockets.connect(ws_url(server, session_id, "forged")) as socket:
            await socket.recv()
    if isinstance(refused.value, websockets.ConnectionClosed):
        assert refused.value.rcvd is not None and refused.value.rcvd.code == 1008
    else:
        assert refused.value.response.status_code == 403


async def test_cors_is_closed_by_default(server: LiveServer) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{server.url}/healthz", headers={"Origin": "https://other.example"})
    assert "access-control-allow-origin" not in response.headers


async def test_cors_allows_configured_origins_with_credentials(redis_url: str, session_id: str) -> None:
    cors = {"SSE_PROGRESS_CORS_ORIGINS": "https://app.example, https://b.example"}
    with running(LiveServer(redis_url, env=cors)) as live:
        async with httpx.AsyncClient() as client:
            preflight = await client.options(
                f"{live.url}/sessions/{session_id}/events",
                headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET",
                         "Access-Control-Request-Headers": "last-event-id"},
            )  # fmt: skip
            assert preflight.headers["access-control-allow-origin"] == "https://app.example"
            assert preflight.headers["access-control-allow-credentials"] == "true"
            other = await client.get(f"{live.url}/healthz", headers={"Origin": "https://evil.example"})
            assert "access-control-allow-origin" not in other.headers
            # Streams bypass the middleware stack, so they must apply the same rule themselves.
            for origin, allowed in (("https://b.example", True), ("https://evil.example", False)):
                stream = await client.get(
                    f"{live.url}/sessions/{session_id}/events",
                    params={"token": live.token(session_id), "mode": "poll"},
                    headers={"Origin": origin},
                )
                assert stream.status_code == 200
                assert stream.headers.get("access-control-allow-origin") == (origin if allowed else None)
                assert stream.headers.get("access-control-allow-credentials") == ("true" if allowed else None)


async def test_a_wildcard_cors_origin_lets_any_site_read_streams_with_a_token(redis_url: str, session_id: str) -> None:
    with running(LiveServer(redis_url, env={"SSE_PROGRESS_CORS_ORIGINS": "*"})) as live:
        async with httpx.AsyncClient() as client:
            stream = await client.get(
                f"{live.url}/sessions/{session_id}/events",
                params={"token": live.token(session_id), "mode": "poll"},
                headers={"Origin": "https://anywhere.example"},
            )
            snapshot = await client.get(
                f"{live.url}/sessions/{session_id}/history",
                params={"token": live.token(session_id)},
                headers={"Origin": "https://anywhere.example"},
            )
    for response in (stream, snapshot):
        assert response.headers["access-control-allow-origin"] == "https://anywhere.example"


async def test_a_websocket_opened_by_another_site_cannot_use_the_cookie(redis_url: str, session_id: str) -> None:
    """Browsers attach cookies to a WebSocket whatever page opens it, and WebSockets know no CORS: a page of
    another site must not read streams with this site's cookie. Its own pages and configured origins may."""
    with running(LiveServer(redis_url, env={"SSE_PROGRESS_CORS_ORIGINS": "https://app.example"})) as live:
        url = live.url.replace("http://", "ws://") + f"/ws/sessions/{session_id}"
        cookie = {"Cookie": f"sse_progress_token={live.token(session_id)}"}
        own_site = "http://" + live.url.removeprefix("http://")
        for origin in (own_site, "https://app.example"):
            async with websockets.connect(url, additional_headers=cookie, origin=origin) as socket:  # type: ignore[arg-type]
                assert json.loads(await socket.recv())["type"] == "connection_established"
        with pytest.raises(websockets.ConnectionClosed) as refused:
            async with websockets.connect(url, additional_headers=cookie, origin="https://evil.example") as socket:  # type: ignore[arg-type]
                await socket.recv()
        assert refused.value.rcvd is not None and refused.value.rcvd.code == 1008
        assert "https://evil.example" in refused.value.rcvd.reason
        # The same page may still send the token itself: that is not ambient authority.
        with_token = f"{url}?token={live.token(session_id)}"
        async with websockets.connect(with_token, origin="https://evil.example") as socket:  # type: ignore[arg-type]
            assert json.loads(await socket.recv())["type"] == "connection_established"
