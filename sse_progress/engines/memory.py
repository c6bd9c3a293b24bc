"""The embedded engine: the Redis engine's semantics inside one process, with zero setup."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from sse_progress.engines.base import (
    Engine,
    Feed,
    MessageHandler,
    Page,
    Published,
    ResyncHandler,
    SessionTerminal,
    SessionView,
    outlived,
)
from sse_progress.engines.memory_index import MemoryIndex
from sse_progress.protocol.events import EventDraft, EventId, eta_seconds, finish_envelope, format_event_id, with_id

SWEEP_INTERVAL = 60.0


@dataclass(slots=True)
class _Session:
    started_ms: int
    events: deque[tuple[EventId, bytes]] = field(default_factory=deque)
    last_id: EventId = (0, 0)
    terminal: bool = False
    publisher_sequences: dict[str, int] = field(default_factory=dict)
    expires_at: float = 0.0


class MemoryEngine(Engine):
    name = "memory"
    index: MemoryIndex

    def __init__(self, history: int = 1000, ttl: int = 86400) -> None:
        self.history = history
        self.ttl = ttl
        self._sessions: dict[str, _Session] = {}
        self._feeds: set[MemoryFeed] = set()
        self._last_sweep = time.monotonic()
        self.index = MemoryIndex(self._snapshot)

    def _session(self, session_id: str) -> _Session | None:
        session = self._sessions.get(session_id)
        if session is not None and session.expires_at <= time.monotonic():
            del self._sessions[session_id]
            return None
        return session

    def _snapshot(self, session_id: str) -> bytes | None:
        session = self._session(session_id)
        return session.events[-1][1] if session is not None and session.events else None

    def _sweep(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep < SWEEP_INTERVAL:
            return
        self._last_sweep = now
        for session_id in [sid for sid, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[session_id]

    def _next_id(self, session: _Session) -> EventId:
        now_ms = time.time_ns() // 1_000_000
        last_ms, last_seq = session.last_id
        return (now_ms, 0) if now_ms > last_ms else (last_ms, last_seq + 1)

    async def publish(self, draft: EventDraft) -> Published:
        return self.publish_now(draft)

    def publish_now(self, draft: EventDraft) -> Published:
        """``publish`` for synchronous callers: storing in memory never waits."""
        self._sweep()
        session = self._session(draft.session_id)
        new_session = session is None
        if session is None:
            session = self._sessions[draft.session_id] = _Session(started_ms=draft.timestamp_ms)
        if session.terminal:
            raise SessionTerminal(draft.session_id, session.events[-1][1] if session.events else None)
        if draft.publisher:
            if draft.sequence <= session.publisher_sequences.get(draft.publisher, -1):
                return Published(session.events[-1][1], duplicate=True)
            session.publisher_sequences[draft.publisher] = draft.sequence

        elapsed = (draft.timestamp_ms - session.started_ms) / 1000
        eta = eta_seconds(draft.etapa_atual, draft.total_etapas, draft.status, elapsed)
        event_id = self._next_id(session)
        envelope = with_id(finish_envelope(draft.encode(), eta), format_event_id(event_id))

        session.events.append((event_id, envelope))
        session.last_id = event_id
        while len(session.events) > self.history:
            session.events.popleft()
        session.terminal = draft.terminal
        session.expires_at = time.monotonic() + self.ttl
        self.index.record(draft.session_id, draft.status, draft.etapa_atual, event_id[0], draft.terminal, new_session)

        for feed in tuple(self._feeds):
            feed.deliver(draft.session_id, envelope)
        return Published(envelope)

    async def read(self, session_id: str, after: EventId | None, page: Page | None = None) -> SessionView:
        session = self._session(session_id)
        if session is None or not session.events:
            return SessionView(snapshot=None, expired=outlived(after, self.ttl))
        snapshot = session.events[-1][1]
        if after is None:
            return SessionView(snapshot)
        newer = (envelope for event_id, envelope in session.events if event_id > after)
        events, more = (list(newer), False) if page is None else _first_page(newer, page)
        # A session that expired and started again has no history before its new first event, like a trimmed one.
        return SessionView(snapshot, events, gap=session.events[0][0] > after, more=more)

    def open_feed(self, on_message: MessageHandler, on_resync: ResyncHandler) -> Feed:
        feed = MemoryFeed(self, on_message)
        self._feeds.add(feed)
        return feed

    async def ping(self) -> None:
        return None

    async def stats(self) -> dict[str, object]:
        return {"sessions": len(self._sessions)}


def _first_page(envelopes: Iterator[bytes], page: Page) -> tuple[list[bytes], bool]:
    """The envelopes that fit in ``page`` (at least one), and whether any were left out (as READ_SCRIPT does)."""
    events: list[bytes] = []
    budget = page.max_bytes
    for envelope in envelopes:
        if events and (len(events) == page.max_events or len(envelope) > budget):
            return events, True
        events.append(envelope)
        budget -= len(envelope)
    return events, False


class MemoryFeed(Feed):
    def __init__(self, engine: MemoryEngine, on_message: MessageHandler) -> None:
        self._engine = engine
        self._on_message = on_message
        self._sessions: set[str] = set()

    def deliver(self, session_id: str, envelope: bytes) -> None:
        if session_id in self._sessions:
            self._on_message(session_id, envelope)

    async def add(self, session_id: str) -> None:
        self._sessions.add(session_id)

    async def remove(self, session_id: str) -> None:
        self._sessions.discard(session_id)

    async def close(self) -> None:
        self._engine._feeds.discard(self)
