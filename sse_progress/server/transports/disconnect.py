"""Why a stream ended, and what each transport does about it: one table.

Every way a stream can end is a ``Disconnect``: the word the connection log gives, the WebSocket close code
and reason (none when the socket is already closed), whether the connection is reset instead of closed, and
the last words an SSE stream writes before it ends (its ``retry:`` hint).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sse_progress.engines import EngineUnavailable
from sse_progress.protocol.frames import shutdown_retry_line
from sse_progress.server.replay import ServerClosing, SessionExpired, SlowConsumer

CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason: str  # the connection log's word
    close_code: int | None  # the WebSocket close frame's code; None: nothing to send, the socket is closed
    close_text: str = ""  # the WebSocket close frame's reason
    # Reset (RST) rather than closed: a close would wait behind the bytes a client that does not read never takes.
    reset: bool = False
    # What an SSE stream writes last: a ``retry:`` that spreads the reconnects of a stopping server's clients.
    sse_last_words: Callable[[], bytes] | None = None


FINISHED = Disconnect("finished", CLOSE_NORMAL, "finished")
ALREADY_FINISHED = Disconnect("finished", CLOSE_NORMAL, "session already finished")
CLIENT_LEFT = Disconnect("client left", None)
TOO_SLOW = Disconnect("too slow", CLOSE_TRY_AGAIN, "too slow", reset=True)
SHUTDOWN = Disconnect("shutdown", CLOSE_SERVICE_RESTART, "shutdown", sse_last_words=shutdown_retry_line)
SHUT_BY_SERVER = Disconnect("shutdown", None)  # the ASGI server closed the WebSocket itself (1012)
STORE_UNAVAILABLE = Disconnect("event store unavailable", CLOSE_TRY_AGAIN, "event store unavailable")
SESSION_EXPIRED = Disconnect("session expired", CLOSE_NORMAL, "session expired: nothing is stored any more")
MESSAGE_TOO_BIG = Disconnect("message over 64 KiB", CLOSE_TOO_BIG, "message over 64 KiB")
INTERNAL_ERROR = Disconnect("internal error", CLOSE_INTERNAL_ERROR, "internal error")

STREAM_ENDINGS = (SlowConsumer, ServerClosing, EngineUnavailable, SessionExpired)
"""The exceptions with which a stream's frames end before its terminal event."""


def disconnect_for(error: BaseException) -> Disconnect:
    """The ``Disconnect`` of one of ``STREAM_ENDINGS``."""
    if isinstance(error, SlowConsumer):
        return TOO_SLOW
    if isinstance(error, ServerClosing):
        return SHUTDOWN
    if isinstance(error, EngineUnavailable):
        return STORE_UNAVAILABLE  # the client reconnects and resumes once it is back
    if isinstance(error, SessionExpired):
        return SESSION_EXPIRED  # the client reconnects with its last id and gets 204, or a 1000
    raise TypeError(f"not a stream ending: {error!r}") from error
