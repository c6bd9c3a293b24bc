"""Every byte a client costs is bounded: the app's buffer, the kernel's send queue, and replay of any history.

The stalled clients are raw sockets with a tiny receive buffer that read the response start and then nothing.
"Holds no connection" is what the kernel says (``ss``), not the server's log: a connection the server has
given up on but not reset would keep its queued bytes for as long as the client likes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from sse_progress.engines import MemoryEngine, Page, SessionView
from sse_progress.protocol.events import EventDraft
from sse_progress.protocol.frames import parse_envelope
from sse_progress.server.hub import REPLAY_PAGE_SHARE, Hub
from sse_progress.server.replay import SessionCursor, plan_from_view
from tests.support.clients import Publisher
from tests.support.processes import LiveServer
from tests.system.test_slow_consumer import StalledReader, complete_event_ids, follow_all

HEARTBEAT = 1.0
PADDING = "x" * 20_000
MB = 1 << 20


def server_memory(server: LiveServer, field: str = "VmRSS") -> int:
    """The server process's resident memory (``VmHWM``: its peak since ``reset_peak_memory``), in bytes."""
    assert server.process is not None
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} missing")


def reset_peak_memory(server: LiveServer) -> None:
    assert server.process is not None
    with open(f"/proc/{server.process.pid}/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current RSS


def server_sockets(server: LiveServer, client_port: int) -> list[tuple[int, int]]:
    """(Recv-Q, Send-Q) of each server-side socket connected to ``client_port``, in any state: a socket closed
    with a FIN rather than reset stays in FIN-WAIT-1 holding its Send-Q, which is the cost being bounded."""
    out = subprocess.run(
        ["ss", "-tnH", "state", "connected", f"( sport = :{server.port} and dport = :{client_port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()]
    return [(int(row[1]), int(row[2])) for row in rows if row[0] != "TIME-WAIT"]  # TIME-WAIT holds no data


class ConnectionWatch:
    """Samples the server side of one client's connection until it is gone: the peak Send-Q and when it went."""

    def __init__(self, server: LiveServer, client_port: int) -> None:
        self.server = server
        self.client_port = client_port
        self.peak_send_queue = 0
        self.gone_at: float | None = None
        self.task = asyncio.ensure_future(self._sample())

    async def _sample(self) -> None:
        while True:
            sockets = await asyncio.to_thread(server_sockets, self.server, self.client_port)
            if not sockets:
                self.gone_at = time.monotonic()
                return
            self.peak_send_queue = max(self.peak_send_queue, *(send_q for _, send_q in sockets))
            await asyncio.sleep(0.05)

    async def gone_by(self, deadline: float) -> float:
        """Waits until the connection is gone; fails if it is still there at ``deadline`` (monotonic)."""
        try:
            await asyncio.wait_for(asyncio.shield(self.task), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            self.task.cancel()
            raise AssertionError(
                f"the server still holds a connection to the stalled client (Send-Q {self.peak_send_queue} bytes)"
            ) from None
        assert self.gone_at is not None
        return self.gone_at


def client_port(stalled: StalledReader) -> int:
    return int(stalled.writer.get_extra_info("sockname")[1])


@pytest.fixture
def fresh_server(redis_url: str) -> Iterator[LiveServer]:
    """A server of the test's own: the tests stop it with SIGTERM."""
    live = LiveServer(redis_url, env={"SSE_PROGRESS_HEARTBEAT": str(HEARTBEAT)})
    live.start()
    yield live
    live.stop()


async def publish(server: LiveServer, session_id: str, count: int, padding: str, pause: float = 0.0) -> list[str]:
    """``count`` events (the last one terminal) through the HTTP API, ``pause`` seconds apart; returns their ids."""
    publisher = Publisher(server.url, server.token(session_id, "publish"), session_id, total=count)
    ids = []
    for etapa in range(1, count + 1):
        event = await publisher.step(etapa, "success" if etapa == count else "running", dados_extra={"pad": padding})
        ids.append(event["id"])
        if pause:
            await asyncio.sleep(pause)
    await publisher.aclose()
    return ids


async def sigterm_exit_seconds(server: LiveServer) -> float:
    assert server.process is not None
    started = time.monotonic()
    server.process.terminate()
    await asyncio.to_thread(server.process.wait, 15)
    server.process = None
    return time.monotonic() - started


async def test_a_client_that_stops_reading_is_reset_within_two_heartbeats_and_costs_little_memory(
    fresh_server: LiveServer, session_id: str
) -> None:
    server = fresh_server
    await asyncio.sleep(0.5)  # past the startup's allocations
    reset_peak_memory(server)
    memory_before = server_memory(server)
    stalled = await StalledReader.open(server, session_id)
    watch = ConnectionWatch(server, client_port(stalled))
    healthy = asyncio.ensure_future(follow_all(server, session_id))

    publisher = Publisher(server.url, server.token(session_id, "publish"), session_id, total=1500)
    published, returned_at = [], {}
    for etapa in range(1, 1501):  # 30 MB
        event = await publisher.step(etapa, "success" if etapa == 1500 else "running", dados_extra={"pad": PADDING})
        published.append(event["id"])
        returned_at[event["id"]] = time.monotonic()
    await publisher.aclose()
    published_at = time.monotonic()

    await watch.gone_by(published_at + 2 * HEARTBEAT + 0.5)
    growth = server_memory(server, "VmHWM") - memory_before
    assert growth < 25 * MB, f"the server grew by {growth / MB:.1f} MB"

    received = await healthy
    assert [event_id for event_id, _ in received] == published
    worst = max(at - returned_at[event_id] for event_id, at in received)
    assert worst < 2.0, f"a reading client waited {worst:.2f}s for an event while another stalled"

    assert await sigterm_exit_seconds(server) < 2.0


async def test_a_client_that_stops_reading_is_cut_even_when_the_kernel_could_absorb_every_event(
    fresh_server: LiveServer, session_id: str
) -> None:
    """2.4 MB arriving slowly: an uncapped kernel send queue takes it all, and no write ever blocks."""
    server = fresh_server
    stalled = await StalledReader.open(server, session_id)
    watch = ConnectionWatch(server, client_port(stalled))
    await publish(server, session_id, 120, PADDING, pause=0.02)
    published_at = time.monotonic()
    await watch.gone_by(published_at + 2 * HEARTBEAT + 0.5)
    assert watch.peak_send_queue < 512 * 1024


async def test_sigterm_does_not_wait_for_a_client_blocked_in_a_write(redis_url: str, session_id: str) -> None:
    """Heartbeats far apart and buffers that never overflow: only the shutdown itself can cut the client."""
    server = LiveServer(
        redis_url,
        env={
            "SSE_PROGRESS_HEARTBEAT": "60",
            "SSE_PROGRESS_BUFFER_EVENTS": "100000",
            "SSE_PROGRESS_BUFFER_BYTES": "1000000000",
        },
    )
    server.start()
    try:
        stalled = await StalledReader.open(server, session_id)
        watch = ConnectionWatch(server, client_port(stalled))
        await publish(server, session_id, 60, PADDING)  # more than the capped kernel queue and transport hold
        await asyncio.sleep(0.5)
        assert server_sockets(server, client_port(stalled)), "the stalled client should still be connected"
        assert await sigterm_exit_seconds(server) < 2.0
        watch.task.cancel()
    finally:
        server.stop()


class StalledWebSocket:
    """A WebSocket handshake over a socket with a tiny receive buffer, then nothing read."""

    @classmethod
    async def open(cls, server: LiveServer, session_id: str) -> tuple[asyncio.StreamWriter, int]:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws/sessions/{session_id}?token={server.token(session_id)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        received = b""
        while b"connection_established" not in received:
            received += await asyncio.wait_for(reader.read(4096), 10)
        assert received.startswith(b"HTTP/1.1 101"), received[:200]
        return writer, int(sock.getsockname()[1])


async def test_a_websocket_that_stops_reading_is_reset_within_two_heartbeats(
    fresh_server: LiveServer, session_id: str
) -> None:
    server = fresh_server
    _writer, port = await StalledWebSocket.open(server, session_id)
    watch = ConnectionWatch(server, port)
    await publish(server, session_id, 300, PADDING)
    await watch.gone_by(time.monotonic() + 2 * HEARTBEAT + 0.5)


@pytest.fixture(scope="module")
def replay_server(redis_url: str) -> Iterator[LiveServer]:
    live = LiveServer(redis_url, env={"SSE_PROGRESS_HEARTBEAT": str(HEARTBEAT)})
    live.start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def long_history(replay_server: LiveServer) -> tuple[str, list[str]]:
    """A finished session of 1,000 events of 60 KB: 60 MB of history."""
    session = "t" + os.urandom(10).hex()
    return session, asyncio.run(publish(replay_server, session, 1000, "x" * 60_000))


async def read_whole_stream(server: LiveServer, session_id: str) -> list[str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    path = f"/sessions/{session_id}/events?token={server.token(session_id)}&last_event_id=0"
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    chunks = []
    async with asyncio.timeout(120):
        while chunk := await reader.read(1 << 20):
            chunks.append(chunk)
    writer.close()
    return complete_event_ids(b"".join(chunks))


async def test_twenty_clients_replaying_a_60_mb_history_without_reading_cost_under_100_mb(
    replay_server: LiveServer, long_history: tuple[str, list[str]]
) -> None:
    server, (session, _) = replay_server, long_history
    reset_peak_memory(server)
    memory_before = server_memory(server)
    stalled = await asyncio.gather(*[StalledReader.open(server, session, resume="0") for _ in range(20)])
    for client in stalled:  # each replay has started: events, not an answer saying the store is unavailable
        async with asyncio.timeout(10):
            while b"\ndata: " not in client.received:
                chunk = await client.reader.read(4096)
                assert chunk, f"the stream ended before its first event: {client.received[-300:]!r}"
                client.received += chunk
    await asyncio.sleep(3 * HEARTBEAT)  # the pages are read and written until every client's socket is full
    growth = server_memory(server, "VmHWM") - memory_before
    assert growth < 100 * MB, f"the server grew by {growth / MB:.1f} MB"
    for client in stalled:
        client.writer.close()


async def test_twenty_clients_replaying_a_60_mb_history_get_every_event_once(
    replay_server: LiveServer, long_history: tuple[str, list[str]]
) -> None:
    server, (session, published) = replay_server, long_history
    for ids in await asyncio.gather(*[read_whole_stream(server, session) for _ in range(20)]):
        assert ids == published


async def test_polling_a_long_history_answers_page_by_page_and_the_next_poll_continues(
    replay_server: LiveServer, long_history: tuple[str, list[str]]
) -> None:
    server, (session, published) = replay_server, long_history
    got: list[str] = []
    resume = "0"
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(len(published)):
            response = await client.get(
                f"{server.url}/sessions/{session}/events",
                params={"mode": "poll", "token": server.token(session), "last_event_id": resume},
            )
            if response.status_code == 204:
                break
            assert len(response.content) < 512 * 1024
            ids = [line[4:] for line in response.text.split("\n") if line.startswith("id: ")]
            # More to come at once: the answer tells the browser to poll again without waiting.
            assert response.text.startswith("retry: 0\n") == (ids[-1] != published[-1])
            got += ids
            resume = ids[-1]
    assert got == published


async def test_the_json_history_answers_page_by_page_and_says_whether_more_follow(
    replay_server: LiveServer, long_history: tuple[str, list[str]]
) -> None:
    server, (session, published) = replay_server, long_history
    got: list[str] = []
    after = "0"
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(len(published)):
            response = await client.get(
                f"{server.url}/sessions/{session}/history", params={"token": server.token(session), "after": after}
            )
            assert response.status_code == 200 and len(response.content) < 512 * 1024
            answer = response.json()
            got += [event["id"] for event in answer["events"]]
            if not answer["more"]:
                break
            after = got[-1]
    assert got == published


def draft(session_id: str, etapa: int, size: int) -> EventDraft:
    return EventDraft(session_id, etapa, 100, status="running", dados_extra={"pad": "x" * size})  # type: ignore[arg-type]


def frame_id(envelope: bytes) -> str:
    return parse_envelope(envelope, "s")[1]


async def test_a_page_holds_what_fits_at_least_one_event_and_says_whether_more_follow() -> None:
    engine = MemoryEngine()
    for etapa in range(1, 11):
        engine.publish_now(draft("s", etapa, 1000))
    whole = await engine.read("s", (0, 0))
    size = len(whole.events[0])
    page = await engine.read("s", (0, 0), Page(max_bytes=3 * size, max_events=100))
    assert page.events == whole.events[:3] and page.more
    replay = plan_from_view(page, "s", (0, 0))
    assert replay.more and replay.last_id == replay.frames[-1].id
    rest = await engine.read("s", replay.last_id, Page(max_bytes=100 * size, max_events=4))
    assert rest.events == whole.events[3:7] and rest.more
    one = await engine.read("s", replay.last_id, Page(max_bytes=1, max_events=100))
    assert one.events == whole.events[3:4] and one.more  # an event larger than a page still moves the replay on
    end = await engine.read("s", plan_from_view(whole, "s", (0, 0)).frames[-2].id, Page(100 * size, 100))
    assert len(end.events) == 1 and not end.more


async def test_a_replay_reads_its_next_page_only_once_the_previous_one_was_taken() -> None:
    engine = MemoryEngine()
    for etapa in range(1, 11):
        event = draft("s", etapa, 1000)
        engine.publish_now(event if etapa < 10 else replace(event, status="success"))
    published = [frame_id(envelope) for envelope in (await engine.read("s", (0, 0))).events]
    size = len((await engine.read("s", (0, 0))).events[0])
    reads = 0
    read = engine.read

    async def counted_read(*args: Any) -> SessionView:
        nonlocal reads
        reads += 1
        return await read(*args)

    engine.read = counted_read  # type: ignore[method-assign]
    hub = Hub(engine, buffer_bytes=REPLAY_PAGE_SHARE * 3 * size, heartbeat=60)
    await hub.start()
    stream = await SessionCursor.open(hub, "s", "0", "sse")
    try:
        batches = stream.batches()
        got: list[str] = []
        for page in range(1, 5):
            got += [frame.id_text for frame in await anext(batches)]
            assert reads == page  # nothing is read ahead of what the transport took
        assert got == published
        with pytest.raises(StopAsyncIteration):
            await anext(batches)
    finally:
        stream.close()
        await hub.stop()


async def test_shutdown_aborts_a_write_blocked_on_a_client_that_does_not_read() -> None:
    hub = Hub(MemoryEngine(), heartbeat=60)
    await hub.start()
    listener = await hub.listen("s", "sse")
    never_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    listener.task = writer = asyncio.ensure_future(listener.write(never_done))
    await asyncio.sleep(0)
    try:
        hub.close_all()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(2):
                await writer
        assert listener.aborted
    finally:
        listener.close()
        await hub.stop()


def open_streams(server: LiveServer, transport: str = "sse") -> float:
    prefix = f'sse_progress_open_connections{{transport="{transport}"}} '
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


def leave_as_the_stream_opens(server: LiveServer, session_id: str, how: str) -> None:
    """Send a stream request and go at once: closed (FIN), reset (RST) or half-closed (no more to send)."""
    client = socket.create_connection(("127.0.0.1", server.port))
    path = f"/sessions/{session_id}/events?token={server.token(session_id)}"
    client.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    if how == "reset":
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    if how == "half-close":
        client.shutdown(socket.SHUT_WR)
        client.settimeout(5)
        with contextlib.suppress(OSError):
            client.recv(65536)  # the stream's first bytes, or its end
    client.close()


async def test_clients_that_leave_as_their_stream_opens_give_their_slot_back(redis_url: str, session_id: str) -> None:
    """Each such client was once counted open for good: a handful filled the connection limit until restart."""
    server = LiveServer(redis_url, env={"SSE_PROGRESS_MAX_CONNECTIONS": "5"})
    server.start()
    try:
        for n in range(30):
            await asyncio.to_thread(
                leave_as_the_stream_opens, server, session_id, ("close", "reset", "half-close")[n % 3]
            )
        deadline = time.monotonic() + 5
        while open_streams(server) > 0:
            assert time.monotonic() < deadline, f"{open_streams(server):.0f} streams still counted open"
            await asyncio.sleep(0.05)
        async with Publisher(server.url, server.token(session_id, "publish"), session_id) as publisher:
            await publisher.step(1)
        async with httpx.AsyncClient(timeout=10) as client:
            url = f"{server.url}/sessions/{session_id}/events?token={server.token(session_id)}&last_event_id=0"
            async with client.stream("GET", url) as response:
                async for line in response.aiter_lines():
                    assert "connection limit" not in line
                    if line.startswith("data:"):
                        break
        assert "Exception in ASGI application" not in server.log.read_text()
    finally:
        server.stop()


async def test_a_client_gone_behind_a_pipelined_request_is_let_go_without_an_error(
    fresh_server: LiveServer, session_id: str
) -> None:
    """A request pipelined behind a stream keeps the server from reading the client's close; the next write
    finds the connection closed, which is the client leaving, not a failure."""
    server = fresh_server
    client = socket.create_connection(("127.0.0.1", server.port))
    stream = f"GET /sessions/{session_id}/events?token={server.token(session_id)} HTTP/1.1\r\nHost: x\r\n\r\n"
    client.sendall((stream + "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").encode())
    client.settimeout(5)
    assert client.recv(65536).startswith(b"HTTP/1.1 200")
    client.close()
    async with Publisher(server.url, server.token(session_id, "publish"), session_id) as publisher:
        deadline = time.monotonic() + 10
        etapa = 0
        while open_streams(server) > 0:  # each event is a write that may find the connection gone
            assert time.monotonic() < deadline, "the stream of the departed client is still counted open"
            etapa += 1
            await publisher.step(etapa)
            await asyncio.sleep(0.2)
    assert "Exception in ASGI application" not in server.log.read_text()
