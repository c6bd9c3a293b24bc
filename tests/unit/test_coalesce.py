"""The coalescer shares a call only among requests made before it started."""

from __future__ import annotations

import asyncio

import pytest

from sse_progress.server.coalesce import Coalescer


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = asyncio.Event()

    async def __call__(self, key: str) -> str:
        self.calls.append(key)
        await self.release.wait()
        if key == "bad":
            raise LookupError(key)
        return f"result of {key} #{len(self.calls)}"


async def test_requests_made_before_the_call_starts_share_one_call_per_key() -> None:
    recorder = Recorder()
    coalesce = Coalescer(recorder)
    first, second, other = coalesce("a"), coalesce("a"), coalesce("b")
    recorder.release.set()
    assert await first == await second == "result of a #1"
    assert await other == "result of b #2"
    assert recorder.calls == ["a", "b"]


async def test_a_request_made_after_the_call_started_gets_a_new_call() -> None:
    recorder = Recorder()
    coalesce = Coalescer(recorder)
    early = coalesce("a")
    while not recorder.calls:  # the shared call has started
        await asyncio.sleep(0)
    late = coalesce("a")
    recorder.release.set()
    assert (await early, await late) == ("result of a #1", "result of a #2")


async def test_an_error_reaches_every_request_and_one_cancelled_request_cancels_no_other() -> None:
    recorder = Recorder()
    coalesce = Coalescer(recorder)
    failing = [coalesce("bad"), coalesce("bad")]
    leaving, staying = coalesce("a"), coalesce("a")
    await asyncio.sleep(0)
    leaving.cancel()
    recorder.release.set()
    for request in failing:
        with pytest.raises(LookupError):
            await request
    assert await staying == "result of a #2"
