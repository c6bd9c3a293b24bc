"""The one process harness of the tests and the benchmarks: free ports, a redis-server of one's own, a Redis
Cluster, and the server under uvicorn (or hypercorn), each in a subprocess that can be stopped and started again."""

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
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, TypeVar

import httpx
import redis

from sse_progress.protocol.tokens import Role, TokenAuthority

ROOT = Path(__file__).resolve().parents[2]
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
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            # Killed rather than left behind, and said: a process that ignores SIGTERM is a bug to see.
            self.process.kill()
            self.process.wait(5)
            command = " ".join(map(str, self.process.args))
            raise AssertionError(f"{command} did not exit within 15 s of SIGTERM") from None
        finally:
            if self.process.poll() is not None:
                self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


class Stoppable(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


Process = TypeVar("Process", bound=Stoppable)


@contextmanager
def running(process: Process) -> Iterator[Process]:
    """``process`` started for the length of a ``with`` block (or a fixture), and stopped after it, however it ends:
    also when it fails to start, since a part of it may already run."""
    try:
        process.start()
        yield process
    finally:
        process.stop()


class RedisServer(ManagedProcess):
    """A redis-server of the test suite's own, restartable (optionally with AOF persistence)."""

    def __init__(self, persistent: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: `apt-get install redis-server` (a real Redis is needed)")
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
        wait_until(lambda: pings(client), STARTUP_TIMEOUT, f"redis-server on port {self.port}")
        client.close()


def pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


ASGI_SERVERS = ("uvicorn", "hypercorn")
"""The ASGI servers the app is tested under: uvicorn, which ``sse-progress serve`` runs, and one other."""


class LiveServer(ManagedProcess):
    """The app under an ASGI server (``asgi``: uvicorn or hypercorn) in a subprocess, on one port across restarts."""

    def __init__(
        self,
        redis_url: str | None,
        env: dict[str, str] | None = None,
        asgi: str = "uvicorn",
        options: tuple[str, ...] = (),
    ) -> None:
        """``options`` are added to the ASGI server's command line (``("--http", "h11")``, say)."""
        if asgi not in ASGI_SERVERS:
            raise ValueError(f"asgi must be one of {ASGI_SERVERS}, not {asgi!r}")
        self.asgi = asgi
        self.options = options
        self.extra_env = env or {}
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
            **self.extra_env,
        }
        if redis_url:
            self.env["REDIS_URL"] = redis_url
        else:
            self.env.pop("REDIS_URL", None)
        self.log = Path(tempfile.mkstemp(prefix=f"sse-progress-{asgi}-", suffix=".log")[1])

    def under(self, asgi: str) -> LiveServer:
        """A server of the same store and environment under another ASGI server (not started)."""
        return LiveServer(self.redis_url, self.extra_env, asgi, self.options if asgi == self.asgi else ())

    def command(self) -> list[str]:
        if self.asgi == "hypercorn":
            # --workers 0: the server itself, not a supervisor of one, so that stop() signals the app's process.
            return [
                "hypercorn", "sse_progress.server.app:create_app()", "--bind", f"127.0.0.1:{self.port}",
                "--workers", "0", "--graceful-timeout", "3", "--log-level", "warning",
            ]  # fmt: skip
        return [
            "uvicorn", "sse_progress.server.app:create_app", "--factory", "--host", "127.0.0.1",
            "--port", str(self.port), "--timeout-graceful-shutdown", "3", "--log-level", "warning",
        ]  # fmt: skip

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", *self.command(), *self.options],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._ready, STARTUP_TIMEOUT, f"the server on port {self.port} (log: {self.log})")

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            output = self.log.read_text()[-2000:]
            raise RuntimeError(f"the {self.asgi} server exited with {self.process.returncode}: {output}")
        try:
            response = httpx.get(self.url + "/readyz", timeout=1)
        except httpx.HTTPError:
            return False
        # A test run against another server than the one it names would prove nothing about that one.
        served_by = response.headers.get("server", "")
        if not served_by.startswith(self.asgi):
            raise RuntimeError(f"port {self.port} is served by {served_by!r}, not {self.asgi}")
        return response.status_code == 200

    def token(self, session_id: str, role: str | Role = Role.SUBSCRIBE, ttl: int = 3600) -> str:
        return self.tokens.issue(session_id, Role(role), ttl)


CLUSTER_SLOTS = 16384


class RedisClusterNodes:
    """A real Redis Cluster of ``masters`` masters and no replicas (``redis-server --cluster-enabled yes``).

    ``redis-cli --cluster create`` gives master ``i`` (in port order) the ``i``-th equal range of the slots; the
    cluster bus of each node gets a free port of its own (``--cluster-port``), not port + 10000.
    """

    def __init__(self, masters: int = 3) -> None:
        self.binary = RedisServer().binary
        self.ports = sorted(free_port() for _ in range(masters))
        self.bus_ports = [free_port() for _ in range(masters)]
        self.directory = Path(tempfile.mkdtemp(prefix="sse-progress-cluster-"))
        self.url = f"redis+cluster://127.0.0.1:{self.ports[0]}"
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        for port, bus_port in zip(self.ports, self.bus_ports, strict=True):
            (self.directory / str(port)).mkdir()
            self.processes.append(self._spawn(port, bus_port))
        clients = [self.client(port) for port in self.ports]
        for client in clients:
            wait_until(lambda client=client: pings(client), STARTUP_TIMEOUT, "the cluster's redis-servers")  # type: ignore[misc]
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=STARTUP_TIMEOUT,
        )
        wait_until(lambda: all(cluster_ok(client) for client in clients), STARTUP_TIMEOUT, "cluster_state:ok")
        owners = {(first, last): port for first, last, (_, port, *_), *_ in clients[0].execute_command("CLUSTER SLOTS")}
        assert owners == dict(zip(slot_ranges(len(self.ports)), self.ports, strict=True)), owners
        for client in clients:
            client.close()

    def _spawn(self, port: int, bus_port: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                self.binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.directory / str(port)),
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(bus_port), "--save", "", "--appendonly", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def kill(self, index: int) -> None:
        """Kill master ``index`` (in port order) at once; its cluster config stays on disk for ``revive``."""
        self.processes[index].kill()
        self.processes[index].wait(15)

    def revive(self, index: int) -> None:
        """Start a killed master again, on its ports and with its cluster config: it owns its slots again (a
        restarted master serves sharded Pub/Sub at once; keyed commands only once the cluster agrees)."""
        self.processes[index] = self._spawn(self.ports[index], self.bus_ports[index])
        client = self.client(self.ports[index])
        wait_until(lambda: pings(client), STARTUP_TIMEOUT, "the revived redis-server")
        client.close()

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(15)
        self.processes.clear()
        shutil.rmtree(self.directory, ignore_errors=True)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port)

    def master_of(self, session_id: str) -> int:
        """The port of the master that owns the session (all its keys and its channel share one hash tag)."""
        return self.ports[shard_of(session_id, len(self.ports))]


def shard_of(session_id: str, shards: int) -> int:
    """Which master, in port order, owns the session's slot in a cluster made by ``redis-cli --cluster create``."""
    from redis.crc import key_slot

    slot = key_slot(f"{{{session_id}}}".encode())
    return next(index for index, (first, last) in enumerate(slot_ranges(shards)) if first <= slot <= last)


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """The slots ``redis-cli --cluster create`` gives each master: equal ranges, rounded as redis-cli does."""
    per_master = CLUSTER_SLOTS / masters
    ranges, first = [], 0
    for index in range(masters):
        last = CLUSTER_SLOTS - 1 if index == masters - 1 else int(index * per_master + per_master - 1 + 0.5)
        ranges.append((first, last))
        first = last + 1
    return ranges


def session_id_on_shard(shard: int, shards: int = 3) -> str:
    """A fresh session id whose slot belongs to the ``shard``-th master of a cluster made by ``RedisClusterNodes``."""
    while True:
        candidate = "t" + uuid.uuid4().hex[:20]
        if shard_of(candidate, shards) == shard:
            return candidate


def cluster_ok(client: redis.Redis) -> bool:
    try:
        return client.cluster("INFO").get("cluster_state") == "ok"  # type: ignore[no-any-return]
    except redis.RedisError:
        return False


def metric(live: LiveServer, name: str) -> float:
    """The value of an unlabelled metric on the server's /metrics (0 when it is not there yet)."""
    for line in httpx.get(f"{live.url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0
