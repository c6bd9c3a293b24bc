"""The resume contract of docs/protocol.md §4, over every streaming transport and every engine.

The engines: embedded (``memory``), one Redis (``redis``), one Redis with the publisher going through another
instance than the subscriber (``redis-2-instances``), and a 3-master Redis Cluster (``cluster``), where
successive tests' sessions land on successive masters. Each under two ASGI servers: uvicorn, whose socket the
streams reach past ``send``, and hypercorn, where they only have the ASGI ``send`` and ``receive``.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable

import pytest

from tests.support.clients import Publisher, collect_until_end, follow, id_key
from tests.support.processes import ASGI_SERVERS, LiveServer, session_id_on_shard

TRANSPORTS = ["sse", "ws"]
SERVERS = {"redis": "server", "memory": "memory_server", "cluster": "cluster_server", "redis-2-instances": "server"}
PUBLISHED_THROUGH = {"redis-2-instances": "second_server"}  # publisher and subscriber on different instances
_next_shard = itertools.count()
Under = Callable[[str, str], LiveServer]  # the ``under`` fixture: (session fixture, ASGI server) -> its server


@pytest.fixture(params=ASGI_SERVERS)
def asgi(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=list(SERVERS))
def live(request: pytest.FixtureRequest, under: Under, asgi: str) -> LiveServer:
    return under(SERVERS[request.param], asgi)


@pytest.fixture
def session_id() -> str:
    """A fresh id, on the next master of the test cluster (any id suits the other engines)."""
    return session_id_on_shard(next(_next_shard) % 3)


@pytest.fixture
async def publisher(  # type: ignore[no-untyped-def]
    request: pytest.FixtureRequest, live: LiveServer, session_id: str, under: Under, asgi: str
):
    other = PUBLISHED_THROUGH.get(request.node.callspec.params["live"])
    via = under(other, asgi) if other else live
    pub = Publisher(via.url, via.token(session_id, "publish"), session_id)
    yield pub
    await pub.aclose()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_no_resume_id_gets_one_snapshot_then_live_events(
    live: LiveServer, publisher: Publisher, session_id: str, transport: str
) -> None:
    for etapa in (1, 2, 3):
        latest = await publisher.step(etapa)
    async with follow(transport, live.url, session_id, live.token(session_id)) as stream:
        snapshot = await stream.next()
        assert snapshot is not None
        assert (snapshot.kind, snapshot.id, snapshot.data["etapa_atual"]) == ("snapshot", latest["id"], 3)
        assert snapshot.data["type"] == "snapshot"
        live_event = await publisher.step(4)
        received = await stream.next()
        assert received is not None
        assert (received.kind, received.id) == ("progress_update", live_event["id"])


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_session_without_events_waits_for_the_first(
    live: LiveServer, publisher: Publisher, session_id: str, transport: str
) -> None:
    async with follow(transport, live.url, session_id, live.token(session_id)) as stream:
        first = await publisher.step(1)
        received = await stream.next()
        assert received is not None
        assert (received.kind, received.id) == ("progress_update", first["id"])


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("resume", ["earliest", "0"])
async def test_earliest_replays_the_whole_history_then_live(
    live: LiveServer, publisher: Publisher, session_id: str, transport: str, resume: str
) -> None:
    published = [await publisher.step(etapa) for etapa in range(1, 6)]
    async with follow(transport, live.url, session_id, live.token(session_id), resume) as stream:
        replayed = [await stream.next() for _ in published]
        assert [r.id for r in replayed if r] == [p["id"] for p in published]
        assert all(r is not None and r.kind == "progress_update" for r in replayed)
        final = await publisher.step(15, "success")
        frames = await collect_until_end(stream)
    assert [f.id for f in frames] == [final["id"]]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resume_from_an_id_sends_exactly_the_later_events(
    live: LiveServer, publisher: Publisher, session_id: str, transport: str
) -> None:
    published = [await publisher.step(etapa) for etapa in range(1, 8)]
    async with follow(transport, live.url, session_id, live.token(session_id), published[2]["id"]) as stream:
        await publisher.step(15, "success")
        frames = await collect_until_end(stream)
    assert [f.data["etapa_atual"] for f in frames] == [4, 5, 6, 7, 15]
    assert frames[-1].data["status"] == "success"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_events_published_during_the_connect_arrive_once(
    live: LiveServer, publisher: Publisher, session_id: str, transport: str
) -> None:
    await publisher.step(1)

    async def publish_burst() -> list[str]:
        ids = [(await publisher.step(etapa))["id"] for etapa in range(2, 40)]
        ids.append((await publisher.step(40, "success"))["id"])
        return ids

    burst = asyncio.create_task(publish_burst())
    async with follow(transport, live.url, session_id, live.token(session_id), "earliest") as stream:
        frames = await collect_until_end(stream)
    ids = await burst
    received = [f.id for f in frames]
    assert len(received) == len(set(received)), "a frame was delivered twice"
    assert received[-len(ids) :] == ids, "a frame was lost or reordered"
    assert received == sorted(received, key=id_key)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_invalid_resume_id_gets_a_reset_with_the_snapshot(
    live: LiveServer, publisher: Publisher, session_id: str, transport: str
) -> None:
    latest = [await publisher.step(etapa) for etapa in (1, 2)][-1]
    async with follow(transport, live.url, session_id, live.token(session_id), "not-an-id") as stream:
        reset = await stream.next()
    assert reset is not None
    assert (reset.kind, reset.id, reset.data["type"]) == ("reset", latest["id"], "reset")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resume_id_newer_than_anything_stored_gets_a_reset(
    live: LiveServer, publisher: Publisher, session_id: str, transport: str
) -> None:
    latest = await publisher.step(1)
    future_id = f"{int(latest['id'].split('-')[0]) + 10_000_000}-0"
    async with follow(transport, live.url, session_id, live.token(session_id), future_id) as stream:
        reset = await stream.next()
    assert reset is not None and (reset.kind, reset.id) == ("reset", latest["id"])


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resume_id_before_the_first_stored_event_gets_a_reset(
    live: LiveServer, publisher: Publisher, session_id: str, transport: str
) -> None:
    """Such an id comes from history that is gone, e.g. Redis lost its data and the session's history started over."""
    published = [await publisher.step(etapa) for etapa in (1, 2)]
    before_first = f"{int(published[0]['id'].split('-')[0]) - 1}-0"
    async with follow(transport, live.url, session_id, live.token(session_id), before_first) as stream:
        reset = await stream.next()
    assert reset is not None and (reset.kind, reset.id) == ("reset", published[-1]["id"])


@pytest.fixture(params=["redis", "cluster"])
def store_url(request: pytest.FixtureRequest) -> str:
    """The URL of a real Redis, or of the test cluster, for tests that start a server of their own."""
    if request.param == "cluster":
        return str(request.getfixturevalue("redis_cluster").url)
    return str(request.getfixturevalue("redis_url"))


async def test_resume_id_older_than_the_retained_history_gets_a_reset(
    session_id: str, store_url: str, asgi: str
) -> None:
    """History is capped: a client that missed trimmed events must replace its state, not silently skip."""
    live = LiveServer(store_url, env={"SSE_PROGRESS_HISTORY": "5"}, asgi=asgi)
    live.start()
    try:
        publisher = Publisher(live.url, live.token(session_id, "publish"), session_id, total=500)
        first = await publisher.step(1)
        # MAXLEN ~ trims whole stream nodes (100 entries), so publish enough to trim the first one.
        for etapa in range(2, 260):
            latest = await publisher.step(etapa)
        await publisher.aclose()
        for transport in TRANSPORTS:
            async with follow(transport, live.url, session_id, live.token(session_id), first["id"]) as stream:
                reset = await stream.next()
            assert reset is not None and (reset.kind, reset.id) == ("reset", latest["id"]), transport
    finally:
        live.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stream_ends_after_the_terminal_event(
    live: LiveServer, publisher: Publisher, session_id: str, transport: str
) -> None:
    await publisher.step(1)
    async with follow(transport, live.url, session_id, live.token(session_id)) as stream:
        assert (await stream.next()) is not None
        final = await publisher.step(3, "error", mensagem="screen 3 broke")
        frames = await collect_until_end(stream)
        if transport == "ws":
            assert stream.close_code == 1000  # type: ignore[attr-defined]
    assert [(f.id, f.data["status"]) for f in frames] == [(final["id"], "error")]


async def test_resume_at_the_terminal_event_gets_204(live: LiveServer, publisher: Publisher, session_id: str) -> None:
    await publisher.step(1)
    final = await publisher.step(15, "success")
    async with follow("sse", live.url, session_id, live.token(session_id), final["id"]) as stream:
        assert stream.status_code == 204


async def test_no_resume_id_on_a_finished_session_gets_the_final_snapshot_and_ends(
    live: LiveServer, publisher: Publisher, session_id: str
) -> None:
    final = await publisher.step(15, "success")
    async with follow("sse", live.url, session_id, live.token(session_id)) as stream:
        frames = await collect_until_end(stream)
    assert [(f.kind, f.id) for f in frames] == [("snapshot", final["id"])]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_200_events_across_20_random_reconnects_arrive_exactly_once_in_order(
    live: LiveServer, publisher: Publisher, session_id: str, transport: str
) -> None:
    total = 200
    publisher.total = total
    rng = random.Random(f"{session_id}-{transport}")
    cut_after = sorted(rng.sample(range(1, total - 1), 20))

    async def publish_all() -> list[str]:
        ids = []
        for etapa in range(1, total):
            ids.append((await publisher.step(etapa))["id"])
            if etapa % 10 == 0:
                await asyncio.sleep(0)  # let the reader interleave
        ids.append((await publisher.step(total, "success"))["id"])
        return ids

    producer = asyncio.create_task(publish_all())
    received: list[str] = []
    last: str | None = "earliest"
    for cut in [*cut_after, None]:
        async with follow(transport, live.url, session_id, live.token(session_id), last) as stream:
            if stream.status_code == 204:
                break
            while True:
                frame = await stream.next(timeout=15)
                if frame is None:
                    break
                received.append(frame.id)
                last = frame.id
                if cut is not None and len(received) >= cut:
                    break  # disconnect in the middle of the stream
        if received and received[-1] == (producer.result()[-1] if producer.done() else None):
            break
    published = await producer
    assert len(received) == len(set(received)), "a frame was delivered twice"
    assert received == published, "frames were lost or reordered"
