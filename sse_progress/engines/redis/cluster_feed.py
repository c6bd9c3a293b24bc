"""Sharded Pub/Sub for the cluster engine: one connection per master, reconnected by us, never silently.

A session's channel (``rpa:session:{sid}``) lives in the slot of its hash tag, and only the master that owns that
slot accepts its ``SSUBSCRIBE``. The feed keeps one Pub/Sub connection per master that owns a followed session: a
``ShardSubscription`` (``SSUBSCRIBE``), the class the single-Redis feed uses once, so each connection keeps the same
rules: no silent reconnect, a resync after every reconnect, an idle ping, a new watcher cutting a backoff short.

Slots move (resharding, failover). A shard learns it from a connection that fails, from a ``MOVED`` reply to
``SSUBSCRIBE``, or from the ``sunsubscribe`` Redis sends when the slot of a subscribed channel leaves its node.
The feed then refreshes the slot map, moves each displaced session to its new owner, and calls ``on_resync``
once the new subscriptions are acknowledged, so readers re-read what was published meanwhile.

redis-py's own asyncio ``ClusterPubSub`` (redis-py >= 8) is not used: it reconnects and moves subscriptions
without a word (messages published meanwhile are lost silently), and it polls its per-node connections in turn,
so a quiet node delays the messages of a busy one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

from redis.exceptions import RedisClusterException, RedisError

from sse_progress.cancellation import raise_if_cancelled
from sse_progress.engines.base import Feed, MessageHandler, ResyncHandler
from sse_progress.engines.redis.cluster_url import node_url
from sse_progress.engines.redis.subscription import Address, ShardSubscription, backoff, client_without_retries

if TYPE_CHECKING:
    from sse_progress.engines.redis.scripts import RedisKeys

log = logging.getLogger("sse_progress.feed")

TOPOLOGY_ERRORS = (RedisError, RedisClusterException, OSError)


class Topology(Protocol):
    async def owner(self, key: bytes) -> Address: ...

    def masters(self) -> set[Address]: ...

    async def refresh(self) -> None: ...


class RedisClusterFeed(Feed):
    def __init__(
        self,
        url: str,
        options: dict[str, Any],
        keys: RedisKeys,
        topology: Topology,
        on_message: MessageHandler,
        on_resync: ResyncHandler,
    ) -> None:
        self._url = url
        self._options = options
        self._keys = keys
        self._topology = topology
        self.on_message = on_message
        self.on_resync = on_resync
        self._shards: dict[Address, ShardSubscription] = {}
        self._home: dict[str, ShardSubscription] = {}
        self._relocating = asyncio.Lock()
        self._closers: set[asyncio.Task[None]] = set()

    async def add(self, session_id: str) -> None:
        channel = self._keys.channel(session_id)
        failures = 0
        while True:
            try:
                address = await self._topology.owner(channel)
                break
            except TOPOLOGY_ERRORS as error:
                raise_if_cancelled()
                # The hub gives up after its own timeout; until then, wait for the cluster to answer.
                failures += 1
                log.warning("no owner known for session %s (%s); retrying", session_id, error)
                await asyncio.sleep(backoff(failures))
        shard = self._home[session_id] = self._shard(address)
        await shard.subscribe(session_id)

    @property
    def problem(self) -> str | None:
        for shard in self._shards.values():
            if shard.problem is not None:
                return shard.problem
        return None

    def problem_for(self, session_id: str) -> str | None:
        # Only the session's own shard matters.
        shard = self._home.get(session_id)
        return shard.problem_for(session_id) if shard is not None else None

    async def remove(self, session_id: str) -> None:
        shard = self._home.pop(session_id, None)
        if shard is not None:
            await shard.unsubscribe(session_id)

    async def close(self) -> None:
        await asyncio.gather(*self._closers, return_exceptions=True)
        for shard in list(self._shards.values()):
            await shard.close()
        self._shards.clear()

    async def relocate(self, caller: ShardSubscription) -> None:
        """Refresh the slot map; move every session whose slot changed owner; drop connections to former masters."""
        async with self._relocating:
            try:
                await self._topology.refresh()
            except TOPOLOGY_ERRORS as error:
                log.warning("could not refresh the cluster's slot map (%s)", error)
                return
            for session_id, shard in list(self._home.items()):
                try:
                    address = await self._topology.owner(self._keys.channel(session_id))
                except TOPOLOGY_ERRORS:
                    continue  # slot uncovered for now: the session stays where it was until the next refresh
                if address == shard.address or self._home.get(session_id) is not shard:
                    continue  # in place, or removed or moved while this loop awaited
                target = self._shard(address)
                self._home[session_id] = target
                await target.adopt(session_id, shard.release(session_id))
            masters = self._topology.masters()
            for address, shard in list(self._shards.items()):
                if shard is not caller and not shard.sessions and address not in masters:
                    self._retire(shard)

    async def lost(self, shard: ShardSubscription) -> bool:
        """A shard's connection failed: its slots may have moved. True if it should stop (no sessions, no longer a
        master)."""
        await self.relocate(shard)
        if shard.sessions or shard.address in self._topology.masters():
            return False
        self._forget(shard)
        return True

    def _forget(self, shard: ShardSubscription) -> None:
        self._shards = {address: each for address, each in self._shards.items() if each is not shard}

    def _retire(self, shard: ShardSubscription) -> None:
        self._forget(shard)
        task = asyncio.get_running_loop().create_task(shard.close())
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    def _shard(self, address: Address) -> ShardSubscription:
        shard = self._shards.get(address)
        if shard is None:
            host, port = address
            client = client_without_retries(node_url(self._url, host, port), self._options)
            shard = self._shards[address] = ShardSubscription(self, client, self._keys, sharded=True, address=address)
        return shard
