"""A supervising loop stops when its task is cancelled, even when the store call it was in turned the
cancellation into the kind of error the loop retries on."""

from __future__ import annotations

import asyncio

import pytest

from sse_progress.engines import EngineUnavailable, MemoryEngine
from sse_progress.engines.memory_index import MemoryIndex
from sse_progress.protocol.session_index import StallRule
from sse_progress.server import app
from sse_progress.server.index_watch import IndexWatch


class IndexLosingCancellation(MemoryIndex):
    """An index whose reads, once cancelled, raise ``EngineUnavailable`` as a closing client library might."""

    losing = True

    async def members(self, group: str | None, before: object, count: int) -> list[tuple[str, int]]:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if self.losing:
                raise EngineUnavailable("connection closed while reading") from None
            raise
        return []


async def test_the_index_watch_stops_although_its_read_turned_the_cancel_into_an_error() -> None:
    engine = MemoryEngine()
    index = engine.index = IndexLosingCancellation(lambda session_id: None)
    watch = IndexWatch(engine, StallRule(), ttl=60, tick_seconds=0.01)
    await watch.start()
    await asyncio.sleep(0.05)  # the watch is inside a read
    stopping = asyncio.create_task(watch.stop())
    done, _ = await asyncio.wait({stopping}, timeout=2)
    index.losing = False  # whatever happened, let the test end
    if not done:
        assert watch._task is not None
        watch._task.cancel()
        await stopping
    assert done, "the watch went on after it was cancelled"


async def test_a_shutdown_step_that_never_ends_is_left_behind_and_the_next_steps_run(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(app, "SHUTDOWN_STEP_SECONDS", 0.1)
    ran: list[str] = []
    release = asyncio.Event()

    async def stuck() -> None:
        while not release.is_set():  # ignores its cancellation, as a loop that lost it would
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                await release.wait()

    async def closes() -> None:
        ran.append("closes")

    stopping = asyncio.ensure_future(app.stop_within(stuck, closes))
    done, _ = await asyncio.wait({stopping}, timeout=2)
    release.set()  # whatever happened, let the stuck step end
    await stopping
    assert done, "the shutdown waited for the stuck step"
    assert ran == ["closes"]
    assert "stuck did not finish within 0.1 s" in caplog.text
