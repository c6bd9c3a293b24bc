"""Process plumbing for the bench: starting/stopping targets in their own process groups, figures from /proc.

Ports and the repository root come from the test suite's harness (``tests/support/processes.py``).

Everything binds to 127.0.0.1. Servers are started in their own session (process group) so that stopping
one signals exactly the processes this module started.
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
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import ROOT, free_port

BENCH = ROOT / "bench"
PYTHON = sys.executable
NOFILE = 30000
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
SECRET = "bench-secret-not-for-production-0123456789"


def raise_fd_limit(wanted: int = NOFILE) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def fd_limit_for_children() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


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
    workdir: Path
    kind: str  # "sse" | "nchan" | "naive"
    workers: int = 1
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pids(self) -> list[int]:
        return descendants(self.proc.pid)

    def stop(self) -> None:
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
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-sse-"))
    launcher = f"{PYTHON} -m uvicorn"
    cmd = (
        f"{launcher} sse_progress.server.app:create_app --factory --loop uvloop --http httptools "
        f"--host 127.0.0.1 --port {port} --no-access-log --log-level warning --backlog 4096 "
        f"--timeout-graceful-shutdown 1"
    )
    if workers > 1:
        cmd += f" --workers {workers}"
    env = {**os.environ, "REDIS_URL": redis_url, "SSE_PROGRESS_SECRET": SECRET, **(env_extra or {})}
    proc = _spawn(cmd, env, workdir / "server.log", ROOT)
    server = Server(f"sse-progress x{workers}", port, proc, workdir, "sse", workers)
    _wait_http(server, "/healthz")
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
    server = Server("naive (pubsub per client)", port, proc, workdir, "naive")
    _wait_http(server, "/healthz")
    return server


def start_nchan() -> Server:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-nchan-"))
    (workdir / "tmp").mkdir()
    conf = (BENCH / "nchan.conf").read_text().replace("@PORT@", str(port))
    (workdir / "nginx.conf").write_text(conf)
    cmd = f"{nginx} -p {workdir}/ -e {workdir}/error.log -c {workdir}/nginx.conf"
    proc = _spawn(cmd, dict(os.environ), workdir / "server.log", workdir)
    server = Server("nchan (nginx, 1 worker)", port, proc, workdir, "nchan")
    _wait_http(server, "/healthz")
    return server


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def start_redis() -> RedisServer:
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    cmd = (
        f"redis-server --bind 127.0.0.1 --port {port} --save '' --appendonly no --maxclients 25000 "
        f"--dir {workdir} --tcp-backlog 4096 --protected-mode yes"
    )
    proc = _spawn(cmd, dict(os.environ), workdir / "redis.log", workdir)
    wait_port(port)
    return RedisServer(port, proc, workdir)
