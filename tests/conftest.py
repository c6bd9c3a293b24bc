"""Real parts: a redis-server spawned on a free port (or $REDIS_URL) and uvicorn (or hypercorn) servers in
subprocesses.

The fixtures live here; the processes they start are in ``tests/support/processes.py``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from sse_progress.protocol.tokens import Role
from tests.support.legacy import BridgeProcess
from tests.support.processes import LiveServer, RedisClusterNodes, RedisServer, running, session_id_on_shard


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: $REDIS_URL when set, else a redis-server spawned for this test run."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with running(RedisServer()) as server:
        yield server.url


@pytest.fixture(scope="session")
def server(redis_url: str) -> Iterator[LiveServer]:
    """A running server on the Redis engine, shared by the tests of a run (``restart()`` keeps its port)."""
    with running(LiveServer(redis_url)) as live:
        yield live


@pytest.fixture(scope="session")
def second_server(redis_url: str) -> Iterator[LiveServer]:
    """Another instance on the same Redis as ``server``: publisher and subscriber on different instances."""
    with running(LiveServer(redis_url)) as live:
        yield live


@pytest.fixture(scope="session")
def memory_server() -> Iterator[LiveServer]:
    """A running server on the embedded engine."""
    with running(LiveServer(None)) as live:
        yield live


@pytest.fixture
def session_id() -> str:
    return "t" + uuid.uuid4().hex[:20]


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterNodes]:
    """A real 3-master Redis Cluster on free ports, for the tests of the cluster engine."""
    with running(RedisClusterNodes()) as nodes:
        yield nodes


@pytest.fixture(scope="session")
def cluster_server(redis_cluster: RedisClusterNodes) -> Iterator[LiveServer]:
    """A running server on the Redis Cluster engine (``redis+cluster://``)."""
    with running(LiveServer(redis_cluster.url)) as live:
        for shard in range(len(redis_cluster.ports)):
            _follow_until_live(live, session_id_on_shard(shard, len(redis_cluster.ports)))
        yield live


def _follow_until_live(live: LiveServer, session_id: str) -> None:
    """Open a stream and wait for its first frame: the server has then subscribed on the session's master.

    Run once per master, it leaves the server as one that has been serving for a while, its Pub/Sub connection to
    every master open.
    """
    event = {"etapa_atual": 1, "total_etapas": 2, "mensagem": "warm-up"}
    publish = {"Authorization": f"Bearer {live.token(session_id, Role.PUBLISH)}"}
    assert httpx.post(f"{live.url}/sessions/{session_id}/events", json=event, headers=publish).status_code == 201
    params = {"token": live.token(session_id)}
    with httpx.stream("GET", f"{live.url}/sessions/{session_id}/events", params=params, timeout=10) as response:
        next(line for line in response.iter_lines() if line.startswith("data:"))


@pytest.fixture(scope="session")
def servers_under_other_asgi() -> Iterator[dict[tuple[str, str], LiveServer]]:
    """The servers ``under`` started, by (session fixture, ASGI server): each started once, stopped at the end."""
    started: dict[tuple[str, str], LiveServer] = {}
    yield started
    for live in started.values():
        live.stop()


@pytest.fixture
def under(request: pytest.FixtureRequest) -> Callable[[str, str], LiveServer]:
    """``under(fixture, asgi)``: the server of the session fixture ``fixture``, or its like under another ASGI
    server (same store, same environment), started on first use and shared by the run like the fixture's."""

    def served(fixture: str, asgi: str) -> LiveServer:
        live: LiveServer = request.getfixturevalue(fixture)
        if asgi == live.asgi:
            return live
        started: dict[tuple[str, str], LiveServer] = request.getfixturevalue("servers_under_other_asgi")
        if (fixture, asgi) not in started:
            other = live.under(asgi)
            other.start()
            if other.redis_url and other.redis_url.startswith("redis+cluster://"):
                nodes: RedisClusterNodes = request.getfixturevalue("redis_cluster")
                for shard in range(len(nodes.ports)):
                    _follow_until_live(other, session_id_on_shard(shard, len(nodes.ports)))
            started[fixture, asgi] = other
        return started[fixture, asgi]

    return served


@pytest.fixture(scope="session")
def legacy_redis() -> Iterator[RedisServer]:
    """A redis-server for the older system's tests: the bridge turns keyspace notifications on in it."""
    with running(RedisServer()) as server:
        yield server


@pytest.fixture(scope="session")
def legacy_server(legacy_redis: RedisServer) -> Iterator[LiveServer]:
    """A server on ``legacy_redis`` with the older system's routes on (SSE_PROGRESS_LEGACY_ROUTES=1)."""
    with running(LiveServer(legacy_redis.url, env={"SSE_PROGRESS_LEGACY_ROUTES": "1"})) as live:
        yield live


@pytest.fixture
def bridge(legacy_redis: RedisServer) -> Iterator[BridgeProcess]:
    """``sse-progress bridge`` following ``legacy_redis``."""
    with running(BridgeProcess(legacy_redis.url)) as process:
        yield process


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, which it may stop, kill or fill without disturbing the others; without
    persistence, a restart empties it."""
    with running(RedisServer()) as server:
        yield server


@pytest.fixture
def persistent_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own with AOF (fsync always): a restart keeps every acknowledged write."""
    with running(RedisServer(persistent=True)) as server:
        yield server
