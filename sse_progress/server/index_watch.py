"""Each process's view of the session index: stalls found, changes told to ``/ops/events`` subscribers.

Once a tick the watch reads the index's active sessions (and the sessions that changed since the last tick)
and compares them with what it saw before; every change of state or of latest event becomes a change record
for the subscribers. Stalls are found here, not on the publish path: a silent job publishes nothing. Nothing
is added to the publish path: the index's scores say what changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from sse_progress.cancellation import raise_if_cancelled
from sse_progress.engines import Engine, EngineUnavailable
from sse_progress.protocol.session_index import ACTIVE_SCAN_LIMIT, IndexEntry, StallRule, describe, now_ms

log = logging.getLogger("sse_progress.index")

TICK_SECONDS = 1.0
PRUNE_EVERY_TICKS = 60
FINISHED_KEPT = 100  # finished sessions a new subscriber is shown (it asks GET /sessions for older ones)
SUBSCRIBER_BUFFER = 1000  # change records held for one subscriber; past it the subscriber is dropped
MAX_SUBSCRIBERS = 100


class ChangeSubscriber:
    """One ``/ops/events`` client: a bounded buffer of change records."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.overflowed = False
        self.wake = asyncio.Event()

    def push(self, record: dict[str, Any]) -> None:
        if len(self.records) >= SUBSCRIBER_BUFFER:
            self.overflowed = True  # it stopped reading: end its stream; it reconnects to a fresh view
        else:
            self.records.append(record)
        self.wake.set()

    def take(self) -> list[dict[str, Any]]:
        records, self.records = self.records, []
        self.wake.clear()
        return records


@dataclass(slots=True)
class _Seen:
    last_event_ms: int
    state: str
    entry: IndexEntry


@dataclass
class IndexWatch:
    engine: Engine
    rule: StallRule
    ttl: int
    tick_seconds: float = TICK_SECONDS
    running: int = 0
    stalled: int = 0
    healthy: bool = True
    _seen: dict[str, _Seen] = field(default_factory=dict)
    _finished: OrderedDict[str, _Seen] = field(default_factory=OrderedDict)
    _subscribers: set[ChangeSubscriber] = field(default_factory=set)
    _task: asyncio.Task[None] | None = None
    _ticks: int = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        # One line when reading starts failing and one when it works again, not one per tick of an outage.
        failure: str | None = None
        while True:
            try:
                await self.tick()
                if failure is not None:
                    log.warning("session index readable again")
                failure = None
            except EngineUnavailable as error:
                raise_if_cancelled()
                if failure != "unavailable":
                    log.warning("session index unreadable, retrying every %gs: %s", self.tick_seconds, error)
                failure = "unavailable"
            except Exception as error:
                raise_if_cancelled()
                if failure != type(error).__name__:
                    log.exception("session index watch failed; retrying")  # a bug: its traceback, once
                failure = type(error).__name__
            self.healthy = failure is None
            await asyncio.sleep(self.tick_seconds)

    async def tick(self) -> None:
        index = self.engine.index
        self._ticks += 1
        if self._ticks % PRUNE_EVERY_TICKS == 1:
            await index.prune(now_ms() - self.ttl * 1000)
        active = await index.members("active", None, ACTIVE_SCAN_LIMIT)
        changed = [
            member
            for member in active
            if member[0] not in self._seen or self._seen[member[0]].last_event_ms != member[1]
        ]
        changed += await self._finished_since_last_tick(active)
        entries = {entry.session_id: entry for entry in await index.resolve(changed)}
        moment = now_ms()
        still_active = {session_id for session_id, _ in active}
        for session_id in [sid for sid in self._seen if sid not in still_active and sid not in entries]:
            del self._seen[session_id]  # expired or dropped without a terminal event
        running = stalled = 0
        for session_id, _ in active:
            seen = self._seen.get(session_id)
            entry = entries.get(session_id) or (seen.entry if seen else None)
            if entry is None:
                continue
            is_stalled = self.rule.is_stalled(entry, moment)
            stalled += is_stalled
            running += not is_stalled
            self._note(entry, "stalled" if is_stalled else entry.status, moment)
        for entry in entries.values():
            if not entry.active:
                self._seen.pop(entry.session_id, None)
                self._note(entry, entry.status, moment)
        self.running, self.stalled = running, stalled

    async def _finished_since_last_tick(self, active: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Sessions that left the active group since we last looked: newest in ``recent``, not active."""
        known = {session_id for session_id, _ in active}
        recent = await self.engine.index.members(None, None, FINISHED_KEPT)
        return [
            member
            for member in recent
            if member[0] not in known
            and (
                member[0] in self._seen
                or member[0] not in self._finished
                or self._finished[member[0]].last_event_ms != member[1]
            )
        ]

    def _note(self, entry: IndexEntry, state: str, moment: int) -> None:
        table = self._seen if entry.active else self._finished
        previous = self._seen.get(entry.session_id) or self._finished.get(entry.session_id)
        table[entry.session_id] = _Seen(entry.last_event_ms, state, entry)
        if not entry.active:
            self._finished.move_to_end(entry.session_id)
            while len(self._finished) > FINISHED_KEPT:
                self._finished.popitem(last=False)
        if previous is not None and previous.state == state and previous.last_event_ms == entry.last_event_ms:
            return
        change = _change(previous.state if previous else None, state)
        record = {"change": change, **describe(entry, self.rule, moment)}
        for subscriber in tuple(self._subscribers):
            subscriber.push(record)

    def view(self) -> list[dict[str, Any]]:
        """What a new subscriber is shown first: every active session, then the latest finished ones."""
        moment = now_ms()
        seen = [*self._seen.values(), *reversed(self._finished.values())]
        return [{"change": "known", **describe(item.entry, self.rule, moment)} for item in seen]

    def subscribe(self) -> ChangeSubscriber | None:
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            return None
        subscriber = ChangeSubscriber()
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: ChangeSubscriber) -> None:
        self._subscribers.discard(subscriber)


def _change(before: str | None, after: str) -> str:
    """What happened, in the words a script reacts to."""
    if after in ("success", "error", "cancelled"):
        return "finished"
    if after == "stalled":
        return "stalled"
    if before == "stalled":
        return "resumed"
    return "started" if before is None else "progress"
