"""Per-process fan-out: one engine feed, one subscription per followed session, bounded per-client buffers.

Each event is parsed and turned into a ``Frame`` once, then the same object is appended to every
listener's buffer; transports encode nothing per client.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

from sse_progress.engines import Engine, EngineUnavailable, Feed, Page, SessionView
from sse_progress.engines.foreign import FOREIGN
from sse_progress.protocol.events import EventId
from sse_progress.protocol.frames import ForeignEnvelope, Frame
from sse_progress.server.coalesce import Coalescer
from sse_progress.server.metrics import METRICS
from sse_progress.server.shutdown import server_is_exiting
from sse_progress.server.stream_socket import SocketWriter

# Well below uvicorn's graceful shutdown timeout and a proxy's first-byte timeout: a stream that cannot
# subscribe by then answers "retry" (200) instead of being cut off with a 5xx.
SUBSCRIBE_TIMEOUT = 3.0
SHUTDOWN_POLL_SECONDS = 0.25
# How often a stream waiting for its subscription asks the feed whether it is down (``Feed.problem_for``).
FEED_CHECK_SECONDS = 0.1
# A replay page holds its envelopes, their encoded frames and the joined write at once: a quarter of the
# per-client buffer each keeps a replaying client's memory under that buffer whatever the history's size.
REPLAY_PAGE_SHARE = 4


class Listener:
    """One client's view of a session's live events: a bounded buffer and a wake-up signal."""

    __slots__ = (
        "_hub", "_offer", "_waiter", "_woken", "aborted", "beat_group", "closing", "frames", "gone",
        "heartbeat_due", "needs_resync", "overflowed", "pending_bytes", "session_id", "stall_mark", "task",
        "transport", "writer", "writes", "writing",
    )  # fmt: skip

    def __init__(self, hub: Hub, session_id: str, transport: str, beat_group: set[Listener]) -> None:
        self._hub = hub
        self.session_id = session_id
        self.transport = transport
        self.frames: list[Frame] = []
        self.pending_bytes = 0
        self.overflowed = False
        self.needs_resync = False
        self.closing = False
        # A bare future rather than an asyncio.Event: thousands of idle listeners each keep one.
        self._waiter: asyncio.Future[None] | None = None
        self._woken = False
        # Kept by a transport that writes straight to the socket (see transports/sse.py): the task to abort
        # when its client stalls, whether it is blocked in a write, and how many writes it has finished.
        self.task: asyncio.Task[object] | None = None
        self.writing = False
        self.writes = 0
        self.stall_mark = -1
        self.aborted = False
        self.gone = False
        self.heartbeat_due = False
        # While its stream waits with nothing queued, a live frame may go straight to the client's socket:
        # ``_offer`` writes it (see ``SessionCursor.offer``), ``writer`` judges the socket at heartbeats.
        self._offer: Callable[[Frame], bool] | None = None
        self.writer: SocketWriter | None = None
        self.beat_group = beat_group  # the hub's heartbeat group this listener belongs to
        beat_group.add(self)

    def push(self, frame: Frame) -> bool:
        """Deliver ``frame``: True when it was written to the client's socket at once, False when it was
        queued for the stream's task (or dropped, past the bound)."""
        offer = self._offer
        if offer is not None:
            if offer(frame):
                if self.writer is not None and self.writer.over_limit():
                    self._overflow()
                return True
            self._offer = None  # queued from now on, so that nothing overtakes this frame
        if self.overflowed:
            return False
        self.frames.append(frame)
        self.pending_bytes += len(frame.data)
        if len(self.frames) > self._hub.buffer_events or self.pending_bytes > self._hub.buffer_bytes:
            self._overflow()
        self._wake()
        return False

    def _overflow(self) -> None:
        """A client that cannot keep up is cut off rather than allowed to grow server memory; it resumes from the
        stream with its last id."""
        self.overflowed = True
        self.frames = []
        self.pending_bytes = 0
        METRICS.slow_consumer_disconnects.inc()
        if self.writing:
            self.abort()  # blocked in a write to a client that stopped reading: a wake-up would never arrive
        self._wake()

    def abort(self) -> None:
        """Cancel the transport's task, which is blocked writing to a client that does not read."""
        if self.task is not None and not self.aborted:
            self.aborted = True
            self.task.cancel()

    def left(self) -> None:
        """The client disconnected."""
        self.gone = True
        self._wake()

    def shut_down(self) -> None:
        """The server is shutting down: end this client's stream so it reconnects elsewhere."""
        self.closing = True
        if self.writing:
            self.abort()  # a client that is not reading now would hold the exit up until it did
        self._wake()

    def resync(self) -> None:
        self.needs_resync = True
        self._wake()

    def beat(self) -> None:
        """Called by the hub's timer once per heartbeat interval."""
        if self._offer is not None and self.writer is not None:
            # Waiting with nothing queued: the heartbeat goes straight to the socket too, unless the bytes
            # already there have not moved since the last one.
            if self.writer.stalled():
                self._overflow()
            elif not self.writer.heartbeat():
                self._wake()  # the connection is closing: the stream's task finds out why
            return
        if self.writer is not None:
            self.writer.forget_progress()
        if self.writing:
            if self.stall_mark == self.writes:
                # The same write was in progress at the previous beat: the client stopped reading.
                METRICS.slow_consumer_disconnects.inc()
                self.abort()
                return
            self.stall_mark = self.writes
        else:
            self.stall_mark = -1
        self.heartbeat_due = True
        self._wake()

    async def write(self, sending: Awaitable[None]) -> None:
        """Awaits one write to the client, marked as in progress so that a stalled one can be aborted."""
        self.writing = True
        try:
            await sending
        finally:
            self.writing = False
        self.writes += 1

    async def wait(self, offer: Callable[[Frame], bool] | None = None) -> None:
        """Wait to be woken; meanwhile, when given, ``offer`` may write live frames straight to the socket (it
        returns False for a frame the stream's task must handle). The first wake-up ends that."""
        if not self._woken:
            self._waiter = asyncio.get_running_loop().create_future()
            self._offer = offer
            try:
                await self._waiter
            finally:
                self._waiter = None
                self._offer = None
        self._woken = False

    def _wake(self) -> None:
        self._woken = True
        self._offer = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def drain(self) -> list[Frame]:
        frames, self.frames = self.frames, []
        self.pending_bytes = 0
        return frames

    def close(self) -> None:
        self._hub.release(self)


class Hub:
    def __init__(
        self, engine: Engine, buffer_events: int = 256, buffer_bytes: int = 1 << 20, heartbeat: float = 15.0
    ) -> None:
        self.engine = engine
        self.buffer_events = buffer_events
        self.buffer_bytes = buffer_bytes
        self.heartbeat = heartbeat
        self.closing = False
        self.page = Page(max(1, buffer_bytes // REPLAY_PAGE_SHARE), buffer_events)
        self._reads: Coalescer[tuple[str, EventId | None], SessionView] = Coalescer(self._read_page)
        self._ticker: asyncio.Task[None] | None = None
        # Listeners are spread over as many groups as the timer ticks per heartbeat, and each tick beats one
        # group: 10,000 heartbeat writes at once would stall every delivery for a tenth of a second.
        self._tick_seconds = min(heartbeat, SHUTDOWN_POLL_SECONDS)
        self._beat_groups: list[set[Listener]] = [set() for _ in range(max(1, round(heartbeat / self._tick_seconds)))]
        self._joined = 0
        self._listening = 0  # listeners of every session: read at each connect (the connection limit)
        self._sessions: dict[str, set[Listener]] = {}
        self._ready: dict[str, asyncio.Task[None]] = {}
        self._feed: Feed | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._delivered_sse = METRICS.events_delivered.labels("sse")
        self._delivered_ws = METRICS.events_delivered.labels("ws")
        self._written_sse = METRICS.events_written_to_socket.labels("sse")
        self._written_ws = METRICS.events_written_to_socket.labels("ws")

    async def start(self) -> None:
        self._feed = self.engine.open_feed(self._on_message, self._on_resync)
        self._ticker = asyncio.ensure_future(self._tick())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._feed is not None:
            await self._feed.close()
            self._feed = None

    @property
    def feed(self) -> Feed:
        if self._feed is None:
            raise RuntimeError("the hub is not started")
        return self._feed

    def read_session(self, session_id: str, after: EventId | None) -> Awaitable[SessionView]:
        """``read_page``, shared by identical requests made before the read starts (see ``coalesce``)."""
        return self._reads((session_id, after))

    def read_page(self, session_id: str, after: EventId | None) -> Awaitable[SessionView]:
        """``Engine.read`` of at most one page of history: a replay continues after it once the client read it."""
        return self.engine.read(session_id, after, self.page)

    def _read_page(self, key: tuple[str, EventId | None]) -> Awaitable[SessionView]:
        return self.read_page(*key)

    async def listen(self, session_id: str, transport: str) -> Listener:
        """A listener that receives every event published to the session from now on."""
        self._joined += 1
        listener = Listener(self, session_id, transport, self._beat_groups[self._joined % len(self._beat_groups)])
        listeners = self._sessions.get(session_id)
        if listeners is None:
            listeners = self._sessions[session_id] = set()
            self._ready[session_id] = asyncio.ensure_future(self.feed.add(session_id))
        listeners.add(listener)
        self._listening += 1
        if self.closing:
            listener.shut_down()
        try:
            await self._subscribed(session_id, self._ready[session_id])
        except BaseException as error:
            self.release(listener)
            if isinstance(error, OSError):
                raise EngineUnavailable("could not subscribe to the session's events") from error
            raise
        return listener

    async def _subscribed(self, session_id: str, ready: asyncio.Task[None]) -> None:
        """Wait for a session's subscription, giving up (``EngineUnavailable``) as soon as it cannot come soon:
        the feed says it will not (``Feed.problem_for``), the server is stopping, or ``SUBSCRIBE_TIMEOUT`` passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SUBSCRIBE_TIMEOUT
        while not ready.done():
            problem = self.feed.problem_for(session_id)
            if problem is not None:
                raise EngineUnavailable(f"live feed not delivering: {problem}")
            if self.closing or server_is_exiting():
                raise EngineUnavailable("the server is shutting down")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise EngineUnavailable("could not subscribe to the session's events in time")
            await asyncio.wait({ready}, timeout=min(remaining, SHUTDOWN_POLL_SECONDS, FEED_CHECK_SECONDS))
        ready.result()

    def release(self, listener: Listener) -> None:
        listeners = self._sessions.get(listener.session_id)
        if listeners is None or listener not in listeners:
            return
        listeners.discard(listener)
        self._listening -= 1
        listener.beat_group.discard(listener)
        if not listeners:
            del self._sessions[listener.session_id]
            ready = self._ready.pop(listener.session_id, None)
            if ready is not None and not ready.done():
                ready.cancel()
            task = asyncio.ensure_future(self.feed.remove(listener.session_id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _tick(self) -> None:
        """One timer for every connection of the process: heartbeats, stalled writes, and shutdown."""
        for tick in itertools.count(1):
            await asyncio.sleep(self._tick_seconds)
            if not self.closing and server_is_exiting():
                self.close_all()
            if self.closing:
                self._abort_blocked_writes()
            for listener in list(self._beat_groups[tick % len(self._beat_groups)]):
                listener.beat()

    def close_all(self) -> None:
        """The server is stopping: end every stream so its client reconnects, to another instance if any."""
        self.closing = True
        for listeners in self._sessions.values():
            for listener in listeners:
                listener.shut_down()

    def _abort_blocked_writes(self) -> None:
        """While stopping: a goodbye that does not leave at once goes to a client that is not reading."""
        for listeners in self._sessions.values():
            for listener in listeners:
                if listener.writing:
                    listener.abort()

    def connections(self, session_id: str | None = None) -> int:
        if session_id is not None:
            return len(self._sessions.get(session_id, ()))
        return self._listening

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
            frame = Frame.from_envelope(envelope, session_id)
        except ForeignEnvelope as error:
            FOREIGN.skipped("channel", session_id, str(error))
            return
        sse = ws = 0
        for listener in listeners:
            if listener.push(frame):
                if listener.transport == "sse":
                    sse += 1
                else:
                    ws += 1
        # Frames written straight to sockets are counted here, once per event rather than once per client.
        if sse:
            self._delivered_sse.inc(sse)
            self._written_sse.inc(sse)
        if ws:
            self._delivered_ws.inc(ws)
            self._written_ws.inc(ws)

    def _on_resync(self) -> None:
        METRICS.redis_reconnects.inc()
        for listeners in self._sessions.values():
            for listener in listeners:
                listener.resync()
