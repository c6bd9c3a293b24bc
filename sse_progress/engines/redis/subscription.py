"""One Pub/Sub connection, reconnected by us, never silently: used once by the single-Redis feed, once per master
by the cluster feed.

redis-py can reconnect a PubSub and resubscribe on its own, but messages published meanwhile are lost without a
word. A ``ShardSubscription`` disables that: on any error it opens a fresh connection with backoff, subscribes every
session it carries, and tells its owner to resync once those subscriptions are acknowledged, so readers re-read the
streams they follow. Whatever else ends its reader (a bug in the message path) is logged as an error and handled
the same way: live delivery does not end with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from sse_progress.cancellation import raise_if_cancelled
from sse_progress.engines.base import MessageHandler, ResyncHandler

if TYPE_CHECKING:
    from sse_progress.engines.redis.scripts import RedisKeys

log = logging.getLogger("sse_progress.feed")

IDLE_PING_SECONDS = 10.0
# Short: reconnecting costs one connection attempt per process, and every watcher waits for it.
MAX_BACKOFF_SECONDS = 2.0
# A burst of new watchers during an outage costs one connection attempt per gap, not one each.
MIN_RETRY_GAP = 0.1
# A new watcher makes a down connection retry at once, and right after Redis is back that retry succeeds: only a
# connection still down this long into a watcher's wait will not be back soon.
DOWN_GRACE_SECONDS = 0.5

Address = tuple[str, int]
WaiterGroup = list["asyncio.Future[None]"]


def client_without_retries(url: str, options: dict[str, Any]) -> aioredis.Redis:
    """A client that redis-py never reconnects or retries on its own: its owner reconnects, resubscribes and
    re-reads what was published meanwhile, which a silent reconnect would lose."""
    return aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)


class ShardMoved(Exception):
    """Redis unsubscribed a followed channel on its own: the channel's slot now lives on another master."""


class SubscriptionOwner(Protocol):
    """The feed a subscription works for: read at each use, so the feed may swap its handlers."""

    on_message: MessageHandler
    on_resync: ResyncHandler

    async def lost(self, subscription: ShardSubscription) -> bool:
        """The connection failed (``subscription.problem`` says why); True if the subscription should stop."""
        ...


class ShardSubscription:
    """One Pub/Sub connection and the sessions it carries for this process.

    ``sharded``: ``SSUBSCRIBE`` (a cluster master carries only the channels of its slots) rather than ``SUBSCRIBE``.
    ``address``: the master's, on a cluster; None for a single Redis.
    """

    def __init__(
        self,
        owner: SubscriptionOwner,
        client: aioredis.Redis,
        keys: RedisKeys,
        *,
        sharded: bool,
        address: Address | None = None,
    ) -> None:
        self.address = address
        self.name = "redis pub/sub" if address is None else f"redis shard {address[0]}:{address[1]} pub/sub"
        # Session → loop time it was asked for: the start of its wait, should the connection be down.
        self.sessions: dict[str, float] = {}
        self.connected = False
        self.problem: str | None = f"connecting to {self.name}"
        self._down_since: float | None = None  # the loop time an attempt first failed; None while connected
        self._owner = owner
        self._client = client
        self._keys = keys
        self._sharded = sharded
        self._pubsub: PubSub | None = None
        # One group of futures per subscribe command sent for a channel; each acknowledgement completes the oldest.
        self._waiters: dict[str, deque[WaiterGroup]] = {}
        # Unsubscribes sent and not yet acknowledged, per session: any other unsubscribe means the slot moved.
        self._leaving: dict[str, int] = {}
        # Sessions whose subscription must be acknowledged before readers are told to resync.
        self._resync_due: set[str] = set()
        self._resync_wanted = False
        # Set by a new watcher while the connection is down: try again now rather than at the end of the backoff,
        # so a stream opened right after Redis came back is served instead of told to retry.
        self._retry_now = asyncio.Event()
        port = "" if address is None else f"-{address[1]}"
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sse-progress-feed{port}")

    def problem_for(self, session_id: str) -> str | None:
        """Why the session's subscription will not come soon: the connection failed and has stayed down for
        ``DOWN_GRACE_SECONDS`` of the session's wait (which made it retry). None before that, or when not asked."""
        asked = self.sessions.get(session_id)
        if self._down_since is None or asked is None:
            return None
        down = asyncio.get_running_loop().time() - max(self._down_since, asked)
        return self.problem if down >= DOWN_GRACE_SECONDS else None

    async def subscribe(self, session_id: str) -> None:
        """Returns once Redis acknowledged the subscription."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        group = await self._enlist(session_id, [future])
        try:
            await future
        finally:
            # A caller that gave up (its timeout) leaves no waiter behind. The group stays, even empty: it stands
            # for a subscribe command whose acknowledgement is still to come.
            if not future.done() or future.cancelled():
                with contextlib.suppress(ValueError):
                    group.remove(future)

    async def adopt(self, session_id: str, waiters: WaiterGroup) -> None:
        """Take over a session whose slot moved here: subscribe, then have readers resync (events may be missed)."""
        self._resync_due.add(session_id)
        self._resync_wanted = True
        await self._enlist(session_id, waiters)

    def release(self, session_id: str) -> WaiterGroup:
        """Forget a session that moved to another master; returns its pending waiters for the new owner.

        Nothing is sent: this node no longer owns the slot and would answer ``SUNSUBSCRIBE`` with ``MOVED``.
        """
        self.sessions.pop(session_id, None)
        self._leaving.pop(session_id, None)
        waiters = _merged(self._waiters.pop(session_id, ()))
        self._resync_acknowledged(session_id)
        return [future for future in waiters if not future.done()]

    async def unsubscribe(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)
        self._resync_acknowledged(session_id)
        pubsub = self._pubsub
        if pubsub is not None and self.connected:
            self._leaving[session_id] = self._leaving.get(session_id, 0) + 1
            channel = self._keys.channel(session_id)
            with contextlib.suppress(RedisError, OSError):
                await (pubsub.sunsubscribe(channel) if self._sharded else pubsub.unsubscribe(channel))

    async def close(self) -> None:
        """Stop the reader, fail every subscription still waiting for its acknowledgement, and close."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for groups in self._waiters.values():
            for future in _merged(groups):
                future.cancel()
        await self._client.aclose()

    async def _enlist(self, session_id: str, futures: WaiterGroup) -> WaiterGroup:
        """Carry the session; returns the group its futures joined."""
        self.sessions[session_id] = asyncio.get_running_loop().time()
        groups = self._waiters.setdefault(session_id, deque())
        pubsub = self._pubsub
        if pubsub is not None and self.connected:
            groups.append(futures)
            # On failure the loop reconnects and subscribes every session it carries.
            with contextlib.suppress(RedisError, OSError):
                await self._send_subscribe(pubsub, [session_id])
            return futures
        self._retry_now.set()
        if groups:
            groups[-1].extend(futures)  # one subscribe on reconnect serves every waiter of the session
        else:
            groups.append(futures)
        return groups[-1]

    async def _send_subscribe(self, pubsub: PubSub, session_ids: Iterable[str]) -> None:
        channels = [self._keys.channel(session_id) for session_id in session_ids]
        if self._sharded:
            # One SSUBSCRIBE per channel: channels of different slots in one command are refused (CROSSSLOT).
            for channel in channels:
                await pubsub.ssubscribe(channel)
        elif channels:
            await pubsub.subscribe(*channels)

    async def _open(self, pubsub: PubSub) -> None:
        if self._sharded:
            await pubsub.connect()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        else:
            # Held for the connection's life: it stays a Pub/Sub client, for operators to see, while idle.
            await pubsub.subscribe(self._keys.control_channel)

    async def _run(self) -> None:
        failures = 0
        first = True
        loop = asyncio.get_running_loop()
        while True:
            self._retry_now.clear()  # this attempt answers every watcher that asked so far
            pubsub = self._client.pubsub()
            try:
                await self._open(pubsub)
                carried = self._take_over_waiters()
                self._pubsub = pubsub
                self.connected = True  # from here on, a new session sends its own subscribe command
                if not first:
                    self._resync_due = set(carried)
                    self._resync_wanted = True
                    log.warning("%s reconnected; resyncing open streams", self.name)
                await self._send_subscribe(pubsub, carried)
                first = False
                failures = 0
                self.problem = None
                self._down_since = None
                self._resync_acknowledged(None)
                await self._read(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                raise_if_cancelled()
                self.connected = False
                self._pubsub = None
                if self._down_since is None:
                    self._down_since = loop.time()
                failures += 1
                delay = backoff(failures)
                if isinstance(error, (RedisError, OSError, ShardMoved)):
                    self.problem = f"{self.name} interrupted ({error}); reconnecting"
                    log.warning("%s interrupted (%s); retrying within %.2fs", self.name, error, delay)
                else:
                    # Whatever ended the reader, live delivery must not end with it: start again and resync.
                    self.problem = f"{self.name} reader failed ({error!r}); restarting"
                    log.error("%s reader failed; restarting it and resyncing open streams", self.name, exc_info=error)
                if await self._owner.lost(self):
                    await self._client.aclose()
                    return
                await self._pause(delay)
            finally:
                self.connected = False
                self._pubsub = None
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    async def _pause(self, delay: float) -> None:
        """The backoff before the next attempt, cut short when a new watcher asks, but never under MIN_RETRY_GAP."""
        await asyncio.sleep(min(delay, MIN_RETRY_GAP))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._retry_now.wait(), max(0.0, delay - MIN_RETRY_GAP))

    def _take_over_waiters(self) -> list[str]:
        """The sessions to subscribe on a new connection, each with one group: every waiter of that session.

        Waiters of sessions no longer carried get no subscribe, so no acknowledgement: they are dropped, or the
        next acknowledgement of their session would complete them instead of the subscription it answers.
        """
        carried = list(self.sessions)
        waiters = self._waiters
        self._waiters = {session_id: deque([_merged(waiters.pop(session_id, ()))]) for session_id in carried}
        for groups in waiters.values():
            for future in _merged(groups):
                future.cancel()
        self._leaving.clear()
        return carried

    async def _read(self, pubsub: PubSub) -> None:
        message_kind, subscribed, unsubscribed = (
            ("smessage", "ssubscribe", "sunsubscribe") if self._sharded else ("message", "subscribe", "unsubscribe")
        )
        while True:
            message = await next_message(pubsub, f"{self.name} connection")
            kind = message["type"]
            if kind == message_kind:
                session_id = self._keys.session_of(message["channel"])
                if session_id is not None:  # a channel not of a session (another prefix, the control channel)
                    self._owner.on_message(session_id, message["data"])
            elif kind == subscribed:
                self._acknowledge(message["channel"])
            elif kind == unsubscribed:
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
            raise ShardMoved(f"slot of session {session_id} left {self.name}")

    def _resync_acknowledged(self, session_id: str | None) -> None:
        if session_id is not None:
            self._resync_due.discard(session_id)
        if self._resync_wanted and not self._resync_due and self.connected:
            self._resync_wanted = False
            self._owner.on_resync()


def _merged(groups: Iterable[WaiterGroup]) -> WaiterGroup:
    return [future for group in groups for future in group]


def backoff(failures: int) -> float:
    """Seconds before reconnection attempt ``failures``: exponential, capped, jittered."""
    return min(MAX_BACKOFF_SECONDS, 0.1 * 2.0**failures) * (0.5 + random.random() / 2)


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
