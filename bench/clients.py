"""The load generator's clients: one ``asyncio.Protocol`` per connection, no HTTP library per connection.

A ``Client`` is one logical browser that survives reconnects; it remembers its last id and, in a bitmap, which
events (by their per-session sequence ``n``) it has seen, so lost, duplicated and out-of-order events are counted
per connection. ``SseConnection`` speaks HTTP/1.1 with chunked decoding and SSE framing by ``\\n\\n``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from array import array

LINGER_RST = struct.pack("ii", 1, 0)


class Stats:
    def __init__(self) -> None:
        self.latencies_us = array("q")
        self.frames = 0
        self.bytes_in = 0
        self.status: dict[int, int] = {}
        self.ended_early = 0
        self.reconnects = 0
        self.connect_errors = 0


class Client:
    """One logical browser: survives reconnects; remembers its last id and which events it has seen."""

    __slots__ = (
        "conn",
        "connected_at",
        "dups",
        "ended",
        "headers",
        "index",
        "last_id",
        "live",
        "ooo",
        "path",
        "ready",
        "received",
        "reconnects",
        "seen",
        "session",
        "storming",
        "unique",
    )

    def __init__(self, index: int, session: int, path: str) -> None:
        self.index = index
        self.session = session
        self.path = path
        self.seen = bytearray(64)
        self.received = 0
        self.unique = 0
        self.dups = 0
        self.ooo = 0
        self.last_id: bytes | None = None
        self.conn: SseConnection | None = None
        self.live: asyncio.Future[int] | None = None
        self.ended: asyncio.Future[None] | None = None
        self.headers = 0
        self.connected_at = 0.0
        self.reconnects = 0
        self.storming = False
        self.ready = False  # its stream was open when publishing started


class SseConnection(asyncio.Protocol):
    """One HTTP/1.1 SSE response, parsed incrementally (headers, chunked encoding, frames)."""

    def __init__(self, client: Client, stats: Stats, request: bytes) -> None:
        self.client = client
        self.stats = stats
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.in_body = False
        self.chunked = False
        self.chunk_left = 0
        self.need_crlf = False
        self.raw = b""
        self.text = b""
        self.crlf = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)  # close = RST, no TIME_WAIT
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        self.stats.bytes_in += len(data)
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end].lower(), self.head[end + 4 :]
            self.head = b""
            self.in_body = True
            status = int(head[9:12])
            self.stats.status[status] = self.stats.status.get(status, 0) + 1
            self.chunked = b"transfer-encoding: chunked" in head
            client = self.client
            if client.live is not None and not client.live.done():
                client.live.set_result(status)
            if status != 200:
                self.transport.close()  # type: ignore[union-attr]
                return
            if not data:
                return
        if self.chunked:
            data = self._dechunk(data)
        if b"\r" in data or self.crlf:  # sse-starlette's default separator is \r\n
            self.crlf = True
            data = data.replace(b"\r\n", b"\n")
        text = self.text + data
        cut = text.rfind(b"\n\n")
        if cut < 0:
            self.text = text
            return
        self.text = text[cut + 2 :]
        self._frames(text[:cut], now)

    def _dechunk(self, data: bytes) -> bytes:
        buf = self.raw + data if self.raw else data
        out = []
        pos, size = 0, len(buf)
        while pos < size:
            if self.chunk_left:
                take = min(self.chunk_left, size - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self.chunk_left -= take
                if not self.chunk_left:
                    self.need_crlf = True
                continue
            if self.need_crlf:
                if size - pos < 2:
                    break
                pos += 2
                self.need_crlf = False
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            length = int(buf[pos:eol].split(b";", 1)[0], 16)
            pos = eol + 2
            if length == 0:
                break
            self.chunk_left = length
        self.raw = buf[pos:]
        return b"".join(out)

    def _frames(self, text: bytes, now: int) -> None:
        client = self.client
        stats = self.stats
        latencies = stats.latencies_us
        seen = client.seen
        last_data = None
        last_n = -1
        for frame in text.split(b"\n\n"):
            i = frame.find(b'"t":')
            if i < 0:
                continue  # retry line, comment, heartbeat
            j = frame.find(b",", i)
            k = frame.find(b'"n":', j)
            e = frame.find(b"}", k)
            n = int(frame[k + 4 : e])
            latencies.append((now - int(frame[i + 4 : j])) // 1000)
            last_data = frame
            if n >= len(seen):
                seen.extend(bytes(n + 64 - len(seen)))
                client.seen = seen
            if seen[n]:
                client.dups += 1
            else:
                seen[n] = 1
                client.unique += 1
            if n < last_n:
                client.ooo += 1
            last_n = n
            client.received += 1
        if last_data is not None:
            idx = last_data.find(b"id: ")
            if idx >= 0:
                end = last_data.find(b"\n", idx)
                client.last_id = last_data[idx + 4 : end]

    def connection_lost(self, exc: Exception | None) -> None:
        client = self.client
        if client.live is not None and not client.live.done():
            client.live.set_result(0)
        if client.ended is not None and not client.ended.done():
            client.ended.set_result(None)


def request_for(kind: str, port: int, path: str, last_id: bytes | None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Accept: text/event-stream", "Cache-Control: no-cache"]
    if last_id:
        lines.append(f"Last-Event-ID: {last_id.decode()}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def connect(
    loop: asyncio.AbstractEventLoop, kind: str, port: int, client: Client, stats: Stats, resume: bool
) -> int:
    """Open the client's stream; returns the HTTP status (0 on a connection error)."""
    client.live = loop.create_future()
    client.ended = loop.create_future()
    request = request_for(kind, port, client.path, client.last_id if resume else None)
    try:
        _, protocol = await loop.create_connection(lambda: SseConnection(client, stats, request), "127.0.0.1", port)
    except OSError:
        stats.connect_errors += 1
        client.live.set_result(0)
        client.ended.set_result(None)
        return 0
    client.conn = protocol
    status = await client.live
    client.headers = status
    client.connected_at = time.monotonic()
    return status


def session_path(kind: str, session: str, token: str) -> str:
    if kind == "nchan":
        return f"/sub/{session}"
    if kind == "naive":
        return f"/events/{session}"
    return f"/sessions/{session}/events?token={token}"


def close_all(clients: list[Client]) -> None:
    for client in clients:
        conn = client.conn
        if conn is not None and conn.transport is not None:
            conn.transport.abort()
