"""The engine contract, run against both engines; plus the Redis storage layout other consumers rely on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import orjson
import pytest
import redis

from sse_progress.engines import Engine, MemoryEngine, SessionTerminal
from sse_progress.engines.redis.cluster import RedisClusterEngine
from sse_progress.engines.redis.engine import RedisEngine
from sse_progress.protocol.events import ZERO_ID, EventDraft, parse_event_id


@pytest.fixture(params=["memory", "redis", "cluster"])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[Engine]:
    if request.param == "memory":
        yield MemoryEngine(history=50, ttl=60)
        return
    if request.param == "cluster":
        url = request.getfixturevalue("redis_cluster").url
        redis_engine: RedisEngine = RedisClusterEngine(url, prefix="contract", history=50, ttl=60)
    else:
        redis_engine = RedisEngine(request.getfixturevalue("redis_url"), prefix="contract", history=50, ttl=60)
    yield redis_engine
    await redis_engine.close()


def draft(session_id: str, etapa: int, status: str = "running", **fields: object) -> EventDraft:
    return EventDraft(session_id, etapa, 15, status=status, mensagem=f"step {etapa}", **fields)  # type: ignore[arg-type]


def id_of(envelope: bytes) -> tuple[int, int]:
    event_id = parse_event_id(orjson.loads(envelope)["id"])
    assert event_id is not None
    return event_id


async def test_publish_assigns_increasing_ids_and_stores_the_snapshot(engine: Engine, session_id: str) -> None:
    envelopes = [(await engine.publish(draft(session_id, n))).envelope for n in range(1, 6)]
    ids = [id_of(e) for e in envelopes]
    assert ids == sorted(ids) and len(set(ids)) == 5
    view = await engine.read(session_id, None)
    assert view.snapshot == envelopes[-1] and view.events == []


async def test_read_after_returns_exactly_the_later_events(engine: Engine, session_id: str) -> None:
    envelopes = [(await engine.publish(draft(session_id, n))).envelope for n in range(1, 6)]
    assert (await engine.read(session_id, ZERO_ID)).events == envelopes
    view = await engine.read(session_id, id_of(envelopes[1]))
    assert view.events == envelopes[2:] and not view.gap


async def test_unknown_session_has_no_snapshot(engine: Engine, session_id: str) -> None:
    assert (await engine.read(session_id, ZERO_ID)).snapshot is None


async def test_no_event_is_accepted_after_a_terminal_one(engine: Engine, session_id: str) -> None:
    await engine.publish(draft(session_id, 1))
    final = await engine.publish(draft(session_id, 15, "success"))
    with pytest.raises(SessionTerminal):
        await engine.publish(draft(session_id, 2))
    assert (await engine.read(session_id, None)).snapshot == final.envelope


async def test_eta_is_extrapolated_from_the_first_event(engine: Engine, session_id: str) -> None:
    first = await engine.publish(EventDraft(session_id, 2, 15, timestamp="2026-11-25T10:00:00+00:00"))
    assert orjson.loads(first.envelope)["eta_seconds"] is None  # no time elapsed yet: not "0 s left"
    await engine.publish(EventDraft(session_id, 0, 15, timestamp="2026-11-25T10:00:00+00:00"))
    third = await engine.publish(EventDraft(session_id, 3, 15, timestamp="2026-11-25T10:00:12+00:00"))
    assert orjson.loads(third.envelope)["eta_seconds"] == 48.0
    final = await engine.publish(EventDraft(session_id, 15, 15, status="success"))
    assert orjson.loads(final.envelope)["eta_seconds"] == 0.0


async def test_a_retried_publish_with_the_same_sequence_is_stored_once(engine: Engine, session_id: str) -> None:
    first = await engine.publish(draft(session_id, 1, publisher="job-a", sequence=0))
    again = await engine.publish(draft(session_id, 1, publisher="job-a", sequence=0))
    assert again.duplicate and not first.duplicate
    assert len((await engine.read(session_id, ZERO_ID)).events) == 1


async def test_history_is_capped_and_a_resume_before_it_reports_a_gap(engine: Engine, session_id: str) -> None:
    first = await engine.publish(draft(session_id, 1))
    for n in range(2, 250):
        await engine.publish(draft(session_id, n % 15))
    retained = (await engine.read(session_id, ZERO_ID)).events
    assert 50 <= len(retained) < 249
    assert (await engine.read(session_id, id_of(first.envelope))).gap


async def test_feed_delivers_published_events_of_subscribed_sessions_only(engine: Engine, session_id: str) -> None:
    received: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    feed = engine.open_feed(lambda sid, payload: received.put_nowait((sid, payload)), lambda: None)
    try:
        await feed.add(session_id)
        await engine.publish(draft(session_id + "x", 1))
        published = await engine.publish(draft(session_id, 1))
        assert await asyncio.wait_for(received.get(), 5) == (session_id, published.envelope)
        await feed.remove(session_id)
        await engine.publish(draft(session_id, 2))
        await asyncio.sleep(0.2)  # a negative: give a wrongly delivered message time to arrive
        assert received.empty()
    finally:
        await feed.close()


async def test_memory_engine_forgets_sessions_after_their_ttl(session_id: str) -> None:
    engine = MemoryEngine(ttl=0)
    await engine.publish(draft(session_id, 1))
    assert (await engine.read(session_id, None)).snapshot is None


async def test_redis_layout_hash_tags_expiry_and_plain_json_pubsub(redis_url: str, session_id: str) -> None:
    """Existing consumers PSUBSCRIBE rpa:session:* and json.loads each message; keys share one cluster slot."""
    engine = RedisEngine(redis_url, prefix="rpa", ttl=120)
    client = redis.Redis.from_url(redis_url)
    legacy = client.pubsub()
    legacy.psubscribe("rpa:session:*")
    assert legacy.get_message(timeout=5)["type"] == "psubscribe"
    try:
        published = await engine.publish(draft(session_id, 2, dados_extra={"k": "ç"}))
        message = legacy.get_message(timeout=5)
        assert message is not None and message["channel"] == f"rpa:session:{{{session_id}}}".encode()
        assert json.loads(message["data"]) == orjson.loads(published.envelope)
        assert client.get(f"rpa:progress:{{{session_id}}}") == published.envelope
        assert client.xlen(f"rpa:events:{{{session_id}}}") == 1
        for key in (f"rpa:events:{{{session_id}}}", f"rpa:progress:{{{session_id}}}", f"rpa:meta:{{{session_id}}}"):
            assert 0 < client.ttl(key) <= 120, key
    finally:
        legacy.close()
        client.close()
        await engine.close()
