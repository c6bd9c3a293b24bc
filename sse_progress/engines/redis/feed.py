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
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from sse_progress.engines.base import Feed, MessageHandler, ResyncHandler

if TYPE_CHECKING:
    from sse_progress.engines.redis.scripts import RedisKeys

log = logging.getLogger("sse_progress.feed")

IDLE_PING_SECONDS = 10.0
# Short: reconnecting costs one connection attempt per process, and every watcher waits for it.
MAX_BACKOFF_SECONDS = 2.0
MIN_RETRY_GAP = 0.1


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
        self._problem: str | None = "connecting to redis pub/sub"
        # Set by a new watcher while the connection is down: try again now rather than at the end of the backoff,
        # so a stream opened right after Redis came back is served instead of told to retry.
        self._retry_now = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sse-progress-feed")

    @property
    def problem(self) -> str | None:
        return self._problem

    async def add(self, session_id: str) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wanted.add(session_id)
        if not self.connected:
            self._retry_now.set()
        groups = self._waiters.setdefault(session_id, deque())
        pubsub = self._pubsub
        sends = pubsub is not None and self.connected
        if sends or not groups:
            groups.append([future])
        else:
            groups[-1].append(future)  # one SUBSCRIBE on reconnect serves every waiter of the session
        group = groups[-1]
        try:
            if sends:
                assert pubsub is not None
                # On failure the reader reconnects and subscribes every wanted session.
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.subscribe(self._keys.channel(session_id))
            await future
        finally:
            # A caller that gave up (its timeout) leaves no waiter behind. The group stays, even empty: it
            # stands for a SUBSCRIBE whose acknowledgement is still to come.
            if not future.done() or future.cancelled():
                with contextlib.suppress(ValueError):
                    group.remove(future)

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
                self._take_over_waiters()
                wanted = [self._keys.channel(s) for s in self._wanted]
                self.connected = True  # from here on, a session added sends its own SUBSCRIBE
                if wanted:
                    await pubsub.subscribe(*wanted)
                self._problem = None
                if not first:
                    log.warning("redis pub/sub reconnected; resyncing open streams")
                    self._on_resync()
                first = False
                failures = 0
                await self._read(pubsub)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as error:
                failures += 1
                delay = backoff(failures)
                self._problem = f"redis pub/sub connection lost ({error}); reconnecting"
                log.warning("redis pub/sub connection lost (%s); retrying in %.2fs", error, delay)
                await self._pause(delay)
            except Exception as error:
                # Whatever ended the reader, live delivery must not end with it: start again and resync.
                failures += 1
                self._problem = f"redis pub/sub reader failed ({error!r}); restarting"
                log.error("redis pub/sub reader failed; restarting it and resyncing open streams", exc_info=error)
                await self._pause(backoff(failures))
            finally:
                self.connected = False
                self._pubsub = None
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # untyped before redis-py 8.2

    async def _pause(self, delay: float) -> None:
        """The backoff before the next attempt, cut short when a new watcher asks (never under MIN_RETRY_GAP:
        a burst of new watchers during an outage costs one attempt per gap, not one each)."""
        self._retry_now.clear()
        await asyncio.sleep(min(delay, MIN_RETRY_GAP))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._retry_now.wait(), max(0.0, delay - MIN_RETRY_GAP))

    def _take_over_waiters(self) -> None:
        """On a new connection, one SUBSCRIBE per wanted session serves all its waiters: one group each.

        Waiters of sessions no longer wanted get no SUBSCRIBE, so no acknowledgement: they are dropped, or the
        next acknowledgement of their session would complete them instead of the subscription it answers.
        """
        waiters, self._waiters = self._waiters, {}
        for session_id, groups in waiters.items():
            merged = [future for group in groups for future in group]
            if session_id in self._wanted:
                self._waiters[session_id] = deque([merged])
            else:
                for future in merged:
                    future.cancel()

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


def backoff(failures: int) -> float:
    """Seconds before reconnection attempt ``failures``: exponential, capped, jittered."""
    return min(MAX_BACKOFF_SECONDS, 0.1 * 2.0**failures) * (0.5 + random.random() / 2)


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
        message: dict[str, Any] | None = await pubsub.get_message(timeout=IDLE_PING_SECONDS)
        if message is not None:
            return message
        if waiting_for_pong:
            raise ConnectionError(f"{what} is not answering")
        await pubsub.ping()
        waiting_for_pong = True
