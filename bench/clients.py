"""The load generator's clients: one ``asyncio.Protocol`` per connection, no HTTP library per connection.

A ``Client`` is one logical browser that survives reconnects; it remembers its last id and, in a bitmap, which
events (by their per-session sequence ``n``) it has seen, so lost, duplicated and out-of-order events are counted
per connection. ``SseConnection`` speaks HTTP/1.1 with chunked decoding and SSE framing by ``\\n\\n``;
``WsConnection`` speaks RFC 6455 (the upgrade, unmasked server frames; the client itself sends only masked close
and pong frames).

A transient problem is answered ``200 text/event-stream`` with ``: <problem>; reconnect shortly`` and a ``retry:``
(a WebSocket: accepted, then closed with 1013). That is not a live stream: it counts as *deferred*, and the
client comes back after the ``retry:`` like ``EventSource`` when the load generator reconnects it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
import time
from array import array

LINGER_RST = struct.pack("ii", 1, 0)
LIVE = 200  # what connect() returns for a stream that is open and will deliver events
DEFERRED = -1  # a 200 that only said "reconnect shortly" (SSE) or a 1013 close (WebSocket)
CLOSE_TRY_AGAIN = 1013
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


class Stats:
    def __init__(self) -> None:
        self.latencies_us = array("q")
        self.frames = 0
        self.bytes_in = 0
        self.status: dict[int, int] = {}
        self.deferred: dict[str, int] = {}  # problem named by the server -> answers
        self.ws_close_codes: dict[int, int] = {}
        self.ended_early = 0
        self.reconnects = 0
        self.connect_errors = 0

    def defer(self, problem: str) -> None:
        self.deferred[problem] = self.deferred.get(problem, 0) + 1


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
        "retry_ms",
        "seen",
        "session",
        "source",
        "storming",
        "transport",
        "unique",
    )

    def __init__(self, index: int, session: int, path: str, transport: str = "sse", source: str = "") -> None:
        self.index = index
        self.session = session
        self.path = path
        self.transport = transport  # "sse" or "ws"
        self.source = source  # local address to connect from ("": the kernel's choice)
        self.seen = bytearray(64)
        self.received = 0
        self.unique = 0
        self.dups = 0
        self.ooo = 0
        self.last_id: bytes | None = None
        self.retry_ms: int | None = None  # the last `retry:` the server asked for
        self.conn: SseConnection | WsConnection | None = None
        self.live: asyncio.Future[int] | None = None
        self.ended: asyncio.Future[None] | None = None
        self.headers = 0
        self.connected_at = 0.0
        self.reconnects = 0
        self.storming = False
        self.ready = False  # its stream was open when publishing started

    def resolve(self, status: int) -> None:
        if self.live is not None and not self.live.done():
            self.live.set_result(status)

    def record(self, frames: list[bytes], now: int, latencies: array[int]) -> bytes | None:
        """Count the events among ``frames`` (anything without ``"t":`` is skipped); returns the last event."""
        seen = self.seen
        last_data = None
        last_n = -1
        for frame in frames:
            i = frame.find(b'"t":')
            if i < 0:
                continue  # retry line, comment, heartbeat, control message
            j = frame.find(b",", i)
            k = frame.find(b'"n":', j)
            e = frame.find(b"}", k)
            n = int(frame[k + 4 : e])
            latencies.append((now - int(frame[i + 4 : j])) // 1000)
            last_data = frame
            if n >= len(seen):
                seen.extend(bytes(n + 64 - len(seen)))
                self.seen = seen
            if seen[n]:
                self.dups += 1
            else:
                seen[n] = 1
                self.unique += 1
            if n < last_n:
                self.ooo += 1
            last_n = n
            self.received += 1
        return last_data


class _Connection(asyncio.Protocol):
    def __init__(self, client: Client, stats: Stats, request: bytes) -> None:
        self.client = client
        self.stats = stats
        self.request = request
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)  # close = RST, no TIME_WAIT
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        client = self.client
        client.resolve(0)
        if client.ended is not None and not client.ended.done():
            client.ended.set_result(None)


class SseConnection(_Connection):
    """One HTTP/1.1 SSE response, parsed incrementally (headers, chunked encoding, frames)."""

    def __init__(self, client: Client, stats: Stats, request: bytes) -> None:
        super().__init__(client, stats, request)
        self.head = b""
        self.in_body = False
        self.chunked = False
        self.chunk_left = 0
        self.need_crlf = False
        self.finite = -1  # a response with a Content-Length: its size (a stream has none)
        self.body = b""
        self.raw = b""
        self.text = b""
        self.crlf = False

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
            self.chunked = b"transfer-encoding: chunked" in head
            length = head.find(b"\r\ncontent-length:")
            if status == 200 and length >= 0:
                # A 200 of known size is no stream: "reconnect shortly" (or a poll answer); judged on its body.
                self.finite = int(head[length + 17 :].split(b"\r\n", 1)[0])
            else:
                self.stats.status[status] = self.stats.status.get(status, 0) + 1
                self.client.resolve(LIVE if status == 200 else status)
                if status != 200:
                    self.transport.close()  # type: ignore[union-attr]
                    return
            if not data:
                return
        if self.finite >= 0:
            self.body += data
            if len(self.body) >= self.finite:
                self._finished_answer(now)
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
        else:
            self.text = text[cut + 2 :]
            self._frames(text[:cut], now)
        if self.chunk_left < 0:  # the last chunk: the server ended the stream, like EventSource we hang up
            self.transport.close()  # type: ignore[union-attr]

    def _finished_answer(self, now: int) -> None:
        body = self.body.replace(b"\r\n", b"\n")
        self.finite = -1
        if body.startswith(b": ") and b"; reconnect shortly\n" in body:
            self.stats.defer(body[2 : body.index(b"; reconnect shortly")].decode(errors="replace"))
            self._retry(body)
            self.client.resolve(DEFERRED)
        else:  # a stream that ended at once: its frames count, its end is an ordinary end
            self.stats.status[200] = self.stats.status.get(200, 0) + 1
            self.client.resolve(LIVE)
            self._frames(body, now)
        self.transport.close()  # type: ignore[union-attr]

    def _retry(self, text: bytes) -> None:
        at = text.rfind(b"retry: ")
        if at >= 0:
            self.client.retry_ms = int(text[at + 7 :].split(b"\n", 1)[0])

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
                self.chunk_left = -1
                break
            self.chunk_left = length
        self.raw = buf[pos:]
        return b"".join(out)

    def _frames(self, text: bytes, now: int) -> None:
        if b"retry: " in text:
            self._retry(text)
        last_data = self.client.record(text.split(b"\n\n"), now, self.stats.latencies_us)
        if last_data is not None:
            idx = last_data.find(b"id: ")
            if idx >= 0:
                end = last_data.find(b"\n", idx)
                self.client.last_id = last_data[idx + 4 : end]


class WsConnection(_Connection):
    """One RFC 6455 client: the upgrade, then the server's (unmasked) frames; one JSON message per frame.

    Live once sse-progress's ``connection_established`` message arrives (nchan sends none: live at the upgrade).
    A 1013 close before that is a deferred answer, like SSE's "reconnect shortly".
    """

    def __init__(self, client: Client, stats: Stats, request: bytes, live_at_upgrade: bool) -> None:
        super().__init__(client, stats, request)
        self.live_at_upgrade = live_at_upgrade
        self.upgraded = False
        self.buf = b""
        self.fragments: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        self.stats.bytes_in += len(data)
        if not self.upgraded:
            head = self.buf + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                self.buf = head
                return
            status = int(head[9:12])
            self.stats.status[status] = self.stats.status.get(status, 0) + 1
            if status != 101:
                self.client.resolve(status)
                self.transport.close()  # type: ignore[union-attr]
                return
            self.upgraded = True
            if self.live_at_upgrade:
                self.client.resolve(LIVE)
            data, self.buf = head[end + 4 :], b""
        buf = self.buf + data if self.buf else data
        pos, size = 0, len(buf)
        messages = []
        while size - pos >= 2:
            opcode, length, start = buf[pos] & 0x0F, buf[pos + 1] & 0x7F, pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length, start = int.from_bytes(buf[pos + 2 : pos + 4], "big"), pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, start = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10
            if size - start < length:
                break
            payload, fin = buf[start : start + length], buf[pos] & 0x80
            pos = start + length
            if opcode in (0, 1, 2):
                if not fin:
                    self.fragments.append(payload)
                    continue
                if self.fragments:
                    payload = b"".join([*self.fragments, payload])
                    self.fragments = []
                messages.append(payload)
            elif opcode == 8:
                self._closed_by_server(payload)
                break
            elif opcode == 9:
                self.transport.write(masked_frame(10, payload))  # type: ignore[union-attr]
        self.buf = buf[pos:]
        if messages:
            self._messages(messages, now)

    def _messages(self, messages: list[bytes], now: int) -> None:
        client = self.client
        if b'"connection_established"' in messages[0]:
            client.resolve(LIVE)
        last = client.record(messages, now, self.stats.latencies_us)
        if last is not None:
            at = last.find(b'"id":"')
            if at >= 0:
                client.last_id = last[at + 6 : last.index(b'"', at + 6)]

    def _closed_by_server(self, payload: bytes) -> None:
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        self.stats.ws_close_codes[code] = self.stats.ws_close_codes.get(code, 0) + 1
        if code == CLOSE_TRY_AGAIN and self.client.live is not None and not self.client.live.done():
            self.stats.defer(payload[2:].decode(errors="replace"))
            self.client.resolve(DEFERRED)
        # Answer the close (masked, as every client frame), then wait for the server to close the TCP connection.
        self.transport.write(masked_frame(8, payload[:2]))  # type: ignore[union-attr]


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A final client frame of at most 125 bytes (close, pong), masked as RFC 6455 requires of clients."""
    key = os.urandom(4)
    return bytes((0x80 | opcode, 0x80 | len(payload))) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def request_for(client: Client, port: int, last_id: bytes | None) -> bytes:
    path = client.path
    if client.transport == "ws":
        if last_id and "?" in path:  # sse-progress resumes a WebSocket from its query
            path += f"&last_event_id={last_id.decode()}"
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
    else:
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Accept: text/event-stream"]
        lines.append("Cache-Control: no-cache")
        if last_id:
            lines.append(f"Last-Event-ID: {last_id.decode()}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def connect(
    loop: asyncio.AbstractEventLoop, kind: str, port: int, client: Client, stats: Stats, resume: bool
) -> int:
    """Open the client's stream; returns LIVE, DEFERRED, another HTTP status, or 0 on a connection error."""
    client.live = loop.create_future()
    client.ended = loop.create_future()
    request = request_for(client, port, client.last_id if resume else None)

    def protocol() -> SseConnection | WsConnection:
        if client.transport == "ws":
            return WsConnection(client, stats, request, live_at_upgrade=kind == "nchan")
        return SseConnection(client, stats, request)

    try:
        if client.source:
            _, conn = await loop.create_connection(protocol, sock=await bound_socket(loop, client.source, port))
        else:
            _, conn = await loop.create_connection(protocol, "127.0.0.1", port)
    except OSError:
        stats.connect_errors += 1
        client.live.set_result(0)
        client.ended.set_result(None)
        return 0
    client.conn = conn
    status = await client.live
    client.headers = status
    client.connected_at = time.monotonic()
    return status


async def bound_socket(loop: asyncio.AbstractEventLoop, source: str, port: int) -> socket.socket:
    """A socket connected from ``source``: the local port is picked at connect time, so each source address
    has the whole ephemeral range to itself (a plain bind would take a port unique across all addresses)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


def session_path(kind: str, session: str, token: str, transport: str = "sse") -> str:
    if kind == "nchan":
        return f"/ws/{session}" if transport == "ws" else f"/sub/{session}"
    if kind == "naive":
        return f"/events/{session}"
    if transport == "ws":
        return f"/ws/sessions/{session}?token={token}"
    return f"/sessions/{session}/events?token={token}"


def close_all(clients: list[Client]) -> None:
    for client in clients:
        conn = client.conn
        if conn is not None and conn.transport is not None:
            conn.transport.abort()
