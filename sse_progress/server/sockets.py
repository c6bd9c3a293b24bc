"""What a flood of idle sockets must not exhaust: a deadline for request headers, and the open-files limit.

uvicorn closes an idle keep-alive connection, but a connection that sends part of a request's headers and
then nothing (or a byte now and then) stays open for as long as its client likes; each holds a file
descriptor, and at the process's limit (1,024 by default) nobody else can connect.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from sse_progress.config import Settings
from sse_progress.server.metrics import METRICS

log = logging.getLogger("sse_progress.server")

# What `sse-progress serve` gives uvicorn as its HTTP protocol (an import string: workers import it themselves).
HTTP_PROTOCOL = "sse_progress.server.sockets:HeaderDeadlineProtocol"


@functools.cache
def header_timeout() -> float:
    """SSE_PROGRESS_HEADER_TIMEOUT, read once per process."""
    return Settings.from_env().header_timeout


class HeaderDeadlineProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's own HTTP protocol, plus: a connection must complete a request's headers within
    ``header_timeout()`` seconds of opening, and of each response it was sent; else it is dropped."""

    _header_deadline: asyncio.TimerHandle | None = None
    _awaited_after: object = None  # the request being served when the deadline was set (None: none yet)

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._set_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._set_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def _set_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._awaited_after = self.cycle
        self._header_deadline = self.loop.call_later(header_timeout(), self._header_deadline_passed)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self:  # closed, or a WebSocket now
            return
        cycle = self.cycle
        if cycle is not self._awaited_after or (cycle is not None and not cycle.response_complete):
            return  # a request's headers arrived in time; its response re-arms the deadline when it completes
        METRICS.header_timeouts.inc()
        self.transport.abort()  # close() would wait to flush to a client that may not read


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (each open stream holds one descriptor); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as error:
            log.warning("open files limit stays at %d: raising it to %d failed: %s", soft, hard, error)
            return soft
        log.info("open files limit: %d (raised from %d to the hard limit)", hard, soft)
        return hard
    log.info("open files limit: %d (the hard limit is %d)", soft, hard)
    return soft
