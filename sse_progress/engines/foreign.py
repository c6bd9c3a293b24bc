"""Data on a session's channel or keys that this service did not write: skipped, logged once, counted.

A producer ported from an older system may publish its own JSON on the session's channel or write the snapshot
key. Such data is never delivered and never fails a request: the feed goes on, a read treats it as absent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

log = logging.getLogger("sse_progress.foreign")

Where = Literal["channel", "snapshot", "history"]
PLACES: dict[Where, str] = {
    "channel": "a message on the channel",
    "snapshot": "the snapshot key",
    "history": "a history entry",
}

# Sessions already logged, per place; cleared when full so that the memory it takes stays bounded.
MAX_REMEMBERED = 10_000


class ForeignData:
    def __init__(self) -> None:
        self._logged: set[tuple[Where, str]] = set()
        # The server counts skips in Prometheus; a job's process, which has no metrics, only logs them.
        self.count: Callable[[Where], None] = lambda where: None

    def skipped(self, where: Where, session_id: str, reason: str) -> None:
        """Count one skipped message or value; log the first one of each session and place."""
        self.count(where)
        key = (where, session_id)
        if key in self._logged:
            return
        if len(self._logged) >= MAX_REMEMBERED:
            self._logged.clear()
        self._logged.add(key)
        what = PLACES[where]
        log.warning(
            "session %s: skipped %s, which is not an event this service wrote: %s. Publish through the server "
            "or a ProgressTracker; further ones on this session are counted in sse_progress_foreign_messages_total",
            session_id,
            what,
            reason,
        )


FOREIGN = ForeignData()
