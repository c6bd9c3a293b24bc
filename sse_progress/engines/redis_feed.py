"""One Pub/Sub connection per process, reconnected by us, never silently.

redis-py can reconnect a PubSub and resubscribe on its own, but messages published meanwhile are lost
without a word. This feed disables that: on any connection error it opens a fresh connection with backoff,
resubscribes every wanted session, and calls ``on_resync`` so readers re-read the streams they follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from .base import Feed, MessageHandler, ResyncHandler

if TYPE_CHECKING:
    from .redis import RedisKeys

log = logging.getLogger("sse_progress.feed")

IDLE_PING_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 5.0


class RedisFeed(Feed):
    def __init__(
        self,
        url: str,
        options: dict[str, Any],
        keys: RedisKeys,
        on_message: MessageHandler,
        on_resync: ResyncHandler,
    ) -> None:
        self._client = aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)
        self._keys = keys
        self._on_message = on_message
        self._on_resync = on_resync
        self._wanted: set[str] = set()
        # One group of futures per SUBSCRIBE sent for a channel; each acknowledgement completes the oldest.
        self._waiters: dict[str, deque[list[asyncio.Future[None]]]] = {}
        self._pubsub: PubSub | None = None
        self.connected = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sse-progress-feed")

    async def add(self, session_id: str) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wanted.add(session_id)
        groups = self._waiters.setdefault(session_id, deque())
        pubsub = self._pubsub
        if pubsub is not None and self.connected:
            groups.append([future])
            # On failure the reader reconnects and subscribes every wanted session.
            with contextlib.suppress(RedisError, OSError):
                await pubsub.subscribe(self._keys.channel(session_id))
        elif groups:
            groups[-1].append(future)
        else:
            groups.append([future])
        await future

    async def remove(self, session_id: str) -> None:
        self._wanted.discard(session_id)
        pubsub = self._pubsub
        if pubsub is not None and self.connected:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.unsubscribe(self._keys.channel(session_id))

    async def close(self) -> None:
        await stop_reader(self._task, self._waiters, self._client)

    async def _run(self) -> None:
        failures = 0
        first = True
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._keys.control_channel)
                self._pubsub = pubsub
                # Every pending waiter is now served by this connection's single SUBSCRIBE per session.
                for groups in self._waiters.values():
                    merged = [future for group in groups for future in group]
                    groups.clear()
                    if merged:
                        groups.append(merged)
                wanted = [self._keys.channel(s) for s in self._wanted]
                if wanted:
                    await pubsub.subscribe(*wanted)
                self.connected = True
                if not first:
                    log.warning("redis pub/sub reconnected; resyncing open streams")
                    self._on_resync()
                first = False
                failures = 0
                await self._read(pubsub)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as error:
                self.connected = False
                failures += 1
                delay = min(MAX_BACKOFF_SECONDS, 0.1 * 2**failures) * (0.5 + random.random() / 2)
                log.warning("redis pub/sub connection lost (%s); retrying in %.2fs", error, delay)
                await asyncio.sleep(delay)
            finally:
                self.connected = False
                self._pubsub = None
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    async def _read(self, pubsub: PubSub) -> None:
        while True:
            message = await next_message(pubsub, "redis pub/sub connection")
            kind = message["type"]
            if kind == "message":
                session_id = self._keys.session_of(message["channel"])
                if session_id is not None:
                    self._on_message(session_id, message["data"])
            elif kind == "subscribe":
                self._acknowledge(message["channel"])

    def _acknowledge(self, channel: bytes) -> None:
        session_id = self._keys.session_of(channel)
        groups = self._waiters.get(session_id) if session_id else None
        if not groups:
            return
        for future in groups.popleft():
            if not future.done():
                future.set_result(None)
        if not groups and session_id is not None:
            del self._waiters[session_id]


async def stop_reader(
    task: asyncio.Task[None], waiters: Mapping[str, Iterable[list[asyncio.Future[None]]]], client: aioredis.Redis
) -> None:
    """Stop a feed's reader task, fail every subscription still waiting for its acknowledgement, and close."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    for groups in waiters.values():
        for group in groups:
            for future in group:
                future.cancel()
    await client.aclose()


async def next_message(pubsub: PubSub, what: str) -> dict[str, Any]:
    """The next Pub/Sub message. An idle connection is pinged; a ping left unanswered means it is dead, which
    TCP alone may take many minutes to notice."""
    waiting_for_pong = False
    while True:
        message = await pubsub.get_message(timeout=IDLE_PING_SECONDS)
        if message is not None:
            return message
        if waiting_for_pong:
            raise ConnectionError(f"{what} is not answering")
        await pubsub.ping()
        waiting_for_pong = True
