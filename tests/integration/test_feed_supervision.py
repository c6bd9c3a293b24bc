"""A feed's reader that ends for any reason but shutdown is restarted, resyncs, and shows in /readyz meanwhile."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from sse_progress.config import Settings
from sse_progress.engines.redis.cluster_feed import RedisClusterFeed
from sse_progress.engines.redis.feed import RedisFeed
from sse_progress.protocol.events import EventDraft
from sse_progress.server.app import create_app
from sse_progress.server.service import Service


@pytest.mark.parametrize("engine", ["redis", "cluster"])
async def test_a_failed_feed_reader_is_restarted_with_a_resync_and_readyz_names_it(
    request: pytest.FixtureRequest, session_id: str, caplog: pytest.LogCaptureFixture, engine: str
) -> None:
    url = request.getfixturevalue("redis_url") if engine == "redis" else request.getfixturevalue("redis_cluster").url
    app = create_app(Settings(redis_url=url, insecure=True))
    service: Service = app.state.service
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://sse-progress") as client,
    ):
        for _ in range(200):
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        listener = await service.hub.listen(session_id, "test")
        feed = service.hub.feed
        assert isinstance(feed, RedisFeed | RedisClusterFeed)  # each subscription reads its feed's ``on_message``
        deliver = feed.on_message
        failed = asyncio.Event()

        def fails_once(session: str, envelope: bytes) -> None:
            # A bug anywhere in the message path: the reader must not end with it.
            feed.on_message = deliver
            failed.set()
            raise RuntimeError("a bug in the message path")

        feed.on_message = fails_once
        answers: list[tuple[int, str]] = []

        async def watch_readiness() -> None:
            while True:
                ready = await client.get("/readyz")
                answers.append((ready.status_code, ready.json().get("error", "")))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch_readiness())
        caplog.set_level(logging.ERROR, "sse_progress.feed")
        await service.engine.publish(EventDraft(session_id=session_id, etapa_atual=1, total_etapas=3))
        await asyncio.wait_for(failed.wait(), 10)
        # Restarted: the listener is told to re-read what it missed, and live events flow again.
        for _ in range(500):
            if listener.needs_resync:
                break
            await asyncio.sleep(0.01)
        assert listener.needs_resync
        listener.needs_resync = False
        listener.drain()
        await service.engine.publish(EventDraft(session_id=session_id, etapa_atual=2, total_etapas=3))
        for _ in range(500):
            if listener.frames:
                break
            await asyncio.sleep(0.01)
        assert [frame.status for frame in listener.drain()] == ["running"]
        await asyncio.sleep(0.1)
        watcher.cancel()
        listener.close()
        refused = [error for status, error in answers if status == 503]
        assert refused and all("live feed not delivering" in error and "pub/sub" in error for error in refused)
        assert answers[-1][0] == 200
        assert any("reader failed" in record.getMessage() for record in caplog.records)
