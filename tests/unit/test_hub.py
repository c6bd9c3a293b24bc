"""The hub's one timer: every listener gets its heartbeat once per interval, not all of them at once."""

from __future__ import annotations

import asyncio

from sse_progress.engines.memory import MemoryEngine
from sse_progress.server.hub import Hub

HEARTBEAT = 1.0
LISTENERS = 40


async def test_heartbeats_reach_every_listener_once_per_interval_spread_over_the_interval() -> None:
    hub = Hub(MemoryEngine(), heartbeat=HEARTBEAT)
    await hub.start()
    loop = asyncio.get_running_loop()
    try:
        listeners = [await hub.listen(f"s{n % 4}", "sse") for n in range(LISTENERS)]
        started = loop.time()

        async def first_beat(listener):  # type: ignore[no-untyped-def]
            await listener.wait()
            assert listener.heartbeat_due
            return loop.time() - started

        beats = await asyncio.wait_for(asyncio.gather(*(first_beat(listener) for listener in listeners)), 5)
    finally:
        for listener in listeners:
            listener.close()
        await hub.stop()
    assert max(beats) <= HEARTBEAT + 0.2
    # One burst for everybody would be one instant; spread, they fall on every tick of the interval.
    assert len({round(beat, 1) for beat in beats}) >= 3, sorted(beats)


async def test_the_hub_counts_its_listeners_per_session_and_in_all() -> None:
    hub = Hub(MemoryEngine())
    await hub.start()
    try:
        listeners = [await hub.listen(f"s{n % 3}", "sse") for n in range(7)]
        assert hub.connections() == 7 and hub.connections("s0") == 3
        listeners[0].close()
        listeners[0].close()  # a second release changes nothing
        assert hub.connections() == 6 and hub.connections("s0") == 2
        for listener in listeners[1:]:
            listener.close()
        assert hub.connections() == 0 and hub.session_ids == []
    finally:
        await hub.stop()
