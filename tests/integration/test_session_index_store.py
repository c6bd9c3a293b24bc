"""The session index as the engines store it: one round trip per publish on Redis, keys that expire with the
sessions, entries whose session data is gone dropped, and a Redis Cluster whose index lives in one slot."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis
from redis.crc import key_slot

from sse_progress.engines.memory import MemoryEngine
from sse_progress.engines.redis.cluster import RedisClusterEngine
from sse_progress.engines.redis.engine import RedisEngine
from sse_progress.protocol.events import EventDraft
from sse_progress.protocol.session_index import StallRule, list_sessions
from sse_progress.publisher.sinks import RedisSink
from tests.support.processes import RedisClusterNodes, RedisServer, session_id_on_shard


def _prefix() -> str:
    return "ix" + uuid.uuid4().hex[:8]


async def _listed(engine: RedisEngine | MemoryEngine, status: str | None = None) -> set[str]:
    page = await list_sessions(engine.index, StallRule(), status, 500, None)
    return {entry.session_id for entry in page.entries}


@pytest.fixture
async def redis_engine(redis_url: str) -> AsyncIterator[RedisEngine]:
    engine = RedisEngine(redis_url, prefix=_prefix(), ttl=2)
    yield engine
    await engine.close()


async def test_a_publish_updates_the_index_in_one_redis_command() -> None:
    server = RedisServer()  # a Redis of its own: nothing else's commands in its statistics
    server.start()
    try:
        engine = RedisEngine(server.url, prefix=_prefix())
        await engine.publish(EventDraft("warm", 1, 3))  # loads the script (EVALSHA's first miss falls back to EVAL)
        client = redis.Redis.from_url(server.url)
        seen: list[str] = []
        monitor_ready = threading.Event()

        def watch() -> None:
            with client.monitor() as monitor:
                monitor_ready.set()
                for command in monitor.listen():
                    if command["command"] == "ECHO end-of-test":
                        return
                    if command["client_type"] != "lua":  # commands a client sent, not those a script ran
                        seen.append(command["command"].split()[0].upper())

        watcher = threading.Thread(target=watch)
        watcher.start()
        assert monitor_ready.wait(10)
        time.sleep(0.2)  # the MONITOR command has reached the server
        for etapa in range(1, 11):
            await engine.publish(EventDraft("one-trip", etapa, 10, status="success" if etapa == 10 else "running"))
        redis.Redis.from_url(server.url).echo("end-of-test")
        watcher.join(10)
        handshakes = ("HELLO", "CLIENT")  # the connection that sends the ECHO
        assert [command for command in seen if command not in handshakes] == ["EVALSHA"] * 10, seen
        assert await _listed(engine, "success") == {"one-trip"}
        client.close()
        await engine.close()
    finally:
        server.stop()


async def test_index_keys_expire_with_their_sessions(redis_engine: RedisEngine, redis_url: str) -> None:
    await redis_engine.publish(EventDraft("short", 1, 3))
    await redis_engine.publish(EventDraft("short", 2, 3, status="error", mensagem="falhou"))
    await redis_engine.publish(EventDraft("short-running", 1, 3))
    client = redis.Redis.from_url(redis_url)
    index_keys = redis_engine.keys.index.all
    written = [key for key in index_keys if client.exists(key)]
    assert len(written) == 3, "active, error and totals are written"
    for key in written:
        assert 0 < client.pttl(key) <= 2000, key
    assert await _listed(redis_engine) == {"short", "short-running"}
    time.sleep(2.3)
    assert [key for key in index_keys if client.exists(key)] == []
    assert client.exists(redis_engine.keys.snapshot("short")) == 0
    assert await _listed(redis_engine) == set()
    client.close()


async def test_an_entry_whose_session_data_is_gone_is_dropped(redis_engine: RedisEngine, redis_url: str) -> None:
    for session_id in ("kept", "lost"):
        await redis_engine.publish(EventDraft(session_id, 1, 3))
    client = redis.Redis.from_url(redis_url)
    client.delete(redis_engine.keys.snapshot("lost"))  # evicted, or expired before the index noticed
    assert await _listed(redis_engine) == {"kept"}
    assert await _listed(redis_engine, "running") == {"kept"}
    assert client.zscore(redis_engine.keys.index.group("active"), "lost") is None, "dropped, not skipped"
    client.close()


async def test_the_memory_engine_drops_the_entry_of_an_expired_session() -> None:
    engine = MemoryEngine(ttl=1)
    engine.publish_now(EventDraft("gone-soon", 1, 3))
    assert await _listed(engine) == {"gone-soon"}
    await asyncio.sleep(1.1)
    engine.publish_now(EventDraft("fresh", 1, 3))
    assert await _listed(engine) == {"fresh"}
    assert await engine.index.members(None, None, 10) == [("fresh", engine.index._members["fresh"].last_event_ms)]


async def test_the_memory_engine_starts_an_expired_session_id_afresh() -> None:
    engine = MemoryEngine(ttl=1)
    engine.publish_now(EventDraft("again", 1, 3))
    await asyncio.sleep(1.1)
    engine.publish_now(EventDraft("again", 2, 3))  # its data expired: a new session, not a step of the old one
    (entry,) = await engine.index.entries(["again"])
    assert entry is not None and entry.durations == []


@pytest.fixture(scope="module")
def cluster() -> object:
    nodes = RedisClusterNodes()
    nodes.start()
    yield nodes
    nodes.stop()


async def test_a_cluster_keeps_one_index_for_sessions_on_every_master(cluster: RedisClusterNodes) -> None:
    prefix = _prefix()
    engine = RedisClusterEngine(cluster.url, prefix=prefix)
    sink = RedisSink(cluster.url, prefix, history=100, ttl=3600)  # a tracker writing to the cluster directly
    sessions = [session_id_on_shard(shard) for shard in (0, 1, 2)]
    try:
        for session_id in sessions:
            await engine.publish(EventDraft(session_id, 1, 2))
        sink.send(EventDraft(sessions[0], 2, 2, status="success"))
        tracker_only = session_id_on_shard(1)
        sink.send(EventDraft(tracker_only, 1, 2))
        assert await _listed(engine, "running") == {sessions[1], sessions[2], tracker_only}
        assert await _listed(engine, "success") == {sessions[0]}
        assert (await engine.index.totals())["finished:success"] == 1
        # The index keys share one slot, so one script can update them all.
        assert len({key_slot(key.encode()) for key in engine.keys.index.all}) == 1
    finally:
        sink.close()
        await engine.close()
