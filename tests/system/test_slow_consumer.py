"""A client that stops reading is cut off, others are not slowed down, and its reconnect loses nothing.

The slow client is a raw socket with a tiny receive buffer that reads the response start and then stops,
as a frozen browser tab or a stalled proxy would.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.clients import Publisher, collect_until_end, follow
from tests.support.processes import ASGI_SERVERS, LiveServer

PADDING = "x" * 16_000  # big events fill the socket buffers quickly
EVENTS = 400


@pytest.fixture(scope="module", params=ASGI_SERVERS)
def small_buffers(redis_url: str, request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    """Under each ASGI server: the bound is the app's own, whether it reaches the socket (uvicorn) or not."""
    env = {"SSE_PROGRESS_BUFFER_EVENTS": "32", "SSE_PROGRESS_BUFFER_BYTES": "262144"}
    live = LiveServer(redis_url, env=env, asgi=request.param)
    live.start()
    yield live
    live.stop()


@pytest.fixture(scope="module", params=ASGI_SERVERS)
def large_buffers(redis_url: str, request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    """Buffers that never overflow here, so only a write blocked for a whole heartbeat can end the stream."""
    env = {"SSE_PROGRESS_BUFFER_EVENTS": "100000", "SSE_PROGRESS_BUFFER_BYTES": "1000000000"}
    live = LiveServer(redis_url, env=env, asgi=request.param)
    live.start()
    yield live
    live.stop()


class StalledReader:
    """An SSE request over a socket whose owner reads the first bytes of the stream and then nothing."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.received = b""

    @classmethod
    async def open(cls, server: LiveServer, session_id: str, resume: str | None = None) -> StalledReader:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        path = f"/sessions/{session_id}/events?token={server.token(session_id)}"
        if resume is not None:
            path += f"&last_event_id={resume}"
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
        stalled = cls(reader, writer)
        while b"retry:" not in stalled.received:
            stalled.received += await asyncio.wait_for(reader.read(4096), 10)
        assert stalled.received.startswith(b"HTTP/1.1 200"), stalled.received[:200]
        return stalled

    async def read_to_end(self, timeout: float = 20.0) -> bytes:
        """Reads again, until the server closes the connection (a client cut as too slow is reset: what had
        reached its receive buffer is read first, then the reset ends it)."""
        async with asyncio.timeout(timeout):
            with contextlib.suppress(ConnectionResetError):
                while chunk := await self.reader.read(65536):
                    self.received += chunk
        self.writer.close()
        return self.received


def complete_event_ids(raw: bytes) -> list[str]:
    """The ids of the events whose frame arrived whole (the stream may be cut in the middle of one)."""
    body = dechunk(raw.split(b"\r\n\r\n", 1)[1])
    ids = []
    for block in body.split(b"\n\n")[:-1]:  # the last piece is unterminated
        lines = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
        if b"data" in lines:
            ids.append(lines[b"id"].decode())
    return ids


def dechunk(body: bytes) -> bytes:
    out, position = [], 0
    while (end := body.find(b"\r\n", position)) != -1:
        size = int(body[position:end], 16)
        out.append(body[end + 2 : end + 2 + size])
        position = end + 2 + size + 2
        if size == 0:
            break
    return b"".join(out)


async def slow_consumer_disconnects(server: LiveServer) -> float:
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"{server.url}/metrics")).text
    for line in text.splitlines():
        if line.startswith("sse_progress_slow_consumer_disconnects_total"):
            return float(line.split()[-1])
    raise AssertionError("metric sse_progress_slow_consumer_disconnects_total is missing")


async def wait_for_metric_above(server: LiveServer, value: float, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while await slow_consumer_disconnects(server) <= value:
        assert time.monotonic() < deadline, "the stalled client was never disconnected"
        await asyncio.sleep(0.05)


async def publish_burst(server: LiveServer, session_id: str) -> tuple[list[str], dict[str, float]]:
    """Publishes EVENTS big events and a terminal one; returns their ids and when each publish returned."""
    publisher = Publisher(server.url, server.token(session_id, "publish"), session_id, total=EVENTS + 1)
    ids, returned_at = [], {}
    for etapa in range(1, EVENTS + 2):
        status = "success" if etapa == EVENTS + 1 else "running"
        event = await publisher.step(etapa, status, dados_extra={"pad": PADDING})
        ids.append(event["id"])
        returned_at[event["id"]] = time.monotonic()
    await publisher.aclose()
    return ids, returned_at


async def follow_all(server: LiveServer, session_id: str) -> list[tuple[str, float]]:
    async with follow("sse", server.url, session_id, server.token(session_id), resume="0") as fast:
        received = []
        while (frame := await fast.next(20)) is not None:
            received.append((frame.id, time.monotonic()))
        return received


async def test_overflowing_client_is_cut_off_others_keep_pace_and_its_reconnect_replays_the_rest(
    small_buffers: LiveServer, session_id: str
) -> None:
    server = small_buffers
    before = await slow_consumer_disconnects(server)
    stalled = await StalledReader.open(server, session_id)
    fast = asyncio.ensure_future(follow_all(server, session_id))

    published, returned_at = await publish_burst(server, session_id)
    await wait_for_metric_above(server, before)

    # Cut off, not finished: the connection closes without the end of the chunked body.
    raw = await stalled.read_to_end()
    assert not raw.endswith(b"0\r\n\r\n")
    got_before_cut = complete_event_ids(raw)
    assert got_before_cut == published[: len(got_before_cut)] and len(got_before_cut) < len(published)

    # The browser reconnects with the last id it saw and gets exactly the rest.
    resume = got_before_cut[-1] if got_before_cut else "0"
    async with follow("sse", server.url, session_id, server.token(session_id), resume=resume) as again:
        rest = [frame.id for frame in await collect_until_end(again)]
    assert got_before_cut + rest == published

    received = await fast
    assert [event_id for event_id, _ in received] == published
    worst = max(at - returned_at[event_id] for event_id, at in received)
    assert worst < 1.0, f"a reading client waited {worst:.2f}s for an event while another stalled"


async def test_a_write_blocked_for_a_heartbeat_interval_ends_the_stream(
    large_buffers: LiveServer, session_id: str
) -> None:
    server = large_buffers
    before = await slow_consumer_disconnects(server)
    stalled = await StalledReader.open(server, session_id)
    published, _ = await publish_burst(server, session_id)
    await wait_for_metric_above(server, before)

    raw = await stalled.read_to_end()
    assert not raw.endswith(b"0\r\n\r\n")
    got = complete_event_ids(raw)
    assert got == published[: len(got)] and len(got) < len(published)


async def test_a_finished_stream_whose_client_stopped_reading_is_still_closed(
    large_buffers: LiveServer, session_id: str
) -> None:
    """The whole history leaves in one write that fills the socket: the end of the response must not wait
    for a reader that never comes back."""
    server = large_buffers
    publisher = Publisher(server.url, server.token(session_id, "publish"), session_id, total=EVENTS)
    for etapa in range(1, EVENTS + 1):  # more than the kernel's socket buffers hold
        await publisher.step(etapa, "success" if etapa == EVENTS else "running", dados_extra={"pad": PADDING})
    await publisher.aclose()
    before = await slow_consumer_disconnects(server)
    stalled = await StalledReader.open(server, session_id, resume="earliest")
    await wait_for_metric_above(server, before)
    raw = await stalled.read_to_end()
    assert not raw.endswith(b"0\r\n\r\n")
