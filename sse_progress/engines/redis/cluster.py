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

from sse_progress.engines.base import Feed, MessageHandler, Page, Published, ResyncHandler, SessionView
from sse_progress.engines.redis.cluster_feed import RedisClusterFeed
from sse_progress.engines.redis.cluster_url import node_url
from sse_progress.engines.redis.engine import RedisEngine, raise_if_full
from sse_progress.engines.redis.errors import unavailable_because
from sse_progress.engines.redis.index import INDEX_KEY_COUNT, INDEX_SCRIPT, index_arguments
from sse_progress.engines.redis.scripts import (
    CLUSTER_PUBLISH_SCRIPT,
    publish_arguments,
    published_outcome,
)
from sse_progress.protocol.events import EventDraft, EventId

UNAVAILABLE = (RedisError, RedisClusterException)


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
    publish_script = CLUSTER_PUBLISH_SCRIPT

    def _connect(self, pool_size: int) -> RedisCluster:
        self.url = node_url(self.url)  # redis+cluster://host:port names the seed node
        self.cluster = RedisCluster.from_url(self.url, max_connections=pool_size, **self._options)
        self._index_update = self.cluster.register_script(INDEX_SCRIPT)
        self._commands = asyncio.Semaphore(pool_size)
        self.topology = ClusterTopology(self.cluster, self._commands)
        return self.cluster

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
