"""Redis out of memory (maxmemory, noeviction): publishing says so, /readyz says so, a log line says so."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
import redis

from sse_progress import ProgressTracker
from tests.support.processes import LiveServer, RedisServer, wait_until


async def test_a_full_redis_answers_507_logs_an_error_and_fails_readiness_until_freed(
    own_redis: RedisServer, session_id: str
) -> None:
    live = LiveServer(own_redis.url)
    live.start()
    store = redis.Redis.from_url(own_redis.url)
    headers = {"Authorization": f"Bearer {live.token(session_id, 'publish')}"}
    event = {"etapa_atual": 1, "total_etapas": 3}
    try:
        async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
            assert (await client.post(f"/sessions/{session_id}/events", json=event, headers=headers)).status_code == 201
            store.config_set("maxmemory-policy", "noeviction")
            store.config_set("maxmemory", store.info("memory")["used_memory"] // 2)
            for _ in range(3):
                refused = await client.post(f"/sessions/{session_id}/events", json=event, headers=headers)
                assert refused.status_code == 507 and refused.json()["error"].startswith("event store is full")
                assert refused.headers["retry-after"]
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and "event store is full" in ready.json()["error"]
            logged = [line for line in live.log.read_text().splitlines() if "refuses every event" in line]
            assert len(logged) == 1 and "maxmemory" in logged[0]
            # Readers are not refused: the stored history stays readable.
            snapshot = await client.get(f"/sessions/{session_id}", params={"token": live.token(session_id)})
            assert snapshot.status_code == 200
            store.config_set("maxmemory", 0)
            assert (await client.post(f"/sessions/{session_id}/events", json=event, headers=headers)).status_code == 201
            wait_until(lambda: httpx.get(f"{live.url}/readyz").status_code == 200, 10, "/readyz to answer 200")
            assert "stores events again" in live.log.read_text()
    finally:
        store.config_set("maxmemory", 0)
        store.close()
        live.stop()


@pytest.mark.parametrize("tipo", ["redis", "http"])
def test_a_tracker_reports_a_full_store_as_full_not_unreachable(
    own_redis: RedisServer, session_id: str, tipo: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    live = LiveServer(own_redis.url)
    live.start()
    store = redis.Redis.from_url(own_redis.url)
    try:
        with ProgressTracker(
            session_id=session_id,
            tipo=tipo,  # type: ignore[arg-type]
            redis_url=own_redis.url,
            base_url=live.url,
            token=live.token(session_id, "publish"),
            json_dir=tmp_path,
            outbox_dir=tmp_path,
        ) as tracker:
            tracker.update_progress(1, "um")
            store.config_set("maxmemory-policy", "noeviction")
            store.config_set("maxmemory", store.info("memory")["used_memory"] // 2)
            with caplog.at_level(logging.WARNING, logger="sse_progress.tracker"):
                tracker.update_progress(2, "dois")
            store.config_set("maxmemory", 0)
        reported = [r.getMessage() for r in caplog.records if r.name == "sse_progress.tracker"]
        assert any("progress store is full" in message for message in reported), reported
        assert not any("unreachable" in message for message in reported), reported
    finally:
        store.config_set("maxmemory", 0)
        store.close()
        live.stop()
