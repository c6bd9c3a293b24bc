"""The one process harness of the tests and the benchmarks: free ports, a redis-server of one's own, a Redis
Cluster, and the server under uvicorn, each in a subprocess that can be stopped and started again."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

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


class LiveServer(ManagedProcess):
    """``uvicorn sse_progress.server.app:create_app`` in a subprocess, on a fixed port across restarts.

    ``uvicorn_args`` are added to uvicorn's command line (the benchmarks: ``--loop uvloop``, ``--workers 2``)."""

    def __init__(
        self, redis_url: str | None, env: dict[str, str] | None = None, uvicorn_args: Sequence[str] = ()
    ) -> None:
        self.uvicorn_args = tuple(uvicorn_args)
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
                    "sse_progress.server.app:create_app",
                    "--factory",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--timeout-graceful-shutdown",
                    "3",
                    "--log-level",
                    "warning",
                    *self.uvicorn_args,
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
            node_dir = self.directory / str(port)
            node_dir.mkdir()
            self.processes.append(
                subprocess.Popen(
                    [
                        self.binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
                        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-port", str(bus_port), "--save", "", "--appendonly", "no",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
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
