"""The engine interface: where events are stored, read back and announced.

An engine knows nothing of HTTP. Three implementations share these semantics: ``memory`` (one process, zero
setup), ``redis`` (many processes over one Redis) and ``redis-cluster`` (over a Redis Cluster, with sharded
Pub/Sub). Envelopes cross this interface as JSON bytes that already carry their ``id``.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sse_progress.protocol.events import EventDraft, EventId
from sse_progress.protocol.session_index import SessionIndex

# A readiness probe must answer before the orchestrator's own timeout, even when the store is frozen.
PING_TIMEOUT_SECONDS = 2.0
# A read for a request: a frozen store keeps its connections open and answers nothing, and the client library
# would wait its own timeout (10 s, then a retry) — past a proxy's or a Prometheus scrape's patience.
READ_TIMEOUT_SECONDS = 3.0

T = TypeVar("T")


async def answered_within(work: Awaitable[T], seconds: float = READ_TIMEOUT_SECONDS) -> T:
    """``work``'s result, or ``EngineUnavailable`` once the store has not answered for ``seconds``."""
    try:
        return await asyncio.wait_for(work, seconds)
    except TimeoutError as error:
        raise EngineUnavailable(f"the event store did not answer within {seconds:g} s") from error


class SessionTerminal(Exception):
    """The session already ended; it accepts no more events."""

    def __init__(self, session_id: str, terminal_envelope: bytes | None) -> None:
        super().__init__(f"session {session_id} has already ended")
        self.terminal_envelope = terminal_envelope


class EngineUnavailable(Exception):
    """The engine's backing store does not answer."""


class EngineMisconfigured(Exception):
    """The engine URL names the wrong kind of store; the message says which URL to use instead."""


class EngineWrongKind(EngineUnavailable):
    """The store found after startup is not what the URL says (checked then only if it did not answer); the
    message says which URL to use. Nothing works until the URL or the store is changed."""


class EngineFull(EngineUnavailable):
    """The backing store answers but refuses to store anything more (Redis: maxmemory with noeviction)."""


@dataclass(frozen=True, slots=True)
class Published:
    envelope: bytes  # the stored envelope, with id
    duplicate: bool = False  # the publisher's sequence number was already stored; nothing new was written


@dataclass(slots=True)
class SessionView:
    """What a reader needs to resume: the latest envelope and the events after its resume id."""

    snapshot: bytes | None
    events: list[bytes] = field(default_factory=list)
    gap: bool = False  # an event after the resume id is no longer retained (trimmed or expired)
    expired: bool = False  # nothing is stored, and the resume id is older than the TTL (see ``outlived``)
    more: bool = False  # the read stopped at its ``Page`` limit: events after the last one returned may follow


@dataclass(frozen=True, slots=True)
class Page:
    """At most how much history one read returns, so one client's replay holds a bounded amount of memory.

    Always at least one event, so a history of events each larger than ``max_bytes`` still moves forward."""

    max_bytes: int
    max_events: int


def outlived(after: EventId | None, ttl: int) -> bool:
    """Whether a session with nothing stored has expired, for a client holding event ``after``.

    Keys expire ``ttl`` seconds after a session's last event, which is at or after ``after``: while ``after`` is
    younger than the TTL, an empty store means Redis lost the data (the job may go on), not an expiry.
    """
    return after is not None and after != (0, 0) and after[0] + ttl * 1000 <= time.time() * 1000


MessageHandler = Callable[[str, bytes], None]
"""Called with (session id, envelope JSON with id) for every event published to a subscribed session."""

ResyncHandler = Callable[[], None]
"""Called after the feed lost its connection and got it back: messages published meanwhile were missed."""


class Feed(ABC):
    """A live subscription to sessions' events. A process opens one and shares it (see ``Hub``)."""

    @property
    def problem(self) -> str | None:
        """Why the feed does not deliver live events right now (None: it does); ``/readyz`` reports it."""
        return None

    def problem_for(self, session_id: str) -> str | None:
        """Why this session's live events will not be delivered soon (None: they will, or not known yet).

        A stream waiting for its subscription gives up at the first answer, so a feed that can recover at once (the
        Redis feeds retry when a watcher arrives) answers only once the session has waited through that retry."""
        return self.problem

    @abstractmethod
    async def add(self, session_id: str) -> None:
        """Subscribe; returns once messages for the session will be delivered."""

    @abstractmethod
    async def remove(self, session_id: str) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...


class Engine(ABC):
    """Store, read and announce events."""

    name: str
    index: SessionIndex  # kept up to date by ``publish`` (see session_index)

    @abstractmethod
    async def publish(self, draft: EventDraft) -> Published:
        """Store the event and announce it, atomically. Raises ``SessionTerminal`` after a terminal event."""

    @abstractmethod
    async def read(self, session_id: str, after: EventId | None, page: Page | None = None) -> SessionView:
        """The snapshot, plus the retained events with id > ``after`` (none when ``after`` is None).

        With ``page``, only the first of those events that fit in it, and ``more`` set when it cut the read short."""

    @abstractmethod
    def open_feed(self, on_message: MessageHandler, on_resync: ResyncHandler) -> Feed: ...

    @abstractmethod
    async def ping(self) -> None:
        """Raise ``EngineUnavailable`` unless the backing store answers."""

    async def ping_within(self, seconds: float = PING_TIMEOUT_SECONDS) -> None:
        """``ping``, bounded: a frozen store (connections open, nothing answering) would hold it for minutes."""
        await answered_within(self.ping(), seconds)

    async def verify(self) -> None:
        """At startup: raise ``EngineMisconfigured`` if the store is not what the URL says it is."""
        return None

    async def stats(self) -> dict[str, Any]:
        return {}

    async def close(self) -> None:
        return None
