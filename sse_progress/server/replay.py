"""The one replay routine every transport uses: snapshot or history after an id, then live, no gap.

Order matters: subscribe first, then read the history, then send only live frames newer than the last frame
sent. An event published during the connect is therefore in the history, in the live buffer, or both, and is
sent exactly once. A live frame that is not newer is checked against the store rather than dropped: it may
mean the store's ids went backwards (see ``SessionCursor._resync``).

When the store no longer holds the history a client resumes from, the client gets a ``reset`` frame: at once
with the snapshot if there is one, else with the first event that arrives.

History is read one page at a time (see ``Hub.read_page``): the next page is read only once the transport has
written the previous one, which waits while the client is not reading, so a replay's memory is bounded
whatever the history's size.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from sse_progress.engines import Engine, EngineUnavailable, SessionView
from sse_progress.engines.foreign import FOREIGN
from sse_progress.protocol.events import ZERO_ID, EventId, format_event_id, parse_event_id
from sse_progress.protocol.frames import ForeignEnvelope, Frame
from sse_progress.server.hub import Hub, Listener
from sse_progress.server.metrics import METRICS

# Pauses between the attempts at a resync read: the feed may be back a moment before the command connections
# (a command on a dead pooled connection is already sent again once, on a new one).
RESYNC_RETRY_DELAYS = (0.1, 0.5, 1.5)

Reader = Callable[[str, EventId | None], Awaitable[SessionView]]
"""Reads a session's snapshot and the history after an id, as ``Engine.read`` does."""


class AlreadyFinished(Exception):
    """The client's resume id is at or after the terminal event: there is nothing left to send."""

    def __init__(self, terminal: Frame) -> None:
        super().__init__("the session ended at or before the resume id")
        self.terminal = terminal


class SessionExpired(Exception):
    """The client holds an event of a session that expired: nothing is stored any more, and nothing will come."""

    def __init__(self) -> None:
        super().__init__("the session expired: nothing is stored after the resume id any more")


class SlowConsumer(Exception):
    """The client's buffer overflowed; it must reconnect and resume from its last id."""


class ServerClosing(Exception):
    """The server is shutting down; the client should reconnect, to another instance if there is one."""


@dataclass(slots=True)
class Replay:
    frames: list[Frame] = field(default_factory=list)
    last_id: EventId | None = None
    # The client named an event but nothing is stored any more: the next frame it gets must be a reset.
    reset_next: bool = False
    # The history was read up to a page's limit: more events may be stored after ``last_id``.
    more: bool = False

    @property
    def finished(self) -> bool:
        return bool(self.frames) and self.frames[-1].terminal


def resume_point(resume: str | None) -> EventId | str | None:
    """None (no resume id), an event id, or the string ``"invalid"``."""
    if resume is None or resume == "":
        return None
    if resume in ("earliest", "0"):
        return ZERO_ID
    event_id = parse_event_id(resume)
    return "invalid" if event_id is None else event_id


async def plan_replay(read: Reader, session_id: str, resume: str | None) -> Replay:
    """The frames a client resuming from ``resume`` gets before live events.

    Raises ``AlreadyFinished`` or ``SessionExpired``: nothing to send, and the client must stop.

    ``read`` is ``Engine.read``, or ``Hub.read_session`` to share the read with identical requests."""
    after = resume_point(resume)
    view = await read(session_id, after if isinstance(after, tuple) else None)
    return plan_from_view(view, session_id, after)


def plan_from_view(view: SessionView, session_id: str, after: EventId | str | None) -> Replay:
    """What a client of ``session_id`` resuming after ``after`` (see ``resume_point``) gets, given what the engine
    holds."""
    if view.snapshot is None:
        if view.expired:
            raise SessionExpired
        # A client that names an event saw history that is gone (Redis lost its data): whatever arrives first
        # must replace its state, even if its id is not newer than the one the client holds.
        lost = after is not None and after != ZERO_ID
        return Replay(last_id=after if lost and isinstance(after, tuple) else None, reset_next=lost)
    if after is None:
        snapshot = Frame.from_envelope(view.snapshot, session_id, "snapshot")
        return Replay([snapshot], snapshot.id)
    if after == "invalid":
        return _reset(view.snapshot, session_id)
    assert isinstance(after, tuple)
    latest = Frame.from_envelope(view.snapshot, session_id)
    if latest.terminal and after >= latest.id:
        raise AlreadyFinished(latest)
    # The stored history does not reach back to the resume id (trimmed, expired, or a fresh stream after Redis
    # lost its data), or the id is newer than anything stored (a future id, or the store went back in time).
    if after > latest.id or (view.gap and (after != ZERO_ID or not view.events)):
        return _reset(view.snapshot, session_id)
    frames = _history_frames(view.events, session_id)
    return Replay(frames, frames[-1].id if frames else after, more=view.more and bool(frames))


def _history_frames(envelopes: list[bytes], session_id: str) -> list[Frame]:
    """The stored events as frames; an entry this service did not write (added to the stream by hand) is skipped."""
    frames = []
    for envelope in envelopes:
        try:
            frames.append(Frame.from_envelope(envelope, session_id))
        except ForeignEnvelope as error:
            FOREIGN.skipped("history", session_id, str(error))
    return frames


def _reset(envelope: bytes, session_id: str) -> Replay:
    reset = Frame.from_envelope(envelope, session_id, "reset")
    return Replay([reset], reset.id)


class SessionCursor:
    """A client's stream: the replayed frames, then live frames in batches, ending after the terminal one."""

    def __init__(self, engine: Engine, listener: Listener, replay: Replay, read: Reader | None = None) -> None:
        self.engine = engine
        self.listener = listener
        self.replay = replay
        self.read = engine.read if read is None else read
        self.last_id = replay.last_id
        self.reset_next = replay.reset_next
        self.paging = replay.more  # the history after ``last_id`` is still to be read, page by page
        self.status: str | None = replay.frames[-1].status if replay.frames else None
        self.sent = 0  # events given to the client: yielded in batches or written by ``offer``

    @classmethod
    async def open(cls, hub: Hub, session_id: str, resume: str | None, transport: str) -> SessionCursor:
        listener = await hub.listen(session_id, transport)
        try:
            # Shared with the clients that asked for the same read before it started (a reconnect storm).
            replay = await plan_replay(hub.read_session, session_id, resume)
        except BaseException:
            listener.close()
            raise
        METRICS.events_replayed.inc(len(replay.frames))
        return cls(hub.engine, listener, replay, hub.read_page)

    async def batches(self) -> AsyncIterator[list[Frame]]:
        replay, self.replay = self.replay, Replay()  # the replayed frames are not kept for the stream's life
        if replay.frames:
            self.sent += len(replay.frames)
            yield replay.frames
            if replay.finished:
                return
        listener = self.listener
        while True:
            if self.paging:
                # Live events that arrived meanwhile are stored too: the next page has them (or a later one).
                listener.needs_resync = True
            else:
                # Caught up: live frames may skip this task and go straight to the socket until a wake-up.
                await listener.wait(None if listener.writer is None or self.reset_next else self.offer)
            if listener.gone:
                return
            if listener.closing:
                raise ServerClosing
            if listener.overflowed:
                raise SlowConsumer
            if listener.needs_resync:
                listener.needs_resync = False
                listener.drain()
                batch = await self._resync()
            else:
                live = self._live(listener.drain())
                batch = await self._resync() if live is None else live
            if self.reset_next and batch:
                batch = self._as_reset(batch)
            if not batch:
                if listener.heartbeat_due:
                    listener.heartbeat_due = False
                    yield batch  # empty: time for the transport's heartbeat
                continue
            for index, frame in enumerate(batch):
                if frame.terminal:
                    self._advance(batch[: index + 1])
                    yield batch[: index + 1]
                    return
            self._advance(batch)
            yield batch

    def offer(self, frame: Frame) -> bool:
        """Write a live frame straight to the client's socket, while the stream waits with nothing queued (see
        ``Listener.wait``). False for a frame that needs the stream's task: a terminal one (the stream ends after
        it), one not newer than the last sent (see ``_resync``), or a connection that is closing."""
        last = self.last_id
        if frame.terminal or (last is not None and frame.id <= last):
            return False
        writer = self.listener.writer
        if writer is None or not writer.deliver(frame):
            return False
        self.last_id = frame.id
        self.status = frame.status
        self.sent += 1
        return True

    async def _resync(self) -> list[Frame]:
        """Re-read everything after the last id sent.

        Needed when live messages may have been missed (the feed reconnected) and when a live frame is not
        newer than the last one sent: either it was also replayed from history (harmless), or the store's ids
        went backwards (Redis lost its data and its clock is behind the ids the client has). Dropping such
        frames as already seen would silence the client for good; the re-read tells the two apart and answers
        the second with a reset.
        """
        try:
            replay = await self._reread()
        except AlreadyFinished as finished:
            # The store went back to before a terminal event this client never got.
            replay = _reset(finished.terminal.data, self.listener.session_id)
        METRICS.events_replayed.inc(len(replay.frames))
        self.reset_next = self.reset_next or replay.reset_next
        self.paging = replay.more
        return replay.frames

    async def _reread(self) -> Replay:
        """``plan_replay`` from the last id sent; raises ``EngineUnavailable`` only if every attempt fails."""
        resume = None if self.last_id is None else format_event_id(self.last_id)
        for delay in RESYNC_RETRY_DELAYS:
            try:
                return await plan_replay(self.read, self.listener.session_id, resume)
            except EngineUnavailable:
                await asyncio.sleep(delay)
        return await plan_replay(self.read, self.listener.session_id, resume)

    def _live(self, frames: list[Frame]) -> list[Frame] | None:
        """The live frames to send, or None when one of them is not newer than the last sent (see ``_resync``)."""
        last = self.last_id
        if last is None or self.reset_next:
            return frames
        newer = [frame for frame in frames if frame.id > last]
        return newer if len(newer) == len(frames) else None

    def _as_reset(self, batch: list[Frame]) -> list[Frame]:
        """The client's history is gone: the first frame it gets replaces its state, whatever its id."""
        self.reset_next = False
        first = (
            batch[0]
            if batch[0].kind == "reset"
            else Frame.from_envelope(batch[0].data, self.listener.session_id, "reset")
        )
        return [first, *[frame for frame in batch[1:] if frame.id > first.id]]

    def _advance(self, batch: list[Frame]) -> None:
        self.last_id = batch[-1].id
        self.status = batch[-1].status
        self.sent += len(batch)

    def close(self) -> None:
        self.listener.close()
