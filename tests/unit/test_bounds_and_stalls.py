"""Per-client bounds and stall detection, in-process: a listener's buffer overflows into a disconnect, a write
that makes no progress across two heartbeats is aborted, and a session is stalled by the index's rule."""

from __future__ import annotations

import asyncio

import pytest

from sse_progress.engines import MemoryEngine
from sse_progress.protocol.events import EventDraft
from sse_progress.protocol.frames import Frame
from sse_progress.protocol.session_index import IndexEntry, StallRule
from sse_progress.server.hub import Hub, Listener
from sse_progress.server.metrics import METRICS


def frames(count: int, padding: int = 0) -> list[Frame]:
    engine = MemoryEngine()
    extra = {"pad": "x" * padding} if padding else None
    drafts = [
        EventDraft(session_id="b", etapa_atual=n, total_etapas=99, dados_extra=extra) for n in range(1, count + 1)
    ]
    return [Frame.from_envelope(engine.publish_now(draft).envelope, "b") for draft in drafts]


def listener(buffer_events: int = 256, buffer_bytes: int = 1 << 20) -> Listener:
    return Listener(Hub(MemoryEngine(), buffer_events, buffer_bytes), "b", "sse", set())


def disconnects() -> float:
    return METRICS.slow_consumer_disconnects._value.get()


def test_a_listener_within_its_bounds_keeps_every_frame() -> None:
    client = listener(buffer_events=3)
    for frame in frames(3):
        client.push(frame)
    assert not client.overflowed and len(client.drain()) == 3 and client.pending_bytes == 0


def test_one_event_past_the_count_bound_overflows_frees_the_buffer_and_counts_a_disconnect() -> None:
    client, before = listener(buffer_events=3), disconnects()
    for frame in frames(4):
        client.push(frame)
    assert client.overflowed and client.frames == [] and client.pending_bytes == 0
    assert disconnects() == before + 1
    for frame in frames(2):  # an overflowed listener takes nothing more: its client resumes from the store
        client.push(frame)
    assert client.frames == [] and disconnects() == before + 1


def test_bytes_past_the_byte_bound_overflow_before_the_count_bound() -> None:
    client = listener(buffer_events=256, buffer_bytes=2048)
    for frame in frames(3, padding=900):
        client.push(frame)
    assert client.overflowed and client.frames == []


async def test_an_overflow_during_a_blocked_write_aborts_the_writer() -> None:
    client = listener(buffer_events=1)
    blocked = asyncio.get_running_loop().create_future()
    client.task = asyncio.create_task(client.write(blocked))
    await asyncio.sleep(0)
    for frame in frames(2):
        client.push(frame)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(client.task, 5)
    assert client.aborted


async def test_a_write_stuck_across_two_heartbeats_is_aborted() -> None:
    client, before = listener(), disconnects()
    blocked = asyncio.get_running_loop().create_future()
    client.task = asyncio.create_task(client.write(blocked))
    await asyncio.sleep(0)
    client.beat()  # first beat: marks the write in progress
    assert not client.aborted and client.heartbeat_due
    client.beat()  # second beat, same write: the client stopped reading
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(client.task, 5)
    assert client.aborted and disconnects() == before + 1


async def test_a_slow_write_that_progresses_between_heartbeats_is_not_aborted() -> None:
    client = listener()
    loop = asyncio.get_running_loop()
    for _ in range(3):
        pending = loop.create_future()
        client.task = asyncio.create_task(client.write(pending))
        await asyncio.sleep(0)
        client.beat()  # each beat sees a different write in progress
        pending.set_result(None)
        await asyncio.wait_for(client.task, 5)
    assert not client.aborted and client.writes == 3


def test_an_idle_listener_gets_a_heartbeat_and_no_stall_mark() -> None:
    client = listener()
    client.beat()
    assert client.heartbeat_due and client.stall_mark == -1 and not client.aborted


def entry(status: str, last_event_ms: int, durations: list[tuple[int, int]] | None = None) -> IndexEntry:
    envelope = b'{"id":"1-0","session_id":"s","status":"%s"}' % status.encode()
    return IndexEntry("s", last_event_ms, envelope, durations or [])


def test_without_step_durations_a_session_stalls_after_the_floor() -> None:
    rule = StallRule(floor_s=60, factor=4)
    assert not rule.is_stalled(entry("running", 0), now_ms=60_000)
    assert rule.is_stalled(entry("running", 0), now_ms=60_001)


def test_slow_steps_raise_the_threshold_to_factor_times_their_median() -> None:
    rule = StallRule(floor_s=60, factor=4)
    steps = [(1, 20_000), (2, 30_000), (3, 90_000)]  # median 30 s: stalled after 120 s, not 60
    assert rule.threshold_s(steps) == 120
    assert not rule.is_stalled(entry("running", 0, steps), now_ms=100_000)
    assert rule.is_stalled(entry("running", 0, steps), now_ms=120_001)


def test_fast_steps_never_lower_the_threshold_below_the_floor() -> None:
    assert StallRule(floor_s=60, factor=4).threshold_s([(1, 100), (2, 200)]) == 60


@pytest.mark.parametrize("status", ["success", "error", "cancelled"])
def test_a_finished_session_is_never_stalled(status: str) -> None:
    assert not StallRule(floor_s=1).is_stalled(entry(status, 0), now_ms=10**9)
