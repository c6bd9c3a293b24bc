"""``sse-progress bridge`` against the older bot's tracker, written as that code was (plain redis-py SET/PUBLISH).

Real parts: a redis-server of this module's own (the bridge turns on keyspace notifications), a uvicorn server,
bridge subprocesses, SSE followers.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis

from tests.support.clients import Received, collect_until_end, follow, id_key
from tests.support.legacy import BridgeProcess, OldTracker
from tests.support.processes import LiveServer, RedisServer, pings, wait_until

STEPS = 15
STEP_PAUSE = 0.1  # a real bot spends seconds per screen


@pytest.fixture
def client(legacy_redis: RedisServer) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(legacy_redis.url)
    yield connection
    connection.close()


async def run_old_job(tracker: OldTracker, steps: range, finish: bool = True) -> None:
    """The older bot's loop, in a thread (its tracker is synchronous), a pause per screen."""

    def job() -> None:
        for etapa in steps:
            tracker.update_progress(etapa, f"Processando tela {etapa}...")
            time.sleep(STEP_PAUSE)
        if finish:
            tracker.complete()

    await asyncio.to_thread(job)


def check_whole_job(frames: list[Received]) -> None:
    """15 progress updates then the terminal event: in order, once each, every one with an id."""
    assert [f.kind for f in frames] == ["progress_update"] * (STEPS + 1), frames
    assert [f.data["etapa_atual"] for f in frames] == [*range(1, STEPS + 1), STEPS]
    assert [f.data["status"] for f in frames] == ["running"] * STEPS + ["success"]
    assert [f.data["mensagem"] for f in frames[:-1]] == [f"Processando tela {n}..." for n in range(1, STEPS + 1)]
    assert frames[-1].data["mensagem"] == "Cotação concluída"
    assert frames[-1].data["percentual"] == 100.0
    ids = [id_key(f.id) for f in frames]
    assert ids == sorted(set(ids)), "ids must be unique and increasing"


@pytest.mark.parametrize("publish", [True, False], ids=["set-and-publish", "set-only"])
async def test_old_tracker_steps_reach_an_sse_follower_once_in_order_with_ids(
    legacy_server: LiveServer, bridge: BridgeProcess, client: redis.Redis, session_id: str, publish: bool
) -> None:
    async with follow("sse", legacy_server.url, session_id, legacy_server.token(session_id)) as follower:
        job = asyncio.create_task(run_old_job(OldTracker(client, session_id, publish=publish), range(1, STEPS + 1)))
        frames = await collect_until_end(follower, timeout=30)
        await job
    check_whole_job(frames)
    stored = client.xlen(f"rpa:events:{{{session_id}}}")
    assert stored == STEPS + 1


async def test_bridge_killed_and_restarted_mid_job_loses_and_repeats_nothing(
    legacy_server: LiveServer, bridge: BridgeProcess, client: redis.Redis, session_id: str
) -> None:
    tracker = OldTracker(client, session_id, publish=True)
    async with follow("sse", legacy_server.url, session_id, legacy_server.token(session_id)) as follower:
        await run_old_job(tracker, range(1, 8), finish=False)
        first = [await follower.next(15) for _ in range(7)]
        bridge.stop(kill=True)
        await run_old_job(tracker, range(8, 9), finish=False)  # while no bridge runs: only the key keeps it
        bridge.start()  # its start-up scan reads step 8 from the key, and every other key again
        await run_old_job(tracker, range(9, STEPS + 1))
        rest = await collect_until_end(follower, timeout=30)
    check_whole_job([f for f in first if f is not None] + rest)
    assert client.xlen(f"rpa:events:{{{session_id}}}") == STEPS + 1


async def test_two_bridges_store_each_update_once(
    legacy_server: LiveServer, legacy_redis: RedisServer, bridge: BridgeProcess, client: redis.Redis, session_id: str
) -> None:
    second = BridgeProcess(legacy_redis.url)
    second.start()
    try:
        async with follow("sse", legacy_server.url, session_id, legacy_server.token(session_id)) as follower:
            job = asyncio.create_task(run_old_job(OldTracker(client, session_id), range(1, STEPS + 1)))
            frames = await collect_until_end(follower, timeout=30)
            await job
        check_whole_job(frames)
        assert client.xlen(f"rpa:events:{{{session_id}}}") == STEPS + 1
        # Each bridge saw each update twice (channel and key); together they stored it once.
        wait_until(lambda: bridge.total("stored") + second.total("stored") >= STEPS + 1, 10, "the counters")
        assert bridge.total("stored") + second.total("stored") == STEPS + 1
        assert second.total("stored") + second.total("duplicate") + second.total("ended") >= STEPS + 1
    finally:
        second.stop()


GARBAGE = [
    b"not json",
    b"[1, 2, 3]",
    b'{"etapa_atual": 3}',  # no timestamp: nothing to tell repeats apart by
    b'{"etapa_atual": "three", "timestamp": "2026-11-29T10:00:00"}',
    b'{"etapa_atual": 3, "status": "exploded", "timestamp": "2026-11-29T10:00:00"}',
    b'{"etapa_atual": 3, "timestamp": "yesterday"}',
    b'{"etapa_atual": 3, "timestamp": "0001-01-01T00:00:00"}',  # before the epoch, and no local time for it
    b'{"etapa_atual": 3, "dados_extra": [1], "timestamp": "2026-11-29T10:00:00"}',
    b'{"etapa_atual": 3, "session_id": "another", "timestamp": "2026-11-29T10:00:00"}',
    b'{"type": "pong", "timestamp": "2026-11-29T10:00:00"}',
    b"\xff\xfe",
]


async def test_garbage_on_the_channel_and_in_the_key_is_skipped_counted_and_stores_nothing(
    legacy_server: LiveServer, bridge: BridgeProcess, client: redis.Redis, session_id: str
) -> None:
    key_only = session_id + "-k"  # a bot that only SETs: its key is what the bridge reads
    for raw in GARBAGE:
        client.publish(f"rpa:session:{session_id}", raw)
        client.set(f"rpa:progress:{key_only}", raw)
        await asyncio.sleep(0.1)  # the key is read after the settle delay: let each garbage value be seen
    client.publish("rpa:session:bad session id!", b'{"etapa_atual": 1, "timestamp": "2026-11-29T10:00:00"}')
    wait_until(lambda: bridge.total("skipped") >= 2 * len(GARBAGE) + 1, 15, "every garbage update to be counted")
    counts = bridge.counts()
    assert counts[("channel", "skipped")] == len(GARBAGE) + 1
    assert counts[("key", "skipped")] == len(GARBAGE)
    assert bridge.total("stored") == 0
    assert not client.exists(
        f"rpa:events:{{{session_id}}}", f"rpa:progress:{{{session_id}}}", f"rpa:meta:{{{session_id}}}"
    )
    log = bridge.log.read_text()
    assert "skipped a legacy update from rpa:session:" in log and "status: 'exploded' is not a known status" in log
    # Still bridging: a good update of the same session afterwards is stored.
    async with follow("sse", legacy_server.url, session_id, legacy_server.token(session_id)) as follower:
        await run_old_job(OldTracker(client, session_id), range(1, STEPS + 1))
        check_whole_job(await collect_until_end(follower, timeout=30))


async def test_a_session_begun_before_the_bridge_is_picked_up_by_its_start_up_scan(
    legacy_server: LiveServer, legacy_redis: RedisServer, client: redis.Redis, session_id: str
) -> None:
    tracker = OldTracker(client, session_id, publish=False)
    await run_old_job(tracker, range(1, 4), finish=False)
    late = BridgeProcess(legacy_redis.url)
    late.start()
    try:
        snapshot = json.loads(client.get(f"rpa:progress:{{{session_id}}}") or b"null")
        assert snapshot is not None and snapshot["etapa_atual"] == 3
        assert late.counts()[("scan", "stored")] >= 1
    finally:
        late.stop()


class RedisWithoutConfig(RedisServer):
    """A redis-server whose CONFIG command is renamed away, as managed Redis services refuse it."""

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--rename-command", "CONFIG", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        connection = redis.Redis.from_url(self.url)
        wait_until(lambda: pings(connection), 30, "the redis-server without CONFIG")
        connection.close()


async def test_where_config_is_refused_the_bridge_says_what_to_set_and_rescans(session_id: str) -> None:
    locked = RedisWithoutConfig()
    locked.start()
    connection = redis.Redis.from_url(locked.url)
    bridge = BridgeProcess(locked.url)
    try:
        bridge.start()
        log = bridge.log.read_text()
        assert "keyspace notifications are off" in log and "notify-keyspace-events K$" in log
        assert "a scan every 2s" in log
        OldTracker(connection, session_id, publish=False).update_progress(4, "Tela 4")
        wait_until(lambda: connection.exists(f"rpa:progress:{{{session_id}}}") == 1, 15, "the rescan")
        assert json.loads(connection.get(f"rpa:progress:{{{session_id}}}") or b"{}")["etapa_atual"] == 4
    finally:
        bridge.stop()
        connection.close()
        locked.stop()


async def test_redis_restarted_the_bridge_reconnects_turns_notifications_on_again_and_rescans(session_id: str) -> None:
    store = RedisServer(persistent=True)  # the data survives; the notification setting (not persisted) does not
    store.start()
    live = LiveServer(store.url)
    live.start()
    bridge = BridgeProcess(store.url)
    try:
        bridge.start()
        async with follow("sse", live.url, session_id, live.token(session_id)) as follower:
            with redis.Redis.from_url(store.url) as before:
                await run_old_job(OldTracker(before, session_id, publish=False), range(1, 6), finish=False)
                first = [await follower.next(15) for _ in range(5)]
            store.restart()
            wait_until(lambda: bridge.log.read_text().count("bridge ready") == 2, 30, "the bridge to reconnect")
            assert "lost Redis" in bridge.log.read_text()
            with redis.Redis.from_url(store.url) as after:
                assert "K" in after.config_get("notify-keyspace-events")["notify-keyspace-events"]
                await run_old_job(OldTracker(after, session_id, publish=False), range(6, STEPS + 1))
            rest = await collect_until_end(follower, timeout=30)
        check_whole_job([f for f in first if f is not None] + rest)
    finally:
        bridge.stop()
        live.stop()
        store.stop()


async def test_redis_killed_mid_job_the_bridge_is_live_within_2s_and_bridges_every_later_step(session_id: str) -> None:
    store = RedisServer(persistent=True)  # appendfsync always: every step acknowledged before the kill survives it
    store.start()
    bridge = BridgeProcess(store.url)
    bridge.start()
    steps = 50
    written_at: dict[int, float] = {}  # when the write that stored each step was sent
    writer = redis.Redis.from_url(store.url)
    tracker = OldTracker(writer, session_id, total_etapas=steps, publish=False)

    def job() -> None:
        for etapa in range(1, steps + 1):
            while True:  # the bot retries a write until Redis takes it
                sent = time.monotonic()
                try:
                    tracker.update_progress(etapa, f"Processando tela {etapa}...")
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            written_at[etapa] = sent
            time.sleep(0.2)

    try:
        running = asyncio.create_task(asyncio.to_thread(job))
        while len(written_at) < 10:
            await asyncio.sleep(0.05)
        store.stop(kill=True)
        await asyncio.sleep(2)
        store.start()
        back = time.monotonic()
        await asyncio.to_thread(
            wait_until, lambda: bridge.log.read_text().count("bridge ready") == 2, 30, "the bridge to reconnect"
        )
        live_at = time.monotonic()
        print(f"bridge live again {live_at - back:.2f}s after Redis answered")
        # Its first attempt once Redis answers succeeds: no connection from before the restart is used.
        assert "lost Redis" not in bridge.log.read_text().rsplit("set notify-keyspace-events", 1)[1]
        await running
        stream = f"rpa:events:{{{session_id}}}"
        await asyncio.to_thread(
            wait_until,
            lambda: any(json.loads(f[b"e"])["etapa_atual"] == steps for _, f in writer.xrange(stream)),
            15,
            "the last step to be bridged",
        )
        stored = [json.loads(fields[b"e"])["etapa_atual"] for _, fields in writer.xrange(stream)]
        assert stored == sorted(set(stored)), "in order, once each"
        later = [etapa for etapa, sent in written_at.items() if sent > live_at]
        missed = sorted(set(later) - set(stored))
        print(f"{len(later)} steps written once the bridge was live again; missed: {missed}")
        assert later and missed == []
        assert live_at - back < 2.5
    finally:
        writer.close()
        bridge.stop()
        store.stop()


async def test_the_bridge_metrics_show_a_redis_outage_and_count_its_reconnect() -> None:
    store = RedisServer()
    store.start()
    bridge = BridgeProcess(store.url)
    bridge.start()
    try:
        assert bridge.metric("sse_progress_bridge_connected") == 1
        assert bridge.metric("sse_progress_redis_reconnects_total") == 0
        store.stop(kill=True)
        wait_until(lambda: bridge.metric("sse_progress_bridge_connected") == 0, 10, "the gauge to show the outage")
        store.start()
        wait_until(lambda: bridge.metric("sse_progress_bridge_connected") == 1, 10, "the gauge to show the return")
        assert bridge.metric("sse_progress_redis_reconnects_total") == 1
    finally:
        bridge.stop()
        store.stop()
