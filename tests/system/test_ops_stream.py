"""The change stream (/ops/events) against a real server: heartbeats, its subscriber limit, and SIGTERM."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx

from sse_progress.protocol.tokens import Role
from sse_progress.server.index_watch import MAX_SUBSCRIBERS
from tests.support.processes import LiveServer

Stream = tuple[httpx.Response, AsyncIterator[bytes], bytes]


async def _open_stream(client: httpx.AsyncClient, url: str, token: str) -> Stream:
    """An open change stream: the response, its chunk iterator, and its first chunk."""
    response = await client.send(client.build_request("GET", url, params={"token": token}), stream=True)
    assert response.status_code == 200
    chunks = response.aiter_raw()
    return response, chunks, await anext(chunks)


def test_subscribers_past_the_limit_get_a_200_that_ends_with_a_retry_and_the_others_get_heartbeats() -> None:
    live = LiveServer(None)  # heartbeat 1 s (LiveServer's default for tests)
    live.start()
    token = live.token("*", Role.OBSERVE)
    url = f"{live.url}/ops/events"

    async def scenario() -> None:
        limits = httpx.Limits(max_connections=MAX_SUBSCRIBERS + 10)
        async with httpx.AsyncClient(timeout=20, limits=limits) as client:
            opened = await asyncio.gather(*(_open_stream(client, url, token) for _ in range(MAX_SUBSCRIBERS)))
            assert all(first.startswith(b"retry: ") for _, _, first in opened)
            # One more: a complete 200 answer whose only content is a later retry, so EventSource tries again.
            turned_away = await client.get(url, params={"token": token}, timeout=5)
            assert turned_away.status_code == 200
            assert turned_away.headers["content-type"].startswith("text/event-stream")
            assert turned_away.text == "retry: 5000\n\n"
            # The admitted ones are alive: a heartbeat arrives on a quiet stream.
            chunk = await asyncio.wait_for(anext(opened[0][1]), 5)
            assert chunk.startswith(b":"), chunk
            for response, _, _ in opened:
                await response.aclose()
            # Closed streams free their places.
            await asyncio.sleep(0.5)
            again, _, first = await _open_stream(client, url, token)
            assert first.startswith(b"retry: ") and first != b"retry: 5000\n\n"
            await again.aclose()

    try:
        asyncio.run(scenario())
    finally:
        live.stop()


def test_sigterm_ends_an_open_change_stream_promptly() -> None:
    live = LiveServer(None, {"SSE_PROGRESS_HEARTBEAT": "15"})
    live.start()
    with httpx.stream("GET", f"{live.url}/ops/events", params={"token": live.token("*", Role.OBSERVE)}) as response:
        assert response.status_code == 200
        chunks = response.iter_raw()
        assert next(chunks).startswith(b"retry: ")
        assert live.process is not None
        started = time.monotonic()
        live.process.terminate()
        rest = b"".join(chunks)  # ends when the server ends the stream
    assert rest.startswith(b"retry: "), rest  # a short retry, as the session streams send on shutdown
    live.process.wait(10)
    assert time.monotonic() - started < 3, "the stream held the shutdown"
    live.process = None
