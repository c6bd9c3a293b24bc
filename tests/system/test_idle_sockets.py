"""Sockets that open and never finish a request cannot hold the server's descriptors: a connection that has not
completed its request headers within SSE_PROGRESS_HEADER_TIMEOUT is dropped, and the server raises its own
open-files limit at startup. Against ``sse-progress serve`` as users start it, started with a soft limit of 256."""

from __future__ import annotations

import asyncio
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.clients import Publisher, follow
from tests.support.processes import ROOT, STARTUP_TIMEOUT, LiveServer, wait_until
from tests.system.test_observability import CliServer

HEADER_TIMEOUT = 2.0
SLACK = 4.0  # a loaded machine, and 300 sockets to notice closing
HALF_OPEN = 300
LOW_SOFT_LIMIT = 256  # below HALF_OPEN: without raising it the server could not even accept them all


class LowLimitCliServer(CliServer):
    """``sse-progress serve`` started by a shell whose soft open-files limit is LOW_SOFT_LIMIT."""

    def start(self) -> None:
        command = shutil.which("sse-progress", path=str(Path(sys.executable).parent))
        assert command is not None
        env = {**self.env, "PYTHONPATH": str(ROOT)}
        script = f'ulimit -Sn {LOW_SOFT_LIMIT} && exec "$0" serve --port {self.port} --timeout-graceful-shutdown 3'
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                ["sh", "-c", script, command], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        wait_until(self._ready, STARTUP_TIMEOUT, f"sse-progress serve on port {self.port} (log: {self.log})")


@pytest.fixture(scope="module")
def guarded_server(redis_url: str) -> Iterator[LiveServer]:
    live = LowLimitCliServer(
        redis_url, {"SSE_PROGRESS_HEADER_TIMEOUT": str(HEADER_TIMEOUT), "SSE_PROGRESS_HEARTBEAT": "0.5"}
    )
    live.start()
    yield live
    live.stop()


async def half_open(port: int) -> float:
    """Send a request line and a header, then one more header line every 0.5 s; the seconds until the server
    closed the connection."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    try:
        while True:
            try:
                if await asyncio.wait_for(reader.read(1024), 0.5) == b"":
                    break
            except TimeoutError:
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
    return time.monotonic() - started


async def header_timeouts(server: LiveServer) -> float:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{server.url}/metrics")).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("sse_progress_header_timeouts"))


async def test_300_half_open_sockets_are_closed_while_a_normal_client_is_served(guarded_server: LiveServer) -> None:
    dropped_before = await header_timeouts(guarded_server)
    port = int(guarded_server.url.rsplit(":", 1)[1])
    sockets = [asyncio.create_task(half_open(port)) for _ in range(HALF_OPEN)]
    await asyncio.sleep(0.5)  # all of them connected and talking slowly
    async with httpx.AsyncClient(timeout=5) as http:
        served = time.monotonic()
        assert (await http.get(f"{guarded_server.url}/healthz")).status_code == 200
        assert time.monotonic() - served < 2
    lifetimes = await asyncio.wait_for(asyncio.gather(*sockets), HEADER_TIMEOUT + SLACK + 5)
    assert max(lifetimes) <= HEADER_TIMEOUT + SLACK, sorted(lifetimes)[-5:]
    assert min(lifetimes) >= HEADER_TIMEOUT - 0.05  # the event loop may fire a timer a clock tick early
    assert await header_timeouts(guarded_server) - dropped_before == HALF_OPEN


async def test_connections_that_finished_their_headers_outlive_the_deadline(
    guarded_server: LiveServer, session_id: str
) -> None:
    """A stream, a WebSocket and a keep-alive connection between requests are not cut by the header deadline."""
    publisher = Publisher(guarded_server.url, guarded_server.token(session_id, "publish"), session_id)
    token = guarded_server.token(session_id)
    async with (
        follow("sse", guarded_server.url, session_id, token) as sse,
        follow("ws", guarded_server.url, session_id, token) as ws,
    ):
        await asyncio.sleep(HEADER_TIMEOUT * 2)
        await publisher.step(1)
        assert (await sse.next()) is not None
        assert (await ws.next()) is not None
    await publisher.aclose()
    async with httpx.AsyncClient(timeout=5) as http:  # one connection, requests spaced under the keep-alive time
        for _ in range(3):
            assert (await http.get(f"{guarded_server.url}/healthz")).status_code == 200
            await asyncio.sleep(HEADER_TIMEOUT * 0.8)


def test_the_open_files_limit_is_raised_to_the_hard_limit_and_logged(guarded_server: LiveServer) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert guarded_server.process is not None
    limits = Path(f"/proc/{guarded_server.process.pid}/limits").read_text()
    [line] = [line for line in limits.splitlines() if line.startswith("Max open files")]
    soft_now, hard_now = line.split()[3:5]
    assert int(soft_now) == int(hard_now) == hard
    assert f"open files limit: {hard} (raised from {LOW_SOFT_LIMIT} to the hard limit)" in guarded_server.log_text()
