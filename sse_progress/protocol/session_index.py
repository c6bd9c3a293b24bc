"""The session index: every session's latest state in one place, newest first, and the stalled-job rule.

Every stored event updates the index in the same step (the memory engine in-process, Redis in the publish
script): the session's latest event time, which group it is in (``active`` while pending or running, else the
terminal status), its step durations (kept with the session), and job totals (finished jobs per status, a
histogram of step durations per step). The snapshot itself stays where it always was, so an index entry whose
session data expired is dropped when it is read, never shown forever.

A session is *stalled* while it is active and has had no event for longer than
``max(floor, factor × median of its own step durations)``: the threshold follows each job's pace.
"""

from __future__ import annotations

import statistics
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import orjson

from sse_progress.protocol.events import TERMINAL_STATUSES, decode, is_valid_session_id

GROUPS = ("active", "success", "error", "cancelled")
FILTERS = ("running", "stalled", "success", "error", "cancelled")
MAX_PAGE = 500
DEFAULT_PAGE = 50
# Steps 1..MAX_STEP_LABEL get a label of their own in the step-duration histogram; later ones share "other".
MAX_STEP_LABEL = 50
STEP_BUCKETS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
DURATIONS_KEPT = 32  # the latest step durations a session keeps: enough for a median
DURATIONS_CHARS = 12 * DURATIONS_KEPT  # the same bound for Redis, in characters of "step:ms;" (cheaper to test)
ACTIVE_SCAN_LIMIT = 10_000  # at most this many active sessions are looked at per listing or stall check

Cursor = tuple[int, str]  # (last event ms, session id) of the last entry of the previous page


@dataclass(slots=True)
class IndexEntry:
    session_id: str
    last_event_ms: int
    snapshot: bytes
    durations: list[tuple[int, int]] = field(default_factory=list)  # (step, milliseconds), oldest first
    _envelope: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def envelope(self) -> dict[str, Any]:
        if self._envelope is None:
            self._envelope = decode(self.snapshot)  # once: the status is asked for several times per listing
        return self._envelope

    @property
    def status(self) -> str:
        return str(self.envelope["status"])

    @property
    def active(self) -> bool:
        return self.status not in TERMINAL_STATUSES


@dataclass(frozen=True, slots=True)
class StallRule:
    """``floor_s``: ``SSE_PROGRESS_STALL_AFTER``; ``factor``: ``SSE_PROGRESS_STALL_FACTOR``."""

    floor_s: float = 60.0
    factor: float = 4.0

    def threshold_s(self, durations: list[tuple[int, int]]) -> float:
        if not durations:
            return self.floor_s
        median_s = statistics.median(ms for _, ms in durations) / 1000
        return max(self.floor_s, self.factor * median_s)

    def is_stalled(self, entry: IndexEntry, now_ms: int) -> bool:
        return entry.active and now_ms - entry.last_event_ms > self.threshold_s(entry.durations) * 1000


def parse_durations(text: bytes | str | None) -> list[tuple[int, int]]:
    """The ``step:ms;step:ms`` log the engines keep with a session."""
    if not text:
        return []
    if isinstance(text, bytes):
        text = text.decode()
    pairs = []
    for item in text.split(";"):
        step, _, ms = item.partition(":")
        if step and ms:
            pairs.append((int(step), int(ms)))
    return pairs


def step_label(step: int) -> str:
    return str(step) if 1 <= step <= MAX_STEP_LABEL else "other"


def bucket_label(duration_ms: int) -> str:
    for bound in STEP_BUCKETS_S:
        if duration_ms <= bound * 1000:
            return f"{bound:g}"
    return "+Inf"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_cursor(text: str) -> Cursor | None:
    """``"1732530000000.abc"`` → ``(1732530000000, "abc")``; anything else → None."""
    ms, dot, session_id = text.partition(".")
    if not dot or not ms.isascii() or not ms.isdigit() or len(ms) > 20 or not is_valid_session_id(session_id):
        return None
    return int(ms), session_id


def format_cursor(entry: IndexEntry) -> str:
    return f"{entry.last_event_ms}.{entry.session_id}"


class SessionIndex(ABC):
    """What an engine stores for the index; the rules built on it (paging, stalls, figures) live below."""

    @abstractmethod
    async def members(self, group: str | None, before: Cursor | None, count: int) -> list[tuple[str, int]]:
        """(session id, last event ms) of ``group`` (None: every session), newest first, strictly before
        ``before`` in (ms, id) order."""

    @abstractmethod
    async def entries(self, session_ids: list[str]) -> list[IndexEntry | None]:
        """Each session's entry; None where its session data is gone (the caller drops it)."""

    @abstractmethod
    async def drop(self, session_ids: list[str]) -> None:
        """Remove sessions from every group."""

    @abstractmethod
    async def prune(self, horizon_ms: int) -> None:
        """Forget members whose last event is older than ``horizon_ms`` (their sessions have expired)."""

    @abstractmethod
    async def totals(self) -> dict[str, int]:
        """Counters: ``finished:<status>``, ``step:<label>:<bucket>``, ``step:<label>:sum`` (ms)."""

    @abstractmethod
    async def finished_between(self, ranges: list[tuple[int, int]]) -> dict[str, list[int]]:
        """For each terminal status, how many sessions finished in each [start, end) ms range."""

    async def resolve(self, members: list[tuple[str, int]]) -> list[IndexEntry]:
        """The entries of ``members``; those whose session data is gone are dropped from the index."""
        found = await self.entries([session_id for session_id, _ in members])
        gone = [session_id for (session_id, _), entry in zip(members, found, strict=True) if entry is None]
        if gone:
            await self.drop(gone)
        return [entry for entry in found if entry is not None]


@dataclass(slots=True)
class Page:
    entries: list[IndexEntry]
    next_cursor: str | None


async def list_sessions(
    index: SessionIndex, rule: StallRule, status: str | None, limit: int, cursor: Cursor | None
) -> Page:
    """Newest first. ``running`` and ``stalled`` split the active group by the stall rule."""
    group = None if status is None else "active" if status in ("running", "stalled") else status
    wanted_stalled = {"running": False, "stalled": True}.get(status or "")
    picked: list[IndexEntry] = []
    scanned = 0
    while len(picked) < limit and scanned < ACTIVE_SCAN_LIMIT:
        batch = await index.members(group, cursor, limit + 1)
        if not batch:
            return Page(picked, None)
        scanned += len(batch)
        cursor = batch[-1][1], batch[-1][0]
        moment = now_ms()
        for entry in await index.resolve(batch):
            if wanted_stalled is None or rule.is_stalled(entry, moment) is wanted_stalled:
                picked.append(entry)
    return Page(picked[:limit], format_cursor(picked[limit - 1]) if len(picked) >= limit else None)


def describe(entry: IndexEntry, rule: StallRule, moment_ms: int) -> dict[str, Any]:
    """One session as ``GET /sessions`` and the change stream show it."""
    stalled = rule.is_stalled(entry, moment_ms)
    failed_step = entry.envelope["etapa_atual"] if entry.status == "error" else None
    return {
        "session_id": entry.session_id,
        "state": "stalled" if stalled else entry.status,
        "stalled": stalled,
        "last_event_age_s": round(max(0, moment_ms - entry.last_event_ms) / 1000, 1),
        "stall_after_s": round(rule.threshold_s(entry.durations), 1),
        "failed_step": failed_step,
        "snapshot": orjson.Fragment(entry.snapshot),
    }


async def step_durations(index: SessionIndex, sessions: int = 200) -> list[dict[str, Any]]:
    """Median and p95 of each step's duration over the newest ``sessions`` sessions: which screen is slow."""
    members = await index.members(None, None, sessions)
    by_step: dict[int, list[int]] = {}
    for entry in await index.resolve(members):
        for step, ms in entry.durations:
            by_step.setdefault(step, []).append(ms)
    return [
        {
            "step": step,
            "count": len(values),
            "median_s": round(statistics.median(values) / 1000, 2),
            "p95_s": round(_percentile(sorted(values), 0.95) / 1000, 2),
        }
        for step, values in sorted(by_step.items())
    ]


async def finished_by_hour(index: SessionIndex, hours: int, moment_ms: int) -> dict[str, Any]:
    """Finished jobs per terminal status in each of the last ``hours`` whole hours (the current one last)."""
    hour = 3_600_000
    current = moment_ms - moment_ms % hour
    starts = [current - hour * back for back in range(hours - 1, -1, -1)]
    counts = await index.finished_between([(start, start + hour) for start in starts])
    return {"hours": starts, **counts}


def _percentile(ordered: list[int], fraction: float) -> float:
    # Nearest rank: the value below which ``fraction`` of the observations fall.
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return float(ordered[rank])
