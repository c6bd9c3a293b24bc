"""The Redis engine: a stream per session (history), a snapshot key (polling), Pub/Sub (live push).

The scripts and the key layout it runs them with are in ``scripts.py``, shared with the publisher.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import OutOfMemoryError, RedisError

from sse_progress.engines.base import (
    Engine,
    EngineFull,
    EngineMisconfigured,
    EngineUnavailable,
    EngineWrongKind,
    Feed,
    MessageHandler,
    Page,
    Published,
    ResyncHandler,
    SessionView,
    outlived,
)
from sse_progress.engines.foreign import FOREIGN
from sse_progress.engines.redis.errors import unavailable_because
from sse_progress.engines.redis.feed import RedisFeed
from sse_progress.engines.redis.index import RedisIndex
from sse_progress.engines.redis.scripts import (
    PUBLISH_SCRIPT,
    READ_SCRIPT,
    RedisKeys,
    connection_options,
    publish_arguments,
    published_outcome,
)
from sse_progress.protocol.events import EventDraft, EventId, format_event_id, parse_event_id, with_id
from sse_progress.protocol.frames import ForeignEnvelope, parse_envelope

log = logging.getLogger("sse_progress.engine")


class RedisEngine(Engine):
    name = "redis"
    publish_script = PUBLISH_SCRIPT  # the cluster engine's announces with SPUBLISH and leaves out the index

    def __init__(
        self,
        url: str,
        prefix: str = "rpa",
        history: int = 1000,
        ttl: int = 86400,
        pool_size: int = 2,
        verify_tls: bool = True,
    ) -> None:
        self.url = url
        self.keys = RedisKeys(prefix)
        self.history = history
        self.ttl = ttl
        self._options = connection_options(url, verify_tls)
        self._full = False  # the last publish was refused for want of memory (logged once until one succeeds)
        self._wrong_kind_logged = False  # a cluster node found after startup is logged once
        scripts_run_on = self._connect(pool_size)
        self._publish = scripts_run_on.register_script(self.publish_script)
        self._read = scripts_run_on.register_script(READ_SCRIPT)
        self.index = RedisIndex(scripts_run_on, self.keys.index, self.keys.snapshot, self.keys.meta)

    def _connect(self, pool_size: int) -> Any:
        """The client the scripts run on: one Redis here (the cluster engine's routes each key by its slot)."""
        # A small blocking pool queues a burst of readers instead of failing past max_connections. A command
        # that meets a dead connection (Redis restarted) is sent once more, on a new one: no request fails.
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url, max_connections=pool_size, timeout=10, retry=Retry(NoBackoff(), 1), **self._options
        )
        self.client = aioredis.Redis(connection_pool=pool)
        self._verified = False  # verify() found a single Redis, not a cluster node
        return self.client

    async def publish(self, draft: EventDraft) -> Published:
        keys, args = publish_arguments(self.keys, draft, self.history, self.ttl)
        try:
            outcome = await self._publish(keys=keys, args=args)
        except OutOfMemoryError as error:
            if not self._full:
                self._full = True
                log.error("redis refuses every event: %s; free memory or raise maxmemory", FULL)
            raise EngineFull(FULL) from error
        except RedisError as error:
            raise await self._unavailable(error) from error
        if self._full:
            self._full = False
            log.warning("redis stores events again")
        return published_outcome(draft.session_id, outcome)

    async def read(self, session_id: str, after: EventId | None, page: Page | None = None) -> SessionView:
        if after is None:
            argument = ""
        elif after == (0, 0):
            argument = "-"
        else:
            argument = format_event_id(after)
        try:
            limits = [] if page is None else [page.max_bytes, page.max_events]
            snapshot, marker, entries, *more = await self._read(
                keys=[self.keys.stream(session_id), self.keys.snapshot(session_id)], args=[argument, *limits]
            )
        except RedisError as error:
            raise await self._unavailable(error) from error
        if not snapshot or not _written_by_us(session_id, snapshot):
            return SessionView(snapshot=None, expired=outlived(after, self.ttl))
        if after is None:
            return SessionView(snapshot)
        events = [with_id(fields[1], entry_id.decode()) for entry_id, fields in entries]
        return SessionView(snapshot, events, gap=_history_missing_after(marker, after), more=bool(more and more[0]))

    def open_feed(self, on_message: MessageHandler, on_resync: ResyncHandler) -> Feed:
        return RedisFeed(self.url, self._options, self.keys, on_message, on_resync)

    async def ping(self) -> None:
        """Redis answers, and would store an event (it answers PING even when it refuses every write)."""
        try:
            if not self._verified:
                await self.verify()
            memory = await self.client.info("memory")
        except RedisError as error:
            raise unavailable_because(error) from error
        except EngineMisconfigured as error:  # Redis was not reachable at startup to be verified then
            raise self._wrong_kind(error) from error
        raise_if_full(memory)

    async def _unavailable(self, error: RedisError) -> EngineUnavailable:
        """What a failed command means: the store unreachable, or — unchecked since startup — the wrong kind."""
        if not self._verified:
            try:
                await self.verify()
            except EngineMisconfigured as wrong:
                return self._wrong_kind(wrong)
            except EngineUnavailable:
                pass
        return unavailable_because(error)

    def _wrong_kind(self, error: EngineMisconfigured) -> EngineWrongKind:
        if not self._wrong_kind_logged:
            self._wrong_kind_logged = True
            log.error("the event store found after startup is misconfigured: %s", error)
        return EngineWrongKind(str(error))

    async def verify(self) -> None:
        """A cluster node answers single-node commands for its own slots only: every other session would fail."""
        try:
            info = await self.client.info("cluster")
        except RedisError as error:
            raise unavailable_because(error) from error
        if info.get("cluster_enabled") == 1:
            where = self.client.connection_pool.connection_kwargs
            raise EngineMisconfigured(
                f"the Redis at {where.get('host')}:{where.get('port')} is a Redis Cluster node, which serves the "
                "sessions of its own slots only: use a redis+cluster:// (or rediss+cluster://) URL"
            )
        self._verified = True

    async def stats(self) -> dict[str, Any]:
        try:
            info = await self.client.info()
        except RedisError as error:
            raise unavailable_because(error) from error
        return {
            "connected_clients": info.get("connected_clients"),
            "used_memory": info.get("used_memory"),
            "keyspace_hits": info.get("keyspace_hits"),
            "keyspace_misses": info.get("keyspace_misses"),
        }

    async def close(self) -> None:
        await self.client.aclose()
        await self.client.connection_pool.disconnect()


FULL = "event store is full: Redis used all its maxmemory and its policy is noeviction"


def raise_if_full(memory: Mapping[str, Any]) -> None:
    """Raise ``EngineFull`` if a Redis node with this ``INFO memory`` refuses writes (it does past maxmemory
    under noeviction; any other policy evicts keys instead)."""
    limit = int(memory.get("maxmemory", 0))
    if limit and memory.get("maxmemory_policy") == "noeviction" and int(memory.get("used_memory", 0)) > limit:
        raise EngineFull(FULL)


def _written_by_us(session_id: str, snapshot: bytes) -> bool:
    """A snapshot key holding anything else (another system's JSON) is as good as absent: no usable history."""
    try:
        parse_envelope(snapshot, session_id)
    except ForeignEnvelope as error:
        FOREIGN.skipped("snapshot", session_id, str(error))
        return False
    return True


def _history_missing_after(first_retained: bytes, after: EventId) -> bool:
    """Whether the retained history starts after ``after``, so that events after it may be missing."""
    first = parse_event_id(first_retained.decode())
    return first is None or first > after  # None: 'lost', the snapshot outlived its stream
