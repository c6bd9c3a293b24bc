"""The one replay routine every transport uses: snapshot or history after an id, then live, no gap.

Order matters: subscribe first, then read the history, then drop live frames whose id is not newer than the
last frame sent. An event published during the connect is therefore in the history, in the live buffer,
or both, and is sent exactly once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from .engines import Engine
from .events import ZERO_ID, EventId, format_event_id, parse_event_id
from .frames import Frame
from .hub import Hub, Listener
from .metrics import METRICS


class AlreadyFinished(Exception):
    """The client's resume id is at or after the terminal event: there is nothing left to send."""


class SlowConsumer(Exception):
    """The client's buffer overflowed; it must reconnect and resume from its last id."""


class ServerClosing(Exception):
    """The server is shutting down; the client should reconnect, to another instance if there is one."""


@dataclass(slots=True)
class Replay:
    frames: list[Frame] = field(default_factory=list)
    last_id: EventId | None = None

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


async def plan_replay(engine: Engine, session_id: str, resume: str | None) -> Replay:
    """The frames a client resuming from ``resume`` gets before live events. Raises ``AlreadyFinished``."""
    after = resume_point(resume)
    if after is None or after == "invalid":
        view = await engine.read(session_id, None)
        if view.snapshot is None:
            return Replay()
        frame = Frame.from_envelope(view.snapshot, "snapshot" if after is None else "reset")
        return Replay([frame], frame.id)

    assert isinstance(after, tuple)
    view = await engine.read(session_id, after)
    if view.snapshot is None:
        return Replay()
    latest = Frame.from_envelope(view.snapshot)
    if latest.terminal and after >= latest.id:
        raise AlreadyFinished
    if after > latest.id or (view.gap and after != ZERO_ID):
        reset = Frame.from_envelope(view.snapshot, "reset")
        return Replay([reset], reset.id)
    frames = [Frame.from_envelope(envelope) for envelope in view.events]
    return Replay(frames, frames[-1].id if frames else after)


class SessionStream:
    """A client's stream: the replayed frames, then live frames in batches, ending after the terminal one."""

    def __init__(self, engine: Engine, listener: Listener, replay: Replay) -> None:
        self.engine = engine
        self.listener = listener
        self.replay = replay
        self.last_id = replay.last_id
        self.status: str | None = replay.frames[-1].status if replay.frames else None

    @classmethod
    async def open(cls, hub: Hub, session_id: str, resume: str | None, transport: str) -> SessionStream:
        listener = await hub.listen(session_id, transport)
        try:
            replay = await plan_replay(hub.engine, session_id, resume)
        except BaseException:
            listener.close()
            raise
        METRICS.events_replayed.inc(len(replay.frames))
        return cls(hub.engine, listener, replay)

    async def batches(self) -> AsyncIterator[list[Frame]]:
        if self.replay.frames:
            yield self.replay.frames
            if self.replay.finished:
                return
        listener = self.listener
        while True:
            await listener.wait()
            if listener.closing:
                raise ServerClosing
            if listener.overflowed:
                raise SlowConsumer
            if listener.needs_resync:
                listener.needs_resync = False
                listener.drain()
                batch = await self._resync()
            else:
                batch = self._newer(listener.drain())
            if not batch:
                continue
            for index, frame in enumerate(batch):
                if frame.terminal:
                    self._advance(batch[: index + 1])
                    yield batch[: index + 1]
                    return
            self._advance(batch)
            yield batch

    async def _resync(self) -> list[Frame]:
        """Messages may have been lost while the feed was down: re-read everything after the last id sent."""
        resume = None if self.last_id is None else format_event_id(self.last_id)
        replay = await plan_replay(self.engine, self.listener.session_id, resume)
        METRICS.events_replayed.inc(len(replay.frames))
        if self.last_id is None:
            return replay.frames
        return [f for f in replay.frames if f.kind == "reset" or f.id > self.last_id]

    def _newer(self, frames: list[Frame]) -> list[Frame]:
        last = self.last_id
        if last is None:
            return frames
        return [frame for frame in frames if frame.id > last]

    def _advance(self, batch: list[Frame]) -> None:
        self.last_id = batch[-1].id
        self.status = batch[-1].status

    def close(self) -> None:
        self.listener.close()
