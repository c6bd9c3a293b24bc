"""Faults that must lose nothing: a Pub/Sub drop, an instance killed mid-job, shutdown, connection limits."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time

import httpx
import pytest
import redis
import websockets

from tests.support.clients import Publisher, collect_until_end, follow
from tests.support.processes import LiveServer, RedisServer, metric, wait_until


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_pubsub_drop_in_the_server_loses_nothing(own_redis: RedisServer, session_id: str, transport: str) -> None:
    live = LiveServer(own_redis.url)
    live.start()
    admin = redis.Redis.from_url(own_redis.url)
    publisher = Publisher(live.url, live.token(session_id, "publish"), session_id, total=60)
    try:
        published = [(await publisher.step(1))["id"]]
        async with follow(transport, live.url, session_id, live.token(session_id), "earliest") as stream:
            received = [(await stream.next()).id]  # type: ignore[union-attr]
            for round_ in range(3):
                wait_until(lambda: bool(admin.client_list(_type="pubsub")), 10, "the server to resubscribe")
                assert admin.client_kill_filter(_type="pubsub") >= 1
                # Published while the server's subscription is down: only the stream has them.
                for etapa in range(2 + round_ * 10, 12 + round_ * 10):
                    published.append((await publisher.step(etapa))["id"])
            published.append((await publisher.step(60, "success"))["id"])
            received += [frame.id for frame in await collect_until_end(stream, timeout=20)]
        assert received == published
        metrics = httpx.get(f"{live.url}/metrics").text
        assert "sse_progress_redis_reconnects_total 0.0" not in metrics
    finally:
        await publisher.aclose()
        admin.close()
        live.stop()


async def test_instance_killed_mid_job_client_resumes_on_another(redis_url: str, session_id: str) -> None:
    first, second = LiveServer(redis_url), LiveServer(redis_url)
    first.start()
    second.start()
    publisher = Publisher(second.url, second.token(session_id, "publish"), session_id, total=40)
    try:
        published = [(await publisher.step(n))["id"] for n in range(1, 6)]
        received: list[str] = []
        with pytest.raises(httpx.RemoteProtocolError):  # the connection dies with the process
            async with follow("sse", first.url, session_id, first.token(session_id), "earliest") as stream:
                for _ in published:
                    received.append((await stream.next()).id)  # type: ignore[union-attr]
                first.stop(kill=True)
                await stream.next(timeout=10)
        published += [(await publisher.step(n))["id"] for n in range(6, 20)]
        published.append((await publisher.step(40, "success"))["id"])
        async with follow("sse", second.url, session_id, second.token(session_id), received[-1]) as stream:
            received += [frame.id for frame in await collect_until_end(stream)]
        assert received == published
    finally:
        await publisher.aclose()
        first.stop()
        second.stop()


async def test_sigterm_ends_open_streams_with_a_short_retry_and_exits_promptly(redis_url: str, session_id: str) -> None:
    live = LiveServer(redis_url)
    live.start()
    async with httpx.AsyncClient(timeout=20) as client:
        streams = [
            client.stream("GET", f"{live.url}/sessions/{session_id}/events", params={"token": live.token(session_id)})
            for _ in range(3)
        ]
        responses = [await s.__aenter__() for s in streams]
        chunks = [r.aiter_raw() for r in responses]
        for chunk in chunks:
            assert (await anext(chunk)).startswith(b"retry: 500")
        assert live.process is not None
        started = time.monotonic()
        live.process.send_signal(signal.SIGTERM)
        for chunk in chunks:
            tail = b"".join([part async for part in chunk if not part.startswith(b":")])
            assert tail.startswith(b"retry: ") and 250 <= int(tail.split()[1]) <= 2000
        live.process.wait(10)
        assert time.monotonic() - started < 8, "shutdown must not wait for the graceful timeout of every stream"
        for s in streams:
            await s.__aexit__(None, None, None)
    live.process = None


async def test_websockets_are_closed_with_1012_on_shutdown(redis_url: str, session_id: str) -> None:
    live = LiveServer(redis_url)
    live.start()
    async with follow("ws", live.url, session_id, live.token(session_id)) as stream:
        assert live.process is not None
        live.process.send_signal(signal.SIGTERM)
        assert await stream.next(timeout=10) is None
        assert stream.close_code == 1012  # type: ignore[attr-defined]
    live.process.wait(10)
    live.process = None


async def test_streams_past_the_connection_limit_get_200_and_a_long_jittered_retry(
    redis_url: str, session_id: str
) -> None:
    """A 503 would make a browser's EventSource give up for good: the refused stream is told when to come back."""
    live = LiveServer(redis_url, env={"SSE_PROGRESS_MAX_CONNECTIONS": "2"})
    live.start()
    try:
        async with (
            follow("sse", live.url, session_id, live.token(session_id)),
            follow("ws", live.url, session_id, live.token(session_id)),
        ):
            delays = set()
            async with httpx.AsyncClient(timeout=5) as client:
                for _ in range(5):
                    refused = await client.get(
                        f"{live.url}/sessions/{session_id}/events", params={"token": live.token(session_id)}
                    )
                    assert refused.status_code == 200
                    assert refused.headers["content-type"].startswith("text/event-stream")
                    comment, retry, *rest = refused.text.split("\n")
                    assert comment.startswith(": server at its connection limit") and rest == ["", ""]
                    delays.add(int(retry.removeprefix("retry: ")))
            assert all(5000 <= delay <= 15000 for delay in delays) and len(delays) > 1
            assert metric(live, 'sse_progress_streams_deferred_total{reason="connection_limit"}') == 5
        await asyncio.sleep(0)
    finally:
        live.stop()


def ws_url(live: LiveServer, session_id: str, token: str | None) -> str:
    query = f"?token={token}" if token is not None else ""
    return live.url.replace("http://", "ws://") + f"/ws/sessions/{session_id}{query}"


async def test_a_websocket_that_stops_reading_is_reset_and_counted(redis_url: str, session_id: str) -> None:
    # A long heartbeat: only the overflow of the 8-frame buffer may cut the client off.
    live = LiveServer(redis_url, env={"SSE_PROGRESS_BUFFER_EVENTS": "8", "SSE_PROGRESS_HEARTBEAT": "60"})
    live.start()
    publisher = Publisher(live.url, live.token(session_id, "publish"), session_id, total=10_000)
    padding = {"padding": "x" * 8192}
    # A client that stops reading: a small receive buffer, and websockets stops reading past one queued message
    # (without compression, so that each frame takes its full size on the wire).
    slow_socket = socket.socket()
    slow_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: it sets the window
    slow_socket.connect(("127.0.0.1", live.port))
    try:
        async with (
            websockets.connect(
                ws_url(live, session_id, live.token(session_id)), sock=slow_socket, max_queue=1, compression=None
            ) as slow,
            follow("ws", live.url, session_id, live.token(session_id)) as healthy,
        ):
            assert json.loads(await slow.recv())["type"] == "connection_established"
            healthy_ids: list[str] = []

            async def read_healthy() -> None:
                while (frame := await healthy.next(timeout=30)) is not None:
                    healthy_ids.append(frame.id)

            reader = asyncio.create_task(read_healthy())
            published: list[str] = []
            for etapa in range(1, 5000):
                published.append((await publisher.step(etapa, dados_extra=padding))["id"])
                if etapa % 20 == 0 and metric(live, "sse_progress_slow_consumer_disconnects_total") >= 1:
                    break
            else:
                raise AssertionError("the client that does not read was never cut off")
            # The server lets it go while it still reads nothing: only the healthy client stays connected.
            wait_until(
                lambda: metric(live, 'sse_progress_open_connections{transport="ws"}') == 1, 10, "the slow client's end"
            )
            published.append((await publisher.step(10_000, "success"))["id"])
            await reader
            assert healthy_ids == published, "the healthy client missed or repeated an event"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:  # what got through before the reset, then the end
                    await slow.recv()
        # Reset, not closed: a close frame would wait behind what the client does not read, and so would the
        # server's memory and socket.
        assert closed.value.rcvd is None
    finally:
        await publisher.aclose()
        live.stop()


@pytest.mark.parametrize(
    ("token_kind", "reason"),
    [
        ("forged", "invalid token"),
        ("expired", "token expired"),
        ("other session", "another session"),
        ("missing", "missing token"),
    ],
)
async def test_a_refused_websocket_is_accepted_then_closed_with_1008_and_a_reason(
    server: LiveServer, session_id: str, token_kind: str, reason: str
) -> None:
    token = {
        "forged": "forged",
        "expired": server.token(session_id, ttl=-60),
        "other session": server.token(session_id + "x"),
        "missing": None,
    }[token_kind]
    # The handshake succeeds, so a browser sees the close code and reason rather than a bare 1006.
    async with websockets.connect(ws_url(server, session_id, token)) as refused:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await refused.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert reason in closed.value.rcvd.reason


async def test_a_websocket_past_the_connection_limit_is_closed_with_1013(redis_url: str, session_id: str) -> None:
    live = LiveServer(redis_url, env={"SSE_PROGRESS_MAX_CONNECTIONS": "1"})
    live.start()
    try:
        async with (
            follow("sse", live.url, session_id, live.token(session_id)),
            websockets.connect(ws_url(live, session_id, live.token(session_id))) as refused,
        ):
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await refused.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        assert "connection limit" in closed.value.rcvd.reason
    finally:
        live.stop()
