"""The benchmark's raw clients read the server's answers right: a retry-later 200 is no live stream, the last
chunk ends a stream, and WebSocket frames (lengths, close codes, pings) are parsed as RFC 6455 says."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest

from bench.clients import DEFERRED, LIVE, Client, SseConnection, Stats, WsConnection


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    abort = close

    def get_extra_info(self, name: str) -> None:
        return None


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def opened(connection: SseConnection | WsConnection, loop: asyncio.AbstractEventLoop) -> FakeTransport:
    connection.client.live = loop.create_future()
    connection.client.ended = loop.create_future()
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    return transport


def event(n: int) -> bytes:
    return b'{"id":"1-%d","type":"progress_update","dados_extra":{"t":%d,"n":%d}}' % (n, time.time_ns(), n)


def test_a_retry_later_200_is_deferred_not_live(loop: asyncio.AbstractEventLoop) -> None:
    stats = Stats()
    client = Client(0, 0, "/sessions/s/events")
    connection = SseConnection(client, stats, b"GET")
    transport = opened(connection, loop)
    body = b": server at its connection limit; reconnect shortly\nretry: 7316\n\n"
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n" % len(body)
    connection.data_received(head + body[:20])
    assert not client.live.done()  # type: ignore[union-attr]
    connection.data_received(body[20:])
    assert client.live.result() == DEFERRED  # type: ignore[union-attr]
    assert stats.deferred == {"server at its connection limit": 1}
    assert stats.status == {}  # not counted as a 200
    assert client.retry_ms == 7316
    assert transport.closed  # the answer ended: hang up, as EventSource does


def test_a_stream_is_live_counts_events_and_ends_at_its_last_chunk(loop: asyncio.AbstractEventLoop) -> None:
    stats = Stats()
    client = Client(0, 0, "/sessions/s/events")
    connection = SseConnection(client, stats, b"GET")
    transport = opened(connection, loop)
    connection.data_received(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nd\r\nretry: 3000\n\n\r\n")
    assert client.live.result() == LIVE  # type: ignore[union-attr]
    frame = b"id: 1-0\nevent: progress_update\ndata: " + event(0) + b"\n\n"
    connection.data_received(b"%x\r\n%s\r\n" % (len(frame), frame))
    assert (client.received, client.last_id, client.retry_ms) == (1, b"1-0", 3000)
    assert not transport.closed
    connection.data_received(b"0\r\n\r\n")
    assert transport.closed


def ws_frame(opcode: int, payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, size)) + payload
    if size < 65536:
        return bytes((0x80 | opcode, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + size.to_bytes(8, "big") + payload


def test_websocket_is_live_at_connection_established_and_reads_every_length(loop: asyncio.AbstractEventLoop) -> None:
    stats = Stats()
    client = Client(0, 0, "/ws/sessions/s?token=t", "ws")
    connection = WsConnection(client, stats, b"GET", live_at_upgrade=False)
    transport = opened(connection, loop)
    connection.data_received(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n")
    assert not client.live.done()  # type: ignore[union-attr]
    established = json.dumps({"type": "connection_established"}).encode()
    connection.data_received(ws_frame(1, established))
    assert client.live.result() == LIVE  # type: ignore[union-attr]
    large = event(2)[:-1] + b',"pad":"' + b"x" * 70000 + b'"}'
    stream = ws_frame(1, event(0)) + ws_frame(1, event(1)[:-1] + b',"pad":"' + b"x" * 300 + b'"}') + ws_frame(1, large)
    for at in range(0, len(stream), 1000):  # split anywhere, headers included
        connection.data_received(stream[at : at + 1000])
    assert (client.received, client.unique, client.last_id) == (3, 3, b"1-2")
    connection.data_received(ws_frame(9, b"hi"))
    pong = transport.written[-1]
    assert pong[0] == 0x8A and pong[1] == 0x80 | 2  # a final pong, masked
    assert bytes(b ^ pong[2 + i % 4] for i, b in enumerate(pong[6:])) == b"hi"


def test_a_websocket_closed_with_1013_before_it_is_live_is_deferred(loop: asyncio.AbstractEventLoop) -> None:
    stats = Stats()
    client = Client(0, 0, "/ws/sessions/s?token=t", "ws")
    connection = WsConnection(client, stats, b"GET", live_at_upgrade=False)
    transport = opened(connection, loop)
    close = ws_frame(8, (1013).to_bytes(2, "big") + b"server at its connection limit")
    connection.data_received(b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + close)
    assert client.live.result() == DEFERRED  # type: ignore[union-attr]
    assert stats.deferred == {"server at its connection limit": 1}
    assert stats.ws_close_codes == {1013: 1}
    answer = transport.written[-1]
    assert answer[0] == 0x88 and answer[1] & 0x80  # the close is answered, masked
