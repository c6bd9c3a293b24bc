"""Real parts: a redis-server spawned on a free port (or $REDIS_URL) and uvicorn servers in subprocesses."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from sse_progress.auth import Role, TokenAuthority

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-" + uuid.uuid4().hex
STARTUP_TIMEOUT = 60.0  # generous: CI machines can be loaded


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02) -> None:  # type: ignore[no-untyped-def]
    """Poll a readiness condition of another process (there is no event to await across processes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class ManagedProcess:
    """A server in a subprocess that a test can stop (or kill) and start again."""

    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(15)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


class RedisServer(ManagedProcess):
    """A redis-server of the test suite's own, restartable (optionally with AOF persistence)."""

    def __init__(self, persistent: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: `apt-get install redis-server` (the tests need a real Redis)")
        self.binary = binary
        self.port = free_port()
        self.persistent = persistent
        self.directory = tempfile.mkdtemp(prefix="sse-progress-redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                self.directory,
                *persistence,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        wait_until(lambda: _pings(client), STARTUP_TIMEOUT, f"redis-server on port {self.port}")
        client.close()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: $REDIS_URL when set, else a redis-server spawned for this test run."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = RedisServer()
    server.start()
    yield server.url
    server.stop()


class LiveServer(ManagedProcess):
    """``uvicorn sse_progress.app:create_app`` in a subprocess, on a fixed port across restarts."""

    def __init__(self, redis_url: str | None, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.redis_url = redis_url
        self.secret = SECRET
        self.tokens = TokenAuthority((SECRET,))
        self.env = {
            **os.environ,
            "SSE_PROGRESS_SECRET": SECRET,
            "SSE_PROGRESS_HEARTBEAT": "1",
            "SSE_PROGRESS_RETRY_MS": "500",
            "SSE_PROGRESS_POLL_MS": "300",
            "SSE_PROGRESS_PUBLISH_RATE": "0",
            **(env or {}),
        }
        if redis_url:
            self.env["REDIS_URL"] = redis_url
        else:
            self.env.pop("REDIS_URL", None)
        self.log = Path(tempfile.mkstemp(prefix="sse-progress-server-", suffix=".log")[1])

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "sse_progress.app:create_app",
                    "--factory",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--timeout-graceful-shutdown",
                    "3",
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._ready, STARTUP_TIMEOUT, f"the server on port {self.port} (log: {self.log})")

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"the server exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
        try:
            return httpx.get(self.url + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def token(self, session_id: str, role: str | Role = Role.SUBSCRIBE, ttl: int = 3600) -> str:
        return self.tokens.issue(session_id, Role(role), ttl)


@pytest.fixture(scope="session")
def server(redis_url: str) -> Iterator[LiveServer]:
    """A running server on the Redis engine, shared by the tests of a run (``restart()`` keeps its port)."""
    live = LiveServer(redis_url)
    live.start()
    yield live
    live.stop()


@pytest.fixture(scope="session")
def memory_server() -> Iterator[LiveServer]:
    """A running server on the embedded engine."""
    live = LiveServer(None)
    live.start()
    yield live
    live.stop()


@pytest.fixture
def session_id() -> str:
    return "t" + uuid.uuid4().hex[:20]
