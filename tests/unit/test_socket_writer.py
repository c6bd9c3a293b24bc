"""Live frames written straight to a socket, in-process over a real socket pair: when the fan-out may write,
what it hands back to the stream's task, and how the writer judges a client that stops reading."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from sse_progress.engines import MemoryEngine
from sse_progress.protocol.events import EventDraft
from sse_progress.protocol.frames import HEARTBEAT_CHUNK, Frame
from sse_progress.server.hub import Hub, Listener
from sse_progress.server.replay import Replay, SessionCursor
from sse_progress.server.stream_socket import ChunkedSocketWriter


@dataclass
class Pair:
    """The server's end as an asyncio transport, the client's as a plain socket that reads only when told."""

    transport: asyncio.WriteTransport
    client: socket.socket

    def read_all(self) -> bytes:
        data = b""
        while True:
            try:
                data += self.client.recv(1 << 20)
            except BlockingIOError:
                return data


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    server_end, client_end = socket.socketpair()
    server_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client_end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client_end.setblocking(False)
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, server_end)
    yield Pair(transport, client_end)
    transport.abort()
    client_end.close()


def frames(count: int, status_of_last: str = "running", padding: int = 0) -> list[Frame]:
    engine = MemoryEngine()
    extra = {"pad": "x" * padding} if padding else None
    frames = []
    for n in range(1, count + 1):
        status = status_of_last if n == count else "running"
        draft = EventDraft(session_id="s", etapa_atual=n, total_etapas=99, status=status, dados_extra=extra)
        frames.append(Frame.from_envelope(engine.publish_now(draft).envelope, "s"))
    return frames


def cursor(pair: Pair, limit: int = 1 << 20) -> SessionCursor:
    hub = Hub(MemoryEngine())
    listener = Listener(hub, "s", "sse", set())
    listener.writer = ChunkedSocketWriter(pair.transport, limit)
    return SessionCursor(hub.engine, listener, Replay())


async def waiting(stream: SessionCursor) -> asyncio.Task[None]:
    """The stream's task, caught up and waiting: the state in which the fan-out may write for it."""
    task = asyncio.create_task(stream.listener.wait(stream.offer))
    await asyncio.sleep(0)
    return task


async def test_a_waiting_stream_gets_live_frames_on_its_socket_without_waking(pair: Pair) -> None:
    stream = cursor(pair)
    task = await waiting(stream)
    live = frames(3)
    assert all(stream.listener.push(frame) for frame in live)
    await asyncio.sleep(0.01)
    assert not task.done() and stream.listener.frames == []
    assert pair.read_all() == b"".join(frame.sse_chunk for frame in live)
    assert stream.last_id == live[-1].id and stream.sent == 3
    task.cancel()


async def test_a_terminal_frame_wakes_the_task_and_everything_after_it_queues_behind(pair: Pair) -> None:
    stream = cursor(pair)
    task = await waiting(stream)
    first, terminal = frames(2, "success")
    assert stream.listener.push(first)
    assert not stream.listener.push(terminal)  # the task writes it and ends the stream
    assert not stream.listener.push(frames(3)[2])  # nothing may overtake the queued frame
    await asyncio.wait_for(task, 1)
    assert stream.listener.frames[0].id == terminal.id
    assert stream.last_id == first.id


async def test_a_frame_not_newer_than_the_last_sent_goes_to_the_task(pair: Pair) -> None:
    stream = cursor(pair)
    older, newer = frames(2)
    stream.last_id = newer.id
    task = await waiting(stream)
    assert not stream.listener.push(older)  # the task re-reads the store to tell a replay from a reset
    await asyncio.wait_for(task, 1)
    assert pair.read_all() == b""


async def test_nothing_is_written_once_the_task_was_woken(pair: Pair) -> None:
    stream = cursor(pair)
    task = await waiting(stream)
    stream.listener.resync()
    await asyncio.wait_for(task, 1)
    assert not stream.listener.push(frames(1)[0])
    assert pair.read_all() == b""


async def test_a_client_holding_more_than_the_limit_is_cut_at_once(pair: Pair) -> None:
    stream = cursor(pair, limit=64 * 1024)
    task = await waiting(stream)
    for frame in frames(20, padding=8000):  # 160 KB to a client that reads nothing
        stream.listener.push(frame)
    assert stream.listener.overflowed
    await asyncio.wait_for(task, 1)


async def test_a_waiting_stream_gets_its_heartbeat_on_the_socket(pair: Pair) -> None:
    stream = cursor(pair)
    task = await waiting(stream)
    stream.listener.beat()
    assert pair.read_all() == HEARTBEAT_CHUNK and not task.done()
    task.cancel()


async def test_bytes_that_do_not_move_between_two_heartbeats_cut_the_client(pair: Pair) -> None:
    stream = cursor(pair)
    task = await waiting(stream)
    for frame in frames(10, padding=8000):
        stream.listener.push(frame)
    assert pair.transport.get_write_buffer_size() > 0 and not stream.listener.overflowed
    stream.listener.beat()  # marks what the transport holds
    assert not stream.listener.overflowed
    stream.listener.beat()  # nothing left since: the client stopped reading
    assert stream.listener.overflowed
    await asyncio.wait_for(task, 1)


async def test_a_client_that_reads_between_heartbeats_is_not_cut(pair: Pair) -> None:
    stream = cursor(pair)
    task = await waiting(stream)
    for frame in frames(10, padding=8000):
        stream.listener.push(frame)
    for _ in range(3):
        stream.listener.beat()
        pair.read_all()
        await asyncio.sleep(0.01)  # the transport sends more once the client has read
    assert not stream.listener.overflowed and not task.done()
    task.cancel()
