"""The session index of the embedded engine: the Redis index's semantics in dictionaries."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sse_progress.protocol.session_index import (
    DURATIONS_KEPT,
    Cursor,
    IndexEntry,
    SessionIndex,
    bucket_label,
    step_label,
)


@dataclass(slots=True)
class _Member:
    last_event_ms: int
    group: str
    step: int
    step_started_ms: int
    durations: list[tuple[int, int]] = field(default_factory=list)


class MemoryIndex(SessionIndex):
    def __init__(self, snapshot_of: Callable[[str], bytes | None]) -> None:
        self._snapshot_of = snapshot_of
        self._members: dict[str, _Member] = {}
        self._totals: dict[str, int] = {}

    def record(self, session_id: str, status: str, step: int, at_ms: int, terminal: bool, new_session: bool) -> None:
        """Called for every stored event, as the publish script does for Redis. A new session (or one whose
        data expired) starts afresh, as its Redis meta hash would."""
        member = self._members.get(session_id)
        if member is None or new_session:
            member = self._members[session_id] = _Member(at_ms, "active", step, at_ms)
        elif member.step != step or terminal:
            # The step that ended: the previous one, or the current one when the job ends on it.
            self._count_step(member, member.step, at_ms - member.step_started_ms)
            member.step, member.step_started_ms = step, at_ms
        member.last_event_ms = at_ms
        if terminal:
            member.group = status
            self._totals[f"finished:{status}"] = self._totals.get(f"finished:{status}", 0) + 1

    def _count_step(self, member: _Member, step: int, duration_ms: int) -> None:
        member.durations.append((step, duration_ms))
        del member.durations[:-DURATIONS_KEPT]
        label = step_label(step)
        for key, amount in ((f"step:{label}:{bucket_label(duration_ms)}", 1), (f"step:{label}:sum", duration_ms)):
            self._totals[key] = self._totals.get(key, 0) + amount

    async def members(self, group: str | None, before: Cursor | None, count: int) -> list[tuple[str, int]]:
        chosen = [
            (member.last_event_ms, session_id)
            for session_id, member in self._members.items()
            if group in (None, member.group) and (before is None or (member.last_event_ms, session_id) < before)
        ]
        chosen.sort(reverse=True)
        return [(session_id, ms) for ms, session_id in chosen[:count]]

    async def entries(self, session_ids: list[str]) -> list[IndexEntry | None]:
        found: list[IndexEntry | None] = []
        for session_id in session_ids:
            member = self._members.get(session_id)
            snapshot = self._snapshot_of(session_id)
            if member is None or snapshot is None:
                found.append(None)
            else:
                found.append(IndexEntry(session_id, member.last_event_ms, snapshot, list(member.durations)))
        return found

    async def drop(self, session_ids: list[str]) -> None:
        for session_id in session_ids:
            self._members.pop(session_id, None)

    async def prune(self, horizon_ms: int) -> None:
        await self.drop([sid for sid, member in self._members.items() if member.last_event_ms < horizon_ms])

    async def totals(self) -> dict[str, int]:
        return dict(self._totals)

    async def finished_between(self, ranges: list[tuple[int, int]]) -> dict[str, list[int]]:
        counts: dict[str, list[int]] = {status: [0] * len(ranges) for status in ("success", "error", "cancelled")}
        for member in self._members.values():
            if member.group in counts:
                for position, (start, end) in enumerate(ranges):
                    if start <= member.last_event_ms < end:
                        counts[member.group][position] += 1
        return counts
