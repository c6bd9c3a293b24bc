"""Clients that stop reading, and what the server and the kernel do about them (the slow-consumer scenario).

A stalled client opens its stream with a small ``SO_RCVBUF`` (set before connecting, so the window it offers
stays small), sends its request and never reads a byte. What is sent to it fills, in order: its receive queue,
the server socket's send queue, then the server's user-space write buffer (uvloop pauses writers above 64 KiB);
the next write blocks, and the server cuts a client whose write was still in progress at two heartbeats in a row.

A client that does not read cannot see its connection end: a FIN waits behind the bytes it does not read. So
the cut is seen on the server's side of the connection in ``/proc/net/tcp``: the moment it leaves ESTABLISHED or
no process holds it any more (inode 0: the server let go, the kernel keeps the orphan and its unsent bytes).
The client's own socket is also watched with ``poll()`` for hang-up and error only (not registered with the
event loop, which would read it): a reset arrives when the kernel drops the connection. Queue sizes come from
the same table (the client's ``rx_queue``, the server socket's ``tx_queue``), kernel socket memory from
``/proc/net/sockstat``.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import time
from typing import Any

from bench import procs
from bench.clients import LINGER_RST

UVLOOP_HIGH_WATER = 64 * 1024  # uvloop's write-buffer high-water mark: writers wait above it
POLL_FLAGS = select.POLLERR | select.POLLHUP | getattr(select, "POLLRDHUP", 0x2000)


ESTABLISHED, FIN_WAIT1 = 1, 4


class StalledClient:
    __slots__ = (
        "cut_at",
        "cut_how",
        "growth",
        "kernel_bytes",
        "local_port",
        "opened_at",
        "orphan_bytes",
        "reset_at",
        "session",
        "sock",
    )

    def __init__(self, sock: socket.socket, session: int, opened_at: float) -> None:
        self.sock = sock
        self.session = session
        self.opened_at = opened_at
        self.local_port = sock.getsockname()[1]
        self.kernel_bytes = 0  # most bytes seen queued for it in the kernel (both ends)
        self.growth: list[tuple[float, int]] = []  # (when, kernel bytes) each time they grew
        self.cut_at = 0.0  # when the server let go of the connection
        self.cut_how = ""
        self.orphan_bytes = 0  # unsent bytes the kernel still held for it once the server let go
        self.reset_at = 0.0  # when the client's socket saw the end (a reset, or a FIN once it could arrive)


class StalledClients:
    def __init__(self, port: int, rcvbuf: int) -> None:
        self.port = port
        self.rcvbuf = rcvbuf
        self.clients: list[StalledClient] = []
        self.poller = select.poll()
        self.by_fd: dict[int, StalledClient] = {}

    async def open(self, loop: asyncio.AbstractEventLoop, paths: list[tuple[int, str]]) -> int:
        """Open one stream per (session index, path); returns how many answered 200 (peeked, not read)."""
        ok = 0
        for session, path in paths:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)  # before connect: the window
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", self.port))
            request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nAccept: text/event-stream\r\n\r\n"
            await loop.sock_sendall(sock, request.encode())
            client = StalledClient(sock, session, time.monotonic())
            self.clients.append(client)
            self.by_fd[sock.fileno()] = client
            self.poller.register(sock.fileno(), POLL_FLAGS)
        deadline = time.monotonic() + 10
        for client in self.clients:
            while time.monotonic() < deadline:
                with contextlib.suppress(BlockingIOError):
                    head = client.sock.recv(16, socket.MSG_PEEK)  # leaves the bytes queued
                    ok += head[9:12] == b"200"
                    break
                await asyncio.sleep(0.02)
        return ok

    def check_resets(self, now: float) -> None:
        for fd, _events in self.poller.poll(0):
            client = self.by_fd.pop(fd)
            self.poller.unregister(fd)
            client.reset_at = now
            if not client.cut_at:  # gone between two samples of the table
                client.cut_at, client.cut_how = now, "reset"

    def sample(self, now: float) -> None:
        """The server's side of each connection (cut yet?) and the bytes queued for it in the kernel."""
        ports = {c.local_port: c for c in self.clients if not c.cut_at}
        if not ports:
            return
        queued = dict.fromkeys(ports, 0)
        server_side: dict[int, tuple[int, int, int]] = {}
        for local, remote, state, tx, rx, inode in procs.tcp_queues(self.port):
            if local == self.port and remote in queued:
                queued[remote] += tx
                server_side[remote] = (state, tx, inode)
            elif remote == self.port and local in queued:
                queued[local] += rx  # the client's side
        for port, total in queued.items():
            client = ports[port]
            state, tx, inode = server_side.get(port, (0, 0, 0))
            if state != ESTABLISHED or not inode:
                client.cut_at = now
                client.cut_how = "FIN behind unsent bytes" if state == FIN_WAIT1 else "reset"
                client.orphan_bytes = tx if state else 0
                continue
            if total > client.kernel_bytes:
                client.kernel_bytes = total
                client.growth.append((now, total))

    def close(self) -> None:
        for client in self.clients:
            client.sock.close()

    def report(self, heartbeat: float, bytes_per_s: float, sample_s: float) -> dict[str, Any]:
        """When each stalled client was cut, and whether within two heartbeats of its write blocking.

        The write blocks once uvloop's 64 KiB buffer is full too, which the client cannot see: it is estimated
        as the moment the kernel queues were full (``full_at``) plus 64 KiB at the rate its session's healthy
        clients received.
        """
        cut = [c for c in self.clients if c.cut_at]
        to_cut = sorted(c.cut_at - c.opened_at for c in cut)
        reset = sorted(c.reset_at - c.cut_at for c in cut if c.reset_at)
        blocked = [full_at(c) + UVLOOP_HIGH_WATER / bytes_per_s if bytes_per_s and c.growth else 0.0 for c in cut]
        after_block = sorted(c.cut_at - b for c, b in zip(cut, blocked, strict=True) if b)
        limit = 2 * heartbeat + 2 * sample_s
        within = len(cut) == len(self.clients) and bool(after_block) and after_block[-1] <= limit
        return {
            "clients": len(self.clients),
            "cut": len(cut),
            "cut_by": {how: sum(1 for c in cut if c.cut_how == how) for how in ("reset", "FIN behind unsent bytes")},
            "orphan_bytes_per_client": _spread(sorted(c.orphan_bytes for c in cut)),
            "seconds_open_to_cut": _spread(to_cut),
            "client_saw_the_end": len(reset),
            "seconds_cut_to_client_reset": _spread(reset),
            "kernel_bytes_queued_per_client": _spread(sorted(c.kernel_bytes for c in self.clients)),
            "session_bytes_per_s": round(bytes_per_s, 1),
            "estimated_block_to_cut_s": _spread(after_block),
            "heartbeat_s": heartbeat,
            "limit_s": limit,
            "every_cut_within_two_heartbeats": within,
        }


def full_at(client: StalledClient) -> float:
    """When the kernel queues first held 99 % of the most they ever held for the client: full. (They creep up
    by a few bytes afterwards as segments merge; the 1 % is at most ~0.7 s at 1.5 KB/s.)"""
    return next(when for when, queued in client.growth if queued >= 0.99 * client.kernel_bytes)


def _spread(values: list[float] | list[int]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": round(values[0], 2), "median": round(values[len(values) // 2], 2), "max": round(values[-1], 2)}


def sockstat_tcp(field: str = "mem") -> int:
    """A TCP figure of /proc/net/sockstat, machine-wide: ``mem`` (pages of socket memory), ``orphan``, ``inuse``."""
    with open("/proc/net/sockstat") as stat:
        for line in stat:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index(field) + 1])
    return 0
