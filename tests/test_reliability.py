"""Faults that must lose nothing: a Pub/Sub drop, an instance killed mid-job, shutdown, connection limits."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest
import redis

from .clients import Publisher, collect_until_end, follow
from .conftest import LiveServer, RedisServer, wait_until


@pytest.fixture
def own_redis():  # type: ignore[no-untyped-def]
    server = RedisServer()
    server.start()
    yield server
    server.stop()


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


async def test_connections_past_the_limit_get_503_with_retry_after(redis_url: str, session_id: str) -> None:
    live = LiveServer(redis_url, env={"SSE_PROGRESS_MAX_CONNECTIONS": "2"})
    live.start()
    try:
        async with (
            follow("sse", live.url, session_id, live.token(session_id)),
            follow("ws", live.url, session_id, live.token(session_id)),
        ):
            async with httpx.AsyncClient(timeout=5) as client:
                refused = await client.get(
                    f"{live.url}/sessions/{session_id}/events", params={"token": live.token(session_id)}
                )
            assert refused.status_code == 503 and refused.headers["retry-after"]
            assert "connection limit" in refused.json()["error"]
        await asyncio.sleep(0)
    finally:
        live.stop()
