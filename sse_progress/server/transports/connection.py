"""One stream from open to close, whatever its transport: the open-connections gauge and the two log lines."""

from __future__ import annotations

import time

from sse_progress.server.logs import log_connection_closed, log_connection_opened
from sse_progress.server.metrics import METRICS


class ConnectionRecord:
    """Counts a stream as open and logs it; ``closed()`` undoes the count and logs how it went."""

    __slots__ = ("session_id", "started", "transport")

    def __init__(self, session_id: str, transport: str, resume: str | None) -> None:
        self.session_id = session_id
        self.transport = transport
        self.started = time.monotonic()
        METRICS.open_connections.labels(transport).inc()
        log_connection_opened(session_id, transport, resume)

    def closed(self, reason: str, sent: int) -> None:
        """The stream ended for ``reason`` after giving its client ``sent`` events."""
        METRICS.open_connections.labels(self.transport).dec()
        duration = time.monotonic() - self.started
        log_connection_closed(self.session_id, self.transport, duration, sent, reason)
