"""Redis loses data: restarted without persistence, a session expired, restored from an older backup, ids that
went backwards. Clients get a ``reset`` frame, never silence; with persistence nothing is lost or repeated."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
import redis
import websockets

from tests.support.clients import Follower, Publisher, Received, collect_until_end, follow, id_key, serving
from tests.support.processes import LiveServer, RedisServer, metric, wait_until
from tests.system.test_reliability import ws_url

TRANSPORTS = ["sse", "ws"]


def restart_redis_under(live: LiveServer, redis_server: RedisServer) -> None:
    """Restart Redis and wait until the server's Pub/Sub feed has reconnected (and its streams have resynced)."""
    reconnects = metric(live, "sse_progress_redis_reconnects_total")
    redis_server.restart()
    wait_until(
        lambda: metric(live, "sse_progress_redis_reconnects_total") > reconnects, 30, "the server's feed to reconnect"
    )


async def publish(publisher: Publisher, etapa: int, status: str = "running") -> dict[str, Any]:
    """Publish through the server, retrying its 503 as a real publisher does: right after Redis restarts, each
    pooled connection of the server fails once before it reconnects."""
    for _ in range(50):
        response = await publisher.client.post(
            f"/sessions/{publisher.session_id}/events",
            json={"etapa_atual": etapa, "total_etapas": publisher.total, "mensagem": f"step {etapa}", "status": status},
        )
        if response.status_code != 503:
            assert response.status_code == 201, response.text
            data: dict[str, Any] = response.json()["data"]
            return data
        await asyncio.sleep(0.1)
    raise AssertionError("the server kept answering 503")


def assert_reset_then_the_rest(frames: list[Received], published: list[str]) -> None:
    """One reset to one of the events published after the loss (the latest stored when the server re-read the
    store), then every later one exactly once, in order."""
    assert frames and frames[0].kind == "reset", kinds_and_ids(frames)
    assert frames[0].id in published, (frames[0].id, published)
    assert kinds_and_ids(frames[1:]) == updates(published[published.index(frames[0].id) + 1 :])


def kinds_and_ids(frames: list[Received]) -> list[tuple[str, str]]:
    return [(frame.kind, frame.id) for frame in frames]


def updates(ids: list[str]) -> list[tuple[str, str]]:
    return [("progress_update", event_id) for event_id in ids]


async def receive(stream: Follower, count: int) -> list[Received]:
    frames = []
    for _ in range(count):
        frame = await stream.next()
        assert frame is not None, "the stream ended early"
        frames.append(frame)
    return frames


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_live_clients_get_a_reset_when_redis_restarts_empty(
    own_redis: RedisServer, session_id: str, transport: str
) -> None:
    async with serving(own_redis.url, session_id) as (live, publisher):
        before = [(await publish(publisher, n))["id"] for n in (1, 2, 3)]
        async with follow(transport, live.url, session_id, live.token(session_id), "earliest") as stream:
            frames = await receive(stream, len(before))
            restart_redis_under(live, own_redis)
            # The history the client has seen is gone: an event after the restart replaces its state.
            after = [(await publish(publisher, n))["id"] for n in (4, 5)]
            after.append((await publish(publisher, 15, "success"))["id"])
            frames += await collect_until_end(stream)
        assert kinds_and_ids(frames[:3]) == updates(before)
        assert_reset_then_the_rest(frames[3:], after)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resume_after_redis_lost_the_history_gets_a_reset_with_the_snapshot(
    own_redis: RedisServer, session_id: str, transport: str
) -> None:
    async with serving(own_redis.url, session_id) as (live, publisher):
        seen = [(await publish(publisher, n))["id"] for n in (1, 2, 3)]
        own_redis.restart()
        # The job goes on after the restart: a fresh stream whose history starts after the client's last id.
        fresh = [await publish(publisher, n) for n in (4, 5)]
        async with httpx.AsyncClient() as client:
            history = await client.get(
                f"{live.url}/sessions/{session_id}/history",
                params={"after": seen[-1], "token": live.token(session_id)},
            )
        assert history.json()["truncated"] is True
        async with follow(transport, live.url, session_id, live.token(session_id), seen[-1]) as stream:
            reset = await stream.next()
            final = await publish(publisher, 15, "success")
            rest = await collect_until_end(stream)
        assert reset is not None and (reset.kind, reset.id, reset.data["etapa_atual"]) == ("reset", fresh[-1]["id"], 5)
        assert kinds_and_ids(rest) == updates([final["id"]])


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resume_after_redis_lost_a_running_session_gets_the_next_event_as_a_reset(
    redis_url: str, session_id: str, transport: str
) -> None:
    with redis.Redis.from_url(redis_url) as store:
        async with serving(redis_url, session_id) as (live, publisher):
            seen = [(await publish(publisher, n))["id"] for n in (1, 2, 3)]
            # Lost, not expired: the client's id is younger than the TTL, so the job may well go on.
            store.delete(*(f"rpa:{kind}:{{{session_id}}}" for kind in ("events", "progress", "meta")))
            async with follow(transport, live.url, session_id, live.token(session_id), seen[-1]) as stream:
                # Nothing is stored, so there is nothing to reset to yet: the next event that arrives does it.
                restarted = await publish(publisher, 4)
                first = await stream.next()
                final = await publish(publisher, 15, "success")
                rest = await collect_until_end(stream)
            assert first is not None and (first.kind, first.id) == ("reset", restarted["id"])
            assert kinds_and_ids(rest) == updates([final["id"]])


@pytest.mark.parametrize("transport", ["sse", "poll", "ws"])
async def test_resume_after_the_session_expired_ends_at_once_instead_of_heartbeats(
    redis_url: str, session_id: str, transport: str
) -> None:
    with redis.Redis.from_url(redis_url) as store:
        async with serving(redis_url, session_id, env={"SSE_PROGRESS_TTL": "1"}) as (live, publisher):
            seen = [(await publish(publisher, n))["id"] for n in (1, 2, 3)]  # the job then died without a word
            wait_until(lambda: not store.exists(f"rpa:events:{{{session_id}}}"), 10, "the session's keys to expire")
            started = time.monotonic()
            if transport == "ws":
                url = f"{ws_url(live, session_id, live.token(session_id))}&last_event_id={seen[-1]}"
                async with websockets.connect(url) as socket:
                    with pytest.raises(websockets.ConnectionClosed) as closed:
                        await asyncio.wait_for(socket.recv(), 5)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
                assert "session expired" in closed.value.rcvd.reason
            else:
                params = {"token": live.token(session_id), **({"mode": "poll"} if transport == "poll" else {})}
                async with httpx.AsyncClient(timeout=5) as client:
                    answer = await client.get(
                        f"{live.url}/sessions/{session_id}/events", params=params, headers={"Last-Event-ID": seen[-1]}
                    )
                assert answer.status_code == 204  # a browser's EventSource stops reconnecting
            assert time.monotonic() - started < 2


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("loss", ["expired", "restarted"])
async def test_ids_that_went_backwards_get_a_reset_not_silence(
    own_redis: RedisServer, session_id: str, transport: str, loss: str
) -> None:
    """The session's ids came from a Redis whose clock was an hour ahead; then the data was lost and the job goes
    on with ids that are older than those the client holds. Dropping them as "already seen" would be silence."""
    env = {"SSE_PROGRESS_TTL": "2"} if loss == "expired" else None
    with redis.Redis.from_url(own_redis.url) as store:
        async with serving(own_redis.url, session_id, env=env) as (live, publisher):
            stream_key = f"rpa:events:{{{session_id}}}"
            ahead = f"{time.time_ns() // 1_000_000 + 3_600_000}-0"
            store.xadd(stream_key, {"e": "{}"}, id=ahead)  # XADD * continues after the stream's last id, even deleted
            store.xdel(stream_key, ahead)
            before = [(await publish(publisher, n))["id"] for n in (1, 2, 3)]
            assert all(event_id.startswith(ahead.split("-")[0]) for event_id in before)
            async with follow(transport, live.url, session_id, live.token(session_id), "earliest") as stream:
                frames = await receive(stream, len(before))
                if loss == "expired":
                    # The keys expire while the client stays connected: no reconnect, no resync tells the server.
                    wait_until(lambda: not store.exists(stream_key), 10, "the session's keys to expire")
                else:
                    restart_redis_under(live, own_redis)
                after = [(await publish(publisher, 4))["id"], (await publish(publisher, 15, "success"))["id"]]
                assert id_key(after[0]) < id_key(before[0])
                frames += await collect_until_end(stream)
            assert kinds_and_ids(frames[:3]) == updates(before)
            assert_reset_then_the_rest(frames[3:], after)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_redis_restored_from_an_older_backup_resets_live_clients_to_it(
    own_redis: RedisServer, session_id: str, transport: str
) -> None:
    with redis.Redis.from_url(own_redis.url) as store:
        async with serving(own_redis.url, session_id) as (live, publisher):
            backed_up = [(await publish(publisher, n))["id"] for n in (1, 2, 3)]
            store.save()  # dump.rdb: the server loads it when it starts again (it saves nothing on shutdown)
            later = [(await publish(publisher, n))["id"] for n in (4, 5)]
            async with follow(transport, live.url, session_id, live.token(session_id), "earliest") as stream:
                frames = await receive(stream, 5)
                restart_redis_under(live, own_redis)
                # The newest stored event is older than the client's last one: the client goes back to it, then on.
                frames += await receive(stream, 1)
                final = (await publish(publisher, 15, "success"))["id"]
                frames += await collect_until_end(stream)
            assert kinds_and_ids(frames) == [*updates(backed_up + later), ("reset", backed_up[-1]), *updates([final])]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_redis_restarted_with_persistence_loses_and_repeats_nothing(
    persistent_redis: RedisServer, session_id: str, transport: str
) -> None:
    async with serving(persistent_redis.url, session_id, total=30) as (live, publisher):
        published = [(await publish(publisher, n))["id"] for n in range(1, 6)]
        async with follow(transport, live.url, session_id, live.token(session_id), "earliest") as stream:
            frames = await receive(stream, len(published))
            restart_redis_under(live, persistent_redis)
            published += [(await publish(publisher, n))["id"] for n in range(6, 20)]
            published.append((await publish(publisher, 30, "success"))["id"])
            frames += await collect_until_end(stream)
        assert kinds_and_ids(frames) == updates(published)
        # A client that was away during the restart resumes where it left off.
        async with follow(transport, live.url, session_id, live.token(session_id), published[2]) as stream:
            resumed = await collect_until_end(stream)
        assert kinds_and_ids(resumed) == updates(published[3:])
