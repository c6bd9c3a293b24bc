"""One call for many identical requests, as long as the call has not started yet.

A reconnect storm brings every client of a session back at once with the same ``Last-Event-ID``: each would
read the same history from the store. Requests that arrive before the shared call starts (within
the same turn of the event loop) get its result; a request arriving later starts a new call. That rule is what
keeps replay exact: a client subscribes before it asks for history, so a call that starts after its request
also starts after its subscription.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Coalescer(Generic[K, V]):
    def __init__(self, call: Callable[[K], Awaitable[V]]) -> None:
        self._call = call
        self._not_started: dict[K, asyncio.Future[V]] = {}
        self._running: set[asyncio.Task[V]] = set()

    def __call__(self, key: K) -> asyncio.Future[V]:
        """The result of the call for ``key``; cancelling it leaves the other requests' call running."""
        future = self._not_started.get(key)
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._not_started[key] = loop.create_future()
            loop.call_soon(self._start, key)
        return asyncio.shield(future)

    def _start(self, key: K) -> None:
        future = self._not_started.pop(key)
        task = asyncio.ensure_future(self._call(key))
        self._running.add(task)
        task.add_done_callback(lambda done: self._settle(done, future))

    def _settle(self, task: asyncio.Task[V], future: asyncio.Future[V]) -> None:
        self._running.discard(task)
        if future.cancelled():
            return
        if task.cancelled():
            future.cancel()
        elif (error := task.exception()) is not None:
            future.set_exception(error)
        else:
            future.set_result(task.result())
