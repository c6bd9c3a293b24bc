"""Process plumbing for the bench: the targets, figures from /proc.

The test suite's harness (``tests/support/processes.py``) starts redis-server and the sse-progress server
(``LiveServer``, here with uvloop, httptools and the production heartbeat and retry), and gives free ports;
this module adds what only the bench needs: nchan and the naive app (in their own process groups, so that
stopping one signals exactly the processes started), and per-process CPU, memory and sockets from /proc.

Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support import processes as support
from tests.support.processes import ROOT, free_port

BENCH = ROOT / "bench"
PYTHON = sys.executable
NOFILE = 30000
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
SECRET = support.SECRET  # random per process: the load generator gets it on its command line
# The server's settings where the test harness picks test values (a 1 s heartbeat, fast retries).
PRODUCTION_SETTINGS = {"SSE_PROGRESS_HEARTBEAT": "15", "SSE_PROGRESS_RETRY_MS": "3000", "SSE_PROGRESS_POLL_MS": "2000"}


def raise_fd_limit(wanted: int = NOFILE) -> int:
    """Raise the soft limit on open files to ``wanted`` (and the hard one, when allowed: root); children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, wanted))
            hard = wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def fd_limit_for_children() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(soft, NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard))


def wait_port(port: int, timeout: float = 20.0) -> None:
    support.wait_until(lambda: listens(port), timeout, f"a listener on 127.0.0.1:{port}", interval=0.05)


def listens(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def http_get_status(port: int, path: str, timeout: float = 2.0) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        head = sock.recv(64)
    return int(head[9:12])


# --------------------------------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from #3 (state) on


def descendants(root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if _stat_fields(pid) is None:
            continue
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (live ones; a process that exited is not counted)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB
    return total


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def _tcp_table() -> list[tuple[int, int, int, int]]:
    """(local port, remote port, state, inode) of every IPv4/IPv6 TCP socket."""
    rows = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(name) as table:
            next(table)
            for line in table:
                parts = line.split()
                local, remote = parts[1], parts[2]
                lport, rport = int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)
                rows.append((lport, rport, int(parts[3], 16), int(parts[9])))
    return rows


ESTABLISHED = 1


def tcp_queues(port: int) -> list[tuple[int, int, int, int, int, int]]:
    """(local port, remote port, state, tx_queue, rx_queue, inode) of each IPv4 TCP socket with ``port`` at an end.

    Inode 0: no process holds the socket any more (an orphan the kernel still sends from)."""
    rows = []
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            parts = line.split()
            lport, rport = int(parts[1].rsplit(":", 1)[1], 16), int(parts[2].rsplit(":", 1)[1], 16)
            if lport == port or rport == port:
                tx, rx = parts[4].split(":")
                rows.append((lport, rport, int(parts[3], 16), int(tx, 16), int(rx, 16), int(parts[9])))
    return rows


def tcp_per_process(pids: list[int], remote_port: int | None = None, local_port: int | None = None) -> dict[int, int]:
    """Established TCP sockets of each process, filtered by remote port (e.g. Redis) or local port (server)."""
    table = _tcp_table()
    counts = {}
    for pid in pids:
        inodes = _socket_inodes(pid)
        counts[pid] = sum(
            1
            for lport, rport, state, inode in table
            if state == ESTABLISHED
            and inode in inodes
            and (remote_port is None or rport == remote_port)
            and (local_port is None or lport == local_port)
        )
    return counts


# --------------------------------------------------------------------------------------------------- targets


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    kind: str  # "sse" | "nchan" | "naive"
    workers: int = 1
    secret: str = SECRET
    harness: support.LiveServer | None = None  # sse-progress: the test harness owns the process

    @property
    def pids(self) -> list[int]:
        return descendants(self.proc.pid)

    @property
    def workdir(self) -> Path:
        return self.log.parent

    def stop(self) -> None:
        if self.harness is not None:
            self.harness.stop()
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(8)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def _spawn(cmd: str, env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    handle = open(log, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    return subprocess.Popen(
        ["bash", "-c", f"ulimit -n {fd_limit_for_children()}; exec {cmd}"],
        env=env,
        cwd=cwd,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_http(server: Server, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    wait_port(server.port, timeout)
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}; see {server.workdir}")
        with contextlib.suppress(OSError, ValueError):
            if http_get_status(server.port, path) == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{server.name} not ready")


def start_sse_progress(redis_url: str, workers: int = 1, env_extra: dict[str, str] | None = None) -> Server:
    """The server under uvicorn as the README's targets run it (the descriptor limit is inherited: see
    ``raise_fd_limit``)."""
    args = ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--backlog", "4096"]
    if workers > 1:
        args += ["--workers", str(workers)]
    live = support.LiveServer(redis_url, env={**PRODUCTION_SETTINGS, **(env_extra or {})}, options=tuple(args))
    live.start()
    assert live.process is not None
    server = Server(f"sse-progress x{workers}", live.port, live.process, live.log, "sse", workers, live.secret, live)
    if workers > 1:  # every worker must be accepting before we measure
        deadline = time.monotonic() + 20
        while len(server.pids) < workers + 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
    return server


def start_naive(redis_url: str) -> Server:
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-naive-"))
    cmd = (
        f"{PYTHON} -m uvicorn bench.naive_app:app --loop uvloop --http httptools --host 127.0.0.1 --port {port} "
        f"--no-access-log --log-level warning --backlog 4096 --timeout-graceful-shutdown 1"
    )
    env = {**os.environ, "REDIS_URL": redis_url}
    proc = _spawn(cmd, env, workdir / "server.log", ROOT)
    server = Server("naive (pubsub per client)", port, proc, workdir / "server.log", "naive")
    _wait_http(server, "/healthz")
    return server


def start_nchan(connections: int = 25000) -> Server:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-nchan-"))
    (workdir / "tmp").mkdir()
    conf = (BENCH / "nchan.conf").read_text().replace("@PORT@", str(port))
    conf = conf.replace("@CONNECTIONS@", str(connections)).replace("@NOFILE@", str(connections + 5000))
    (workdir / "nginx.conf").write_text(conf)
    cmd = f"{nginx} -p {workdir}/ -e {workdir}/error.log -c {workdir}/nginx.conf"
    proc = _spawn(cmd, dict(os.environ), workdir / "server.log", workdir)
    server = Server("nchan (nginx, 1 worker)", port, proc, workdir / "server.log", "nchan")
    _wait_http(server, "/healthz")
    return server


def start_redis() -> support.RedisServer:
    """A private redis-server (no persistence) on a free port: the test harness's."""
    redis = support.RedisServer()
    redis.start()
    return redis
