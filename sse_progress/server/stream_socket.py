"""The socket under a stream: how much the kernel may queue for it, and dropping it without waiting to flush.

A client that stops reading is only noticed once a write to it blocks. Left alone, the kernel's send queue
takes megabytes before that happens (autotuned up to ``tcp_wmem``'s maximum), outside every bound of the app;
capping ``SO_SNDBUF`` keeps it to a few frames. Cutting such a client with the server's ordinary close would
wait for it to read what is queued — forever — so it is aborted instead (RST), and its bytes freed at once.

The transport is found behind the server's ``send``: uvicorn's is a method of the object holding it (the
request cycle for HTTP, the protocol for WebSocket). Under any other server nothing is found, and the stream
keeps the server's own behaviour.

Found, the transport also takes a stream's live events directly (``ChunkedSocketWriter``): that is what makes
a delivery cost one system call rather than a task switch and an ASGI message.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any

from sse_progress.protocol.frames import HEARTBEAT_CHUNK, Frame


def transport_of(send: Any) -> asyncio.WriteTransport | None:
    """The transport the server's ``send`` writes to, when the server exposes it (uvicorn does)."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if callable(getattr(transport, "abort", None)) and callable(getattr(transport, "get_extra_info", None)):
        return transport
    return None


def cap_send_buffer(transport: asyncio.WriteTransport | None, size: int) -> None:
    """Limit the kernel's send queue for this socket to about ``size`` bytes (Linux doubles it; 0: no cap)."""
    if transport is not None and size > 0:
        _set_socket_option(transport, socket.SO_SNDBUF, size)


def _set_socket_option(transport: asyncio.WriteTransport, option: int, value: int | bytes) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # The client may already be gone: uvloop's socket then has no descriptor and raises ValueError.
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, option, value)


# SO_LINGER on with a zero timeout: closing the socket sends RST and frees its send queue at once. Without it
# the kernel keeps the unsent bytes and retries them (FIN-WAIT-1) for minutes to a client that does not read.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


def drop(transport: asyncio.WriteTransport | None) -> bool:
    """Reset the connection, discarding what is queued for it in the app and the kernel; False when there is
    no transport to reset."""
    if transport is None:
        return False
    _set_socket_option(transport, socket.SO_LINGER, _RESET_ON_CLOSE)
    transport.abort()
    return True


class SocketWriter:
    """Writes a stream's live frames straight to its socket, past the server's ``send``.

    A live event then costs one ``transport.write`` per client, with no task wake-up and no ASGI message. It
    also judges the client's progress, which ``send`` can no longer see: the bytes the transport holds against
    the bytes written to it. Subclasses say how a frame and a heartbeat look on the wire.
    """

    __slots__ = ("_mark", "_since_mark", "limit", "transport")

    def __init__(self, transport: asyncio.WriteTransport, limit: int) -> None:
        self.transport = transport
        self.limit = limit  # bytes the transport may hold for this client before it counts as too slow
        self._mark: int | None = None  # bytes the transport held at the last heartbeat
        self._since_mark = 0  # bytes written since then

    def deliver(self, frame: Frame) -> bool:
        """Write one frame; False when the connection is closing (nothing was written)."""
        raise NotImplementedError

    def heartbeat(self) -> bool:
        """Write a heartbeat; False when the connection is closing."""
        raise NotImplementedError

    def write(self, data: bytes) -> bool:
        transport = self.transport
        if transport.is_closing():
            return False
        transport.write(data)
        self._since_mark += len(data)
        return True

    def over_limit(self) -> bool:
        return self.transport.get_write_buffer_size() > self.limit

    def stalled(self) -> bool:
        """Called once per heartbeat: True when bytes were waiting at the previous call and not one of them,
        nor of those written since, has left — the client stopped reading."""
        held = self.transport.get_write_buffer_size()
        stalled = self._mark is not None and self._mark > 0 and held >= self._mark + self._since_mark
        self._mark, self._since_mark = held, 0
        return stalled

    def forget_progress(self) -> None:
        """Writes went through ``send`` meanwhile: the next heartbeat starts a new measure."""
        self._mark, self._since_mark = None, 0


class ChunkedSocketWriter(SocketWriter):
    """An SSE response's body: each frame one HTTP/1.1 chunk. The server's own ``send`` still writes the headers
    and the last chunk, so its state machine stays consistent (chunked framing counts no bytes in between)."""

    __slots__ = ()

    def deliver(self, frame: Frame) -> bool:
        return self.write(frame.sse_chunk)

    def heartbeat(self) -> bool:
        return self.write(HEARTBEAT_CHUNK)


def chunked_writer_of(send: Any, limit: int) -> ChunkedSocketWriter | None:
    """A writer for the response ``send`` belongs to, once its headers are sent, when the server is uvicorn
    (httptools or h11) and the body is chunked; None anywhere else, and the stream keeps writing through
    ``send``. Checked explicitly rather than assumed: another server, another protocol class or another body
    framing would be corrupted by chunks written past it."""
    cycle = getattr(send, "__self__", None)
    transport = transport_of(send)
    if cycle is None or transport is None or not getattr(cycle, "response_started", False):
        return None
    module = type(cycle).__module__
    if module == "uvicorn.protocols.http.httptools_impl":
        chunked = getattr(cycle, "chunked_encoding", None) is True
    elif module == "uvicorn.protocols.http.h11_impl":
        chunked = type(getattr(getattr(cycle, "conn", None), "_writer", None)).__name__ == "ChunkedWriter"
    else:
        chunked = False
    return ChunkedSocketWriter(transport, limit) if chunked else None


class WebSocketWriter(SocketWriter):
    """A WebSocket's messages: each frame one unmasked text frame, the same bytes for every client. Written
    only while the server has not sent its close frame: no message may follow it."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: Any, transport: asyncio.WriteTransport, limit: int) -> None:
        super().__init__(transport, limit)
        self._protocol = protocol

    def deliver(self, frame: Frame) -> bool:
        return not self._protocol.close_sent and self.write(frame.ws_message)

    def heartbeat(self) -> bool:
        # Nothing to write: keeping a WebSocket alive is the server's ping; only say whether it is still open.
        return not (self._protocol.close_sent or self.transport.is_closing())


# uvicorn's WebSocket protocols whose connection state is read from ``handshake_complete`` and ``close_sent``
# and that write every frame with a single ``transport.write``, so a frame written past them never splits one
# of theirs. The older ``websockets`` protocol keeps its state elsewhere and is served through ``send``.
_WEBSOCKET_PROTOCOLS = (
    "uvicorn.protocols.websockets.websockets_sansio_impl",
    "uvicorn.protocols.websockets.wsproto_impl",
)


def websocket_writer_of(receive: Any, limit: int) -> WebSocketWriter | None:
    """A writer for the accepted WebSocket ``receive`` belongs to, under uvicorn's sans-I/O or wsproto
    protocol; None anywhere else, and messages keep going through ``send``."""
    protocol = getattr(receive, "__self__", None)
    transport = transport_of(receive)
    if protocol is None or transport is None or type(protocol).__module__ not in _WEBSOCKET_PROTOCOLS:
        return None
    if not getattr(protocol, "handshake_complete", False) or getattr(protocol, "close_sent", True):
        return None
    return WebSocketWriter(protocol, transport, limit)
