"""Cancellation that must not be lost in a loop that retries on errors.

A supervising loop (a feed's reconnect, the index watch, the bridge) catches the errors of a store that went
away and tries again. When its task is cancelled — the server is stopping — while a store call is in flight,
that call may end with one of those errors instead of ``CancelledError``: a client library closing its
connection on cancellation, or Python 3.11's ``asyncio.timeout`` expiring at the same moment. The loop would
then retry forever and the shutdown would wait for it forever. Each such handler asks first.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Raise ``CancelledError`` when the current task was asked to stop, whatever exception is being handled."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
