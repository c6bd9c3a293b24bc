"""The socket under a stream: how much the kernel may queue for it, and dropping it without waiting to flush.

A client that stops reading is only noticed once a write to it blocks. Left alone, the kernel's send queue
takes megabytes before that happens (autotuned up to ``tcp_wmem``'s maximum), outside every bound of the app;
capping ``SO_SNDBUF`` keeps it to a few frames. Cutting such a client with the server's ordinary close would
wait for it to read what is queued — forever — so it is aborted instead (RST), and its bytes freed at once.

The transport is found behind the server's ``send``: uvicorn's is a method of the object holding it (the
request cycle for HTTP, the protocol for WebSocket). Under any other server nothing is found, and the stream
keeps the server's own behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any


def transport_of(send: Any) -> asyncio.WriteTransport | None:
    """The transport the server's ``send`` writes to, when the server exposes it (uvicorn does)."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if callable(getattr(transport, "abort", None)) and callable(getattr(transport, "get_extra_info", None)):
        return transport
    return None


def cap_send_buffer(transport: asyncio.WriteTransport | None, size: int) -> None:
    """Limit the kernel's send queue for this socket to about ``size`` bytes (Linux doubles it; 0: no cap)."""
    if transport is None or size <= 0:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # the client may already be gone
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def drop(transport: asyncio.WriteTransport | None) -> bool:
    """Reset the connection, discarding what is queued for it; False when there is no transport to reset."""
    if transport is None:
        return False
    transport.abort()
    return True
