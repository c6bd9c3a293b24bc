"""A new watcher makes a lost Pub/Sub connection retry at once, on one Redis and on each master of a cluster."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from sse_progress.engines import Feed
from sse_progress.engines.redis.cluster import RedisClusterEngine
from sse_progress.engines.redis.engine import RedisEngine
from tests.support.processes import RedisClusterNodes, RedisServer, session_id_on_shard

# The backoff after the 5th failure in a row is at least 1 s (see ``subscription.backoff``): a watcher served sooner
# than that after the failure was served by a retry it triggered.
FAILURES = 5
BACKOFF_AT_LEAST = 1.0


@dataclass
class Outage:
    engine: RedisEngine
    new_session: Callable[[], str]  # a session whose channel lives where the outage is
    kill: Callable[[], None]
    revive: Callable[[], None]


@pytest.fixture(params=["redis", "cluster"])
async def outage(request: pytest.FixtureRequest) -> AsyncIterator[Outage]:
    if request.param == "redis":
        server = RedisServer()
        server.start()
        engine = RedisEngine(server.url, prefix="retry", history=50, ttl=60)
        yield Outage(engine, lambda: session_id_on_shard(0), lambda: server.stop(kill=True), server.start)
        await engine.close()
        server.stop()
        return
    nodes = RedisClusterNodes()
    try:
        nodes.start()
        engine = RedisClusterEngine(nodes.url, prefix="retry", history=50, ttl=60)
        # Master 1: not the seed the cluster client reloads its slot map from.
        yield Outage(engine, lambda: session_id_on_shard(1), lambda: nodes.kill(1), lambda: nodes.revive(1))
        await engine.close()
    finally:
        nodes.stop()


@contextlib.asynccontextmanager
async def lost_feed(outage: Outage) -> AsyncIterator[Feed]:
    """A feed that followed a session where the outage now is."""
    feed = outage.engine.open_feed(lambda session_id, envelope: None, lambda: None)
    try:
        await asyncio.wait_for(feed.add(outage.new_session()), 10)
        outage.kill()
        yield feed
    finally:
        await feed.close()


async def test_a_new_watcher_cuts_the_backoff_of_a_lost_connection_short(
    outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "sse_progress.feed")
    async with lost_feed(outage) as feed:

        def failures() -> list[logging.LogRecord]:
            return [record for record in caplog.records if " interrupted (" in record.getMessage()]

        deadline = time.monotonic() + 15
        while len(failures()) < FAILURES:
            assert time.monotonic() < deadline, f"{len(failures())} failed attempts, expected {FAILURES}"
            await asyncio.sleep(0.01)
        failed_at = failures()[-1].created
        outage.revive()
        revived_at = time.time()
        await asyncio.wait_for(feed.add(outage.new_session()), 10)
        served = time.time() - failed_at
        print(f"served {served:.3f}s after the last failed attempt, {time.time() - revived_at:.3f}s after the revival")
        assert served < BACKOFF_AT_LEAST, "the new watcher waited out the backoff"


async def test_a_session_waiting_on_a_lost_connection_is_told_only_once_the_retry_it_made_failed(
    outage: Outage,
) -> None:
    async with lost_feed(outage) as feed:
        for _ in range(500):
            if feed.problem is not None:
                break
            await asyncio.sleep(0.01)
        assert feed.problem is not None, "the lost connection shows at once (/readyz)"
        await asyncio.sleep(1)  # down for a while already: what counts is how long this session has waited
        waiting = outage.new_session()
        subscribing = asyncio.create_task(feed.add(waiting))
        await asyncio.sleep(0.2)
        assert feed.problem_for(waiting) is None, "told before the retry it made could succeed"
        await asyncio.sleep(0.5)
        problem = feed.problem_for(waiting)
        assert problem is not None and "pub/sub" in problem
        subscribing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await subscribing
