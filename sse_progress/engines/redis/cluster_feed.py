"""Sharded Pub/Sub for the cluster engine: one connection per master, reconnected by us, never silently.

A session's channel (``rpa:session:{sid}``) lives in the slot of its hash tag, and only the master that owns that
slot accepts its ``SSUBSCRIBE``. The feed keeps one Pub/Sub connection per master that owns a followed session (a
``ShardSubscription``), each under the single-Redis feed's rules: no silent reconnect, a resync after every
reconnect, an idle ping.

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
import contextlib
import logging
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from sse_progress.engines.base import Feed, MessageHandler, ResyncHandler
from sse_progress.engines.redis.cluster_url import node_url
from sse_progress.engines.redis.feed import backoff, next_message, stop_reader

if TYPE_CHECKING:
    from sse_progress.engines.redis.scripts import RedisKeys

log = logging.getLogger("sse_progress.feed")

TOPOLOGY_ERRORS = (RedisError, RedisClusterException, OSError)

Address = tuple[str, int]
WaiterGroup = list["asyncio.Future[None]"]


class Topology(Protocol):
    async def owner(self, key: bytes) -> Address: ...

    def masters(self) -> set[Address]: ...

    async def refresh(self) -> None: ...


class ShardMoved(Exception):
    """Redis unsubscribed a followed channel on its own: the channel's slot now lives on another master."""


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
        # Only the session's own shard matters, once it has lost its connection (a first connect is no fault).
        shard = self._home.get(session_id)
        return shard.problem if shard is not None and shard.interrupted else None

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

    def retire_if_idle(self, shard: ShardSubscription) -> bool:
        """Called by a shard whose connection failed: True if it should stop (no sessions, no longer a master)."""
        if shard.sessions or shard.address in self._topology.masters():
            return False
        if self._shards.get(shard.address) is shard:
            del self._shards[shard.address]
        return True

    def _retire(self, shard: ShardSubscription) -> None:
        del self._shards[shard.address]
        task = asyncio.get_running_loop().create_task(shard.close())
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    def _shard(self, address: Address) -> ShardSubscription:
        shard = self._shards.get(address)
        if shard is None:
            host, port = address
            client = aioredis.Redis.from_url(
                node_url(self._url, host, port), retry=Retry(NoBackoff(), 0), **self._options
            )
            shard = self._shards[address] = ShardSubscription(self, address, client, self._keys)
        return shard


def _merged(groups: Iterable[WaiterGroup]) -> WaiterGroup:
    return [future for group in groups for future in group]


class ShardSubscription:
    """The Pub/Sub connection to one master and the sessions it carries for this process."""

    def __init__(self, feed: RedisClusterFeed, address: Address, client: aioredis.Redis, keys: RedisKeys) -> None:
        self.address = address
        self.sessions: set[str] = set()
        self.connected = False
        self.problem: str | None = f"connecting to redis shard {address[0]}:{address[1]} pub/sub"
        self.interrupted = False  # the connection was lost and is not back yet
        self._feed = feed
        self._client = client
        self._keys = keys
        self._pubsub: PubSub | None = None
        # One group of futures per SSUBSCRIBE sent for a channel; each acknowledgement completes the oldest.
        self._waiters: dict[str, deque[WaiterGroup]] = {}
        # SUNSUBSCRIBEs sent and not yet acknowledged, per session: any other sunsubscribe means the slot moved.
        self._leaving: dict[str, int] = {}
        # Sessions whose subscription must be acknowledged before readers are told to resync.
        self._resync_due: set[str] = set()
        self._resync_wanted = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sse-progress-shard-{address[1]}")

    async def subscribe(self, session_id: str) -> None:
        """Returns once the master acknowledged the subscription."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._enlist(session_id, [future])
        await future

    async def adopt(self, session_id: str, waiters: WaiterGroup) -> None:
        """Take over a session whose slot moved here: subscribe, then have readers resync (events may be missed)."""
        self._resync_due.add(session_id)
        self._resync_wanted = True
        await self._enlist(session_id, waiters)

    def release(self, session_id: str) -> WaiterGroup:
        """Forget a session that moved to another master; returns its pending waiters for the new owner.

        Nothing is sent: this node no longer owns the slot and would answer ``SUNSUBSCRIBE`` with ``MOVED``.
        """
        self.sessions.discard(session_id)
        self._leaving.pop(session_id, None)
        waiters = _merged(self._waiters.pop(session_id, ()))
        self._resync_acknowledged(session_id)
        return [future for future in waiters if not future.done()]

    async def unsubscribe(self, session_id: str) -> None:
        self.sessions.discard(session_id)
        self._resync_acknowledged(session_id)
        pubsub = self._pubsub
        if pubsub is not None and self.connected:
            self._leaving[session_id] = self._leaving.get(session_id, 0) + 1
            with contextlib.suppress(RedisError, OSError):
                await pubsub.sunsubscribe(self._keys.channel(session_id))

    async def close(self) -> None:
        await stop_reader(self._task, self._waiters, self._client)

    async def _enlist(self, session_id: str, futures: WaiterGroup) -> None:
        self.sessions.add(session_id)
        groups = self._waiters.setdefault(session_id, deque())
        pubsub = self._pubsub
        if pubsub is not None and self.connected:
            groups.append(futures)
            # On failure the loop reconnects and subscribes every session it carries.
            with contextlib.suppress(RedisError, OSError):
                await pubsub.ssubscribe(self._keys.channel(session_id))
        elif groups:
            groups[-1].extend(futures)
        else:
            groups.append(futures)

    async def _run(self) -> None:
        failures = 0
        first = True
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.connect()  # type: ignore[no-untyped-call, unused-ignore]  # untyped before redis-py 8.2
                carried = self._take_over_waiters()
                self._pubsub = pubsub
                self.connected = True  # from here on, a new session sends its own SSUBSCRIBE
                if not first:
                    self._resync_due = set(carried)
                    self._resync_wanted = True
                    log.warning("redis shard %s:%s pub/sub reconnected; resyncing open streams", *self.address)
                # One SSUBSCRIBE per session: channels of different slots in one command are refused (CROSSSLOT).
                for session_id in carried:
                    await pubsub.ssubscribe(self._keys.channel(session_id))
                first = False
                failures = 0
                self.problem = None
                self.interrupted = False
                self._resync_acknowledged(None)
                await self._read(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.connected = False
                self._pubsub = None
                self.interrupted = True
                failures += 1
                where = "redis shard {}:{} pub/sub".format(*self.address)
                if isinstance(error, (RedisError, OSError, ShardMoved)):
                    self.problem = f"{where} interrupted ({error}); reconnecting"
                    log.warning("%s interrupted (%s)", where, error)
                else:
                    # Whatever ended the reader, live delivery must not end with it: start again and resync.
                    self.problem = f"{where} reader failed ({error!r}); restarting"
                    log.error("%s reader failed; restarting it and resyncing open streams", where, exc_info=error)
                await self._feed.relocate(self)
                if self._feed.retire_if_idle(self):
                    await self._client.aclose()
                    return
                await asyncio.sleep(backoff(failures))
            finally:
                self.connected = False
                self._pubsub = None
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # untyped before redis-py 8.2

    def _take_over_waiters(self) -> list[str]:
        """The sessions to subscribe on a new connection, each with one group: every waiter of that session."""
        carried = list(self.sessions)
        waiters = self._waiters
        self._waiters = {session_id: deque([_merged(waiters.pop(session_id, ()))]) for session_id in carried}
        for groups in waiters.values():  # sessions removed while disconnected
            for future in _merged(groups):
                future.cancel()
        self._leaving.clear()
        return carried

    async def _read(self, pubsub: PubSub) -> None:
        while True:
            message = await next_message(pubsub, "redis shard pub/sub connection")
            kind = message["type"]
            if kind == "smessage":
                session_id = self._keys.session_of(message["channel"])
                if session_id is not None:
                    self._feed.on_message(session_id, message["data"])
            elif kind == "ssubscribe":
                self._acknowledge(message["channel"])
            elif kind == "sunsubscribe":
                self._unsubscribed(message["channel"])

    def _acknowledge(self, channel: bytes) -> None:
        session_id = self._keys.session_of(channel)
        if session_id is None:
            return
        groups = self._waiters.get(session_id)
        if groups:
            for future in groups.popleft():
                if not future.done():
                    future.set_result(None)
            if not groups:
                del self._waiters[session_id]
        self._resync_acknowledged(session_id)

    def _unsubscribed(self, channel: bytes) -> None:
        session_id = self._keys.session_of(channel)
        if session_id is None:
            return
        pending = self._leaving.get(session_id, 0)
        if pending > 1:
            self._leaving[session_id] = pending - 1
        elif pending == 1:
            del self._leaving[session_id]
        elif session_id in self.sessions:
            raise ShardMoved(f"slot of session {session_id} left {self.address[0]}:{self.address[1]}")

    def _resync_acknowledged(self, session_id: str | None) -> None:
        if session_id is not None:
            self._resync_due.discard(session_id)
        if self._resync_wanted and not self._resync_due and self.connected:
            self._resync_wanted = False
            self._feed.on_resync()
