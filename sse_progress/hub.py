"""Per-process fan-out: one engine feed, one subscription per followed session, bounded per-client buffers.

Each event is parsed and turned into a ``Frame`` once, then the same object is appended to every
listener's buffer; transports encode nothing per client.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from .engines import Engine, EngineUnavailable, Feed
from .frames import Frame
from .metrics import METRICS

log = logging.getLogger("sse_progress.hub")

SUBSCRIBE_TIMEOUT = 10.0


class Listener:
    """One client's view of a session's live events: a bounded buffer and a wake-up signal."""

    __slots__ = (
        "_hub", "_wake", "closing", "frames", "needs_resync", "overflowed", "pending_bytes", "session_id", "transport"
    )  # fmt: skip

    def __init__(self, hub: Hub, session_id: str, transport: str) -> None:
        self._hub = hub
        self.session_id = session_id
        self.transport = transport
        self.frames: deque[Frame] = deque()
        self.pending_bytes = 0
        self.overflowed = False
        self.needs_resync = False
        self.closing = False
        self._wake = asyncio.Event()

    def push(self, frame: Frame) -> None:
        if self.overflowed:
            return
        self.frames.append(frame)
        self.pending_bytes += len(frame.data)
        if len(self.frames) > self._hub.buffer_events or self.pending_bytes > self._hub.buffer_bytes:
            # A client that cannot keep up is cut off rather than allowed to grow server memory; it resumes
            # from the stream with its last id.
            self.overflowed = True
            self.frames.clear()
            self.pending_bytes = 0
            METRICS.slow_consumer_disconnects.inc()
        self._wake.set()

    def set(self) -> None:
        """The server is shutting down: end this client's stream so it reconnects elsewhere.

        Named ``set`` because sse-starlette signals shutdown by calling ``set()`` on the response's event.
        """
        self.closing = True
        self._wake.set()

    def resync(self) -> None:
        self.needs_resync = True
        self._wake.set()

    async def wait(self) -> None:
        await self._wake.wait()
        self._wake.clear()

    def drain(self) -> list[Frame]:
        frames = list(self.frames)
        self.frames.clear()
        self.pending_bytes = 0
        return frames

    def close(self) -> None:
        self._hub.release(self)


class Hub:
    def __init__(self, engine: Engine, buffer_events: int = 256, buffer_bytes: int = 1 << 20) -> None:
        self.engine = engine
        self.buffer_events = buffer_events
        self.buffer_bytes = buffer_bytes
        self._sessions: dict[str, set[Listener]] = {}
        self._ready: dict[str, asyncio.Task[None]] = {}
        self._feed: Feed | None = None
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._feed = self.engine.open_feed(self._on_message, self._on_resync)

    async def stop(self) -> None:
        if self._feed is not None:
            await self._feed.close()
            self._feed = None

    @property
    def feed(self) -> Feed:
        if self._feed is None:
            raise RuntimeError("the hub is not started")
        return self._feed

    async def listen(self, session_id: str, transport: str) -> Listener:
        """A listener that receives every event published to the session from now on."""
        listener = Listener(self, session_id, transport)
        listeners = self._sessions.get(session_id)
        if listeners is None:
            listeners = self._sessions[session_id] = set()
            self._ready[session_id] = asyncio.ensure_future(self.feed.add(session_id))
        listeners.add(listener)
        try:
            await asyncio.wait_for(asyncio.shield(self._ready[session_id]), SUBSCRIBE_TIMEOUT)
        except BaseException as error:
            self.release(listener)
            if isinstance(error, (TimeoutError, OSError)):
                raise EngineUnavailable("could not subscribe to the session's events") from error
            raise
        return listener

    def release(self, listener: Listener) -> None:
        listeners = self._sessions.get(listener.session_id)
        if listeners is None or listener not in listeners:
            return
        listeners.discard(listener)
        if not listeners:
            del self._sessions[listener.session_id]
            ready = self._ready.pop(listener.session_id, None)
            if ready is not None and not ready.done():
                ready.cancel()
            task = asyncio.ensure_future(self.feed.remove(listener.session_id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def connections(self, session_id: str | None = None) -> int:
        if session_id is not None:
            return len(self._sessions.get(session_id, ()))
        return sum(len(listeners) for listeners in self._sessions.values())

    def connections_by_transport(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for listeners in self._sessions.values():
            for listener in listeners:
                counts[listener.transport] = counts.get(listener.transport, 0) + 1
        return counts

    @property
    def session_ids(self) -> list[str]:
        return list(self._sessions)

    def _on_message(self, session_id: str, envelope: bytes) -> None:
        listeners = self._sessions.get(session_id)
        if not listeners:
            return
        try:
            frame = Frame.from_envelope(envelope)
        except ValueError:
            log.warning("ignored a malformed message on session %s", session_id)
            return
        for listener in listeners:
            listener.push(frame)

    def _on_resync(self) -> None:
        METRICS.redis_reconnects.inc()
        for listeners in self._sessions.values():
            for listener in listeners:
                listener.resync()
