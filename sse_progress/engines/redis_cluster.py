"""The Redis Cluster engine: the Redis engine's scripts and key layout, over redis-py's cluster client.

Chosen by ``redis+cluster://host:port`` (``rediss+cluster://`` for TLS); any node will do as the seed, the
client discovers the others. Every key of a session carries the session id as a hash tag, so each script runs
on the one master that owns the session's slot. Events are announced with sharded Pub/Sub: the publish script
``SPUBLISH``es on the session's channel, which only the owning shard carries, where a ``PUBLISH`` would be
broadcast to every node of the cluster. Needs Redis >= 7.0 (the single-Redis engine keeps ``PUBLISH`` and runs
on older servers).

Connections per process: at most ``pool_size`` commands in flight at once across the cluster, so at most that
many command connections per master (a semaphore makes a burst of commands queue, as the single-Redis engine's
blocking pool does), plus one Pub/Sub connection per master that
owns a followed session (see ``redis_cluster_feed``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError, SlotNotCoveredError

from ..events import EventDraft, EventId
from .base import Feed, MessageHandler, Page, Published, ResyncHandler, SessionView
from .cluster_url import node_url
from .redis import (
    READ_SCRIPT,
    SESSION_PUBLISH_SCRIPT,
    RedisEngine,
    RedisKeys,
    connection_options,
    publish_arguments,
    published_outcome,
    raise_if_full,
)
from .redis_cluster_feed import RedisClusterFeed
from .redis_errors import unavailable_because
from .redis_index import INDEX_KEY_COUNT, INDEX_SCRIPT, RedisIndex, index_arguments

UNAVAILABLE = (RedisError, RedisClusterException)


def _sharded(script: str) -> str:
    announcement = "redis.call('PUBLISH', channel, envelope)"
    if script.count(announcement) != 1:
        raise RuntimeError("the publish script no longer announces with exactly one PUBLISH; update the cluster one")
    return script.replace(announcement, "redis.call('SPUBLISH', channel, envelope)")


CLUSTER_PUBLISH_SCRIPT = _sharded(SESSION_PUBLISH_SCRIPT)


class ClusterTopology:
    """Which master owns a slot, from the cluster client's slot map; refreshed when a shard reports a change."""

    def __init__(self, cluster: RedisCluster, commands: asyncio.Semaphore) -> None:
        self._cluster = cluster
        self._commands = commands

    async def owner(self, key: bytes) -> tuple[str, int]:
        await self._cluster.initialize()  # a no-op once the slot map is loaded
        node = self._cluster.get_node_from_key(key.decode())
        if node is None:
            raise SlotNotCoveredError(f"no master owns the slot of {key!r}")
        return node.host, int(node.port)

    def masters(self) -> set[tuple[str, int]]:
        return {(node.host, int(node.port)) for node in self._cluster.get_primaries()}

    async def refresh(self) -> None:
        # Counted as a command: the refresh borrows a connection from a node's pool.
        async with self._commands:
            await self._cluster.nodes_manager.initialize()


class RedisClusterEngine(RedisEngine):
    """``RedisEngine`` over a cluster: the same reads and writes, routed by slot; sharded Pub/Sub."""

    name = "redis-cluster"

    def __init__(
        self,
        url: str,
        prefix: str = "rpa",
        history: int = 1000,
        ttl: int = 86400,
        pool_size: int = 2,
        verify_tls: bool = True,
    ) -> None:
        # Not RedisEngine.__init__: that builds a single-node client. Reads and writes are inherited.
        self.url = node_url(url)
        self.keys = RedisKeys(prefix)
        self.history = history
        self.ttl = ttl
        self._options = connection_options(self.url, verify_tls)
        self.cluster = RedisCluster.from_url(self.url, max_connections=pool_size, **self._options)
        self._commands = asyncio.Semaphore(pool_size)
        self._full = False
        self.topology = ClusterTopology(self.cluster, self._commands)
        self._publish = self.cluster.register_script(CLUSTER_PUBLISH_SCRIPT)
        self._read = self.cluster.register_script(READ_SCRIPT)
        self._index_update = self.cluster.register_script(INDEX_SCRIPT)
        self.index = RedisIndex(self.cluster, self.keys.index, self.keys.snapshot, self.keys.meta)

    async def publish(self, draft: EventDraft) -> Published:
        keys, args = publish_arguments(self.keys, draft, self.history, self.ttl)
        async with self._commands:
            try:
                outcome = await self._publish(keys=keys[:-INDEX_KEY_COUNT], args=args)
                index_args = index_arguments(args, outcome)
                if index_args is not None:
                    await self._index_update(keys=keys[-INDEX_KEY_COUNT:], args=index_args)
            except UNAVAILABLE as error:  # e.g. the slot is not covered while a master fails over
                raise unavailable_because(error) from error
        return published_outcome(draft.session_id, outcome)

    async def read(self, session_id: str, after: EventId | None, page: Page | None = None) -> SessionView:
        async with self._commands:
            try:
                return await super().read(session_id, after, page)
            except RedisClusterException as error:
                raise unavailable_because(error) from error

    def open_feed(self, on_message: MessageHandler, on_resync: ResyncHandler) -> Feed:
        return RedisClusterFeed(self.url, self._options, self.keys, self.topology, on_message, on_resync)

    async def ping(self) -> None:
        """Every master must answer: a session on a silent one could neither publish nor be read."""
        async with self._commands:
            try:
                by_node: dict[str, dict[str, Any]] = await self.cluster.info(
                    "memory", target_nodes=RedisCluster.PRIMARIES
                )
            except UNAVAILABLE as error:
                raise unavailable_because(error) from error
        for memory in by_node.values():
            raise_if_full(memory)

    async def verify(self) -> None:
        return None  # a cluster is what the URL says

    async def stats(self) -> dict[str, Any]:
        async with self._commands:
            try:
                by_node: dict[str, dict[str, Any]] = await self.cluster.info(target_nodes=RedisCluster.PRIMARIES)
            except UNAVAILABLE as error:
                raise unavailable_because(error) from error
        totals: dict[str, Any] = {"masters": len(by_node)}
        for field in ("connected_clients", "used_memory", "keyspace_hits", "keyspace_misses"):
            totals[field] = sum(int(info.get(field, 0)) for info in by_node.values())
        return totals

    async def close(self) -> None:
        await self.cluster.aclose()
