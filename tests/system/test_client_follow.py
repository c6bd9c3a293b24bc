"""The Python follower against a real server on Redis: exactly once, in order, across server restarts."""

from __future__ import annotations

import asyncio
import threading
from contextlib import aclosing
from typing import Any

import httpx
import pytest
import redis
from httpx_sse import SSEError, connect_sse

from sse_progress import ProgressTracker
from sse_progress.follower.client import FollowError, FollowTimeout, Reconnect, follow
from sse_progress.protocol.events import parse_event_id
from tests.support.clients import Publisher
from tests.support.processes import LiveServer, RedisServer
from tests.system.test_data_loss import publish, restart_redis_under

Envelope = dict[str, Any]
DEADLINE = 60.0  # generous: a test that fails must not hang the run


def tracker(server: LiveServer, session_id: str, total: int = 15) -> ProgressTracker:
    return ProgressTracker(total_etapas=total, session_id=session_id, tipo="redis", redis_url=server.redis_url)


class Collector:
    """Follows a session in a task, recording every envelope and waking waiters when a count is reached."""

    def __init__(self, server: LiveServer, session_id: str, **options: Any) -> None:
        self.envelopes: list[Envelope] = []
        self.reconnects: list[Reconnect] = []
        self._changed = asyncio.Condition()
        self._events = follow(
            server.url,
            session_id,
            server.token(session_id),
            reconnect_delay=0.1,
            max_reconnect_delay=0.5,
            on_reconnect=self.reconnects.append,
            **options,
        )
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async with aclosing(self._events) as events:
            async for envelope in events:
                async with self._changed:
                    self.envelopes.append(envelope)
                    self._changed.notify_all()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(DEADLINE), self._changed:
            await self._changed.wait_for(lambda: len(self.envelopes) >= count or self.task.done())
        if len(self.envelopes) < count:
            self.task.result()  # re-raise what ended the follower early
            raise AssertionError(f"the follower ended after {len(self.envelopes)} envelopes, expected {count}")

    async def finish(self) -> list[Envelope]:
        async with asyncio.timeout(DEADLINE):
            await self.task
        return self.envelopes


def ids(envelopes: list[Envelope]) -> list[str]:
    return [envelope["id"] for envelope in envelopes]


def assert_strictly_increasing(envelopes: list[Envelope]) -> None:
    keys = [key for key in (parse_event_id(envelope["id"]) for envelope in envelopes) if key is not None]
    assert len(keys) == len(envelopes)
    assert keys == sorted(keys) and len(set(keys)) == len(keys), ids(envelopes)


async def test_every_event_exactly_once_in_order_while_the_server_restarts_mid_job(
    server: LiveServer, session_id: str
) -> None:
    job = tracker(server, session_id, total=10_000)
    published = [job.update_progress(1, "tela 1")]
    collector = Collector(server, session_id, last_event_id="0")
    await collector.wait_for(1)  # streaming: the restart below cuts a live connection

    stop = threading.Event()

    def keep_publishing() -> None:
        # Paced so that a slow restart cannot push the history past SSE_PROGRESS_HISTORY (which would be a reset).
        etapa = 2
        while not stop.is_set():
            published.append(job.update_progress(etapa, f"tela {etapa}"))
            etapa += 1
            stop.wait(0.01)

    publisher = threading.Thread(target=keep_publishing, daemon=True)
    publisher.start()
    try:
        await asyncio.to_thread(server.restart)
        restarted_at = len(published)
        await collector.wait_for(restarted_at + 5)  # live again on the new process
    finally:
        stop.set()
        await asyncio.to_thread(publisher.join, 10)
    published.append(job.complete("Cotação concluída", {"valor": 1234.5}))
    job.close()

    received = await collector.finish()
    assert all(envelope is not None for envelope in published)
    assert ids(received) == [envelope["id"] for envelope in published if envelope]
    assert [envelope["type"] for envelope in received] == ["progress_update"] * len(received)
    assert_strictly_increasing(received)
    assert received[-1]["status"] == "success" and received[-1]["dados_extra"] == {"valor": 1234.5}
    assert collector.reconnects, "the restart should have cut the stream"
    assert all(reconnect.delay <= 0.5 * 1.1 for reconnect in collector.reconnects)


async def test_events_published_while_the_server_is_down_arrive_and_the_follow_ends_on_the_terminal_one(
    server: LiveServer, session_id: str
) -> None:
    job = tracker(server, session_id, total=6)
    published = [job.update_progress(1, "tela 1"), job.update_progress(2, "tela 2")]
    collector = Collector(server, session_id)  # no resume id: a snapshot of step 2, then live
    await collector.wait_for(1)
    published.append(job.update_progress(3, "tela 3"))
    await collector.wait_for(2)

    await asyncio.to_thread(server.stop)
    try:
        published += [job.update_progress(etapa, f"tela {etapa}") for etapa in (4, 5, 6)]
        published.append(job.complete("pronto"))
    finally:
        await asyncio.to_thread(server.start)
    job.close()

    received = await collector.finish()
    assert [(envelope["type"], envelope["etapa_atual"]) for envelope in received] == [
        ("snapshot", 2), ("progress_update", 3), ("progress_update", 4), ("progress_update", 5),
        ("progress_update", 6), ("progress_update", 6),
    ]  # fmt: skip
    assert ids(received) == [envelope["id"] for envelope in published[1:] if envelope]
    assert received[-1]["status"] == "success" and received[-1]["percentual"] == 100.0
    assert collector.reconnects[0].last_event_id == published[2]["id"]  # type: ignore[index]


async def streams_open(server: LiveServer, session_id: str) -> int:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"{server.url}/stats", params={"token": server.token("*", "admin")})
    sessions: dict[str, int] = response.json()["sessions"]
    return sessions.get(session_id, 0)


async def test_a_follower_that_loses_its_first_connection_before_any_event_misses_nothing(
    server: LiveServer, session_id: str
) -> None:
    collector = Collector(server, session_id)  # no resume id, and the session has no events yet
    async with asyncio.timeout(DEADLINE):
        while await streams_open(server, session_id) == 0:  # the server's view: the stream is open
            await asyncio.sleep(0.02)

    job = tracker(server, session_id, total=3)
    await asyncio.to_thread(server.stop)
    try:
        published = [job.update_progress(etapa, f"tela {etapa}") for etapa in (1, 2)]
    finally:
        await asyncio.to_thread(server.start)
    published += [job.update_progress(3, "tela 3"), job.complete("ok")]
    job.close()

    received = await collector.finish()
    # Not a snapshot of step 2: the reconnect asked for the history, since the first stream had seen nothing.
    assert [(envelope["type"], envelope["etapa_atual"]) for envelope in received] == [
        ("progress_update", 1), ("progress_update", 2), ("progress_update", 3), ("progress_update", 3),
    ]  # fmt: skip
    assert ids(received) == [envelope["id"] for envelope in published if envelope]
    assert collector.reconnects[0].last_event_id == "0"


@pytest.mark.parametrize("status", ["success", "error", "cancelled"])
async def test_a_finished_session_without_a_resume_id_yields_its_terminal_snapshot_and_ends(
    server: LiveServer, session_id: str, status: str
) -> None:
    job = tracker(server, session_id, total=3)
    job.update_progress(1, "tela 1")
    last = job.update_progress(2, "fim", status=status)
    job.close()
    async with aclosing(follow(server.url, session_id, server.token(session_id), timeout=DEADLINE)) as events:
        received = [envelope async for envelope in events]
    assert [(envelope["type"], envelope["status"], envelope["id"]) for envelope in received] == [
        ("snapshot", status, last["id"])  # type: ignore[index]
    ]


async def test_history_replay_yields_every_event_and_ends_on_the_terminal_one(
    server: LiveServer, session_id: str
) -> None:
    job = tracker(server, session_id, total=4)
    published = [job.update_progress(etapa, f"tela {etapa}") for etapa in range(1, 5)]
    published.append(job.complete("ok"))
    job.close()
    async with aclosing(follow(server.url, session_id, server.token(session_id), last_event_id="earliest")) as events:
        received = [envelope async for envelope in events]
    assert ids(received) == [envelope["id"] for envelope in published if envelope]


async def test_resuming_at_the_terminal_event_gets_204_and_ends_immediately(
    server: LiveServer, session_id: str
) -> None:
    job = tracker(server, session_id, total=2)
    job.update_progress(1, "tela 1")
    terminal = job.complete("ok")
    job.close()
    assert terminal is not None
    reconnects: list[Reconnect] = []
    events = follow(
        server.url, session_id, server.token(session_id), last_event_id=terminal["id"], on_reconnect=reconnects.append
    )
    async with asyncio.timeout(10), aclosing(events):
        received = [envelope async for envelope in events]
    assert received == [] and reconnects == []


def test_httpx_sse_users_handle_the_closing_204_with_the_two_lines_of_the_protocol(
    server: LiveServer, session_id: str
) -> None:
    """docs/protocol.md, client notes: plain httpx-sse raises on the 204; checking the status first ends cleanly."""
    job = tracker(server, session_id, total=1)
    terminal = job.complete("ok")
    job.close()
    assert terminal is not None
    url = f"{server.url}/sessions/{session_id}/events"
    params = {"token": server.token(session_id), "last_event_id": terminal["id"]}
    with httpx.Client() as client:
        with (
            connect_sse(client, "GET", url, params=params) as source,
            pytest.raises(SSEError, match="text/event-stream"),
        ):
            list(source.iter_sse())
        received = []
        with connect_sse(client, "GET", url, params=params) as source:
            if source.response.status_code != 204:  # 204: the session ended at or before the resume id
                received = [sse.data for sse in source.iter_sse()]
    assert source.response.status_code == 204 and received == []


async def test_resuming_mid_session_yields_only_the_later_events(server: LiveServer, session_id: str) -> None:
    job = tracker(server, session_id, total=3)
    published = [job.update_progress(etapa, f"tela {etapa}") for etapa in (1, 2, 3)]
    published.append(job.complete("ok"))
    job.close()
    resume = published[1]["id"]  # type: ignore[index]
    async with aclosing(follow(server.url, session_id, server.token(session_id), last_event_id=resume)) as events:
        received = [envelope async for envelope in events]
    assert ids(received) == [envelope["id"] for envelope in published[2:] if envelope]


async def test_a_bad_token_raises_follow_error_401_without_retrying(server: LiveServer, session_id: str) -> None:
    reconnects: list[Reconnect] = []
    with pytest.raises(FollowError) as raised:
        async with asyncio.timeout(10):
            async for _ in follow(server.url, session_id, "not-a-token", on_reconnect=reconnects.append):
                pass
    assert raised.value.status == 401
    assert "invalid token" in raised.value.error and "401" in str(raised.value)
    assert reconnects == []


async def test_a_missing_token_raises_401(server: LiveServer, session_id: str) -> None:
    with pytest.raises(FollowError) as raised:
        async for _ in follow(server.url, session_id, None):
            pass
    assert raised.value.status == 401 and "missing token" in raised.value.error


async def test_a_token_for_another_session_raises_403(server: LiveServer, session_id: str) -> None:
    with pytest.raises(FollowError) as raised:
        async for _ in follow(server.url, session_id, server.token("someone-else")):
            pass
    assert raised.value.status == 403 and "another session" in raised.value.error


async def test_an_invalid_session_id_raises_400(server: LiveServer) -> None:
    with pytest.raises(FollowError) as raised:
        async for _ in follow(server.url, "not valid!", server.token("*", "admin")):
            pass
    assert raised.value.status == 400 and "session id" in raised.value.error


async def test_the_overall_timeout_raises_follow_timeout(server: LiveServer, session_id: str) -> None:
    job = tracker(server, session_id, total=3)
    job.update_progress(1, "tela 1")
    job.close()
    received: list[Envelope] = []
    with pytest.raises(FollowTimeout):
        async with asyncio.timeout(10):
            async for envelope in follow(server.url, session_id, server.token(session_id), timeout=1.0):
                received.append(envelope)
    # The timeout counts from the start, connecting included: on a loaded machine the snapshot may not make it.
    assert [envelope["type"] for envelope in received] in ([], ["snapshot"])


async def test_an_unreachable_server_is_retried_until_the_timeout(session_id: str) -> None:
    from tests.support.processes import free_port

    reconnects: list[Reconnect] = []
    events = follow(
        f"http://127.0.0.1:{free_port()}", session_id, "t", timeout=1.0, reconnect_delay=0.05,
        max_reconnect_delay=0.2, on_reconnect=reconnects.append,
    )  # fmt: skip
    with pytest.raises(FollowTimeout):
        async with asyncio.timeout(10):
            async for _ in events:
                pass
    assert len(reconnects) >= 2 and "ConnectError" in reconnects[0].reason
    assert [r.attempt for r in reconnects] == list(range(1, len(reconnects) + 1))
    assert all(r.delay <= 0.2 * 1.1 for r in reconnects)


def test_an_invalid_resume_id_is_refused_before_connecting() -> None:
    with pytest.raises(ValueError, match="last_event_id"):
        follow("http://127.0.0.1:1", "abc", "t", last_event_id="yesterday")
    with pytest.raises(ValueError, match="timeout"):
        follow("http://127.0.0.1:1", "abc", "t", timeout=0)


async def test_a_reset_to_older_ids_is_followed_through_to_the_end(session_id: str) -> None:
    """Redis restored from an older backup: the follower yields the reset to the older state, then the rest."""
    volatile = RedisServer()
    volatile.start()
    live = LiveServer(volatile.url)
    live.start()
    publisher = Publisher(live.url, live.token(session_id, "publish"), session_id)
    store = redis.Redis.from_url(volatile.url)
    try:
        backed_up = [(await publish(publisher, n))["id"] for n in (1, 2)]
        store.save()  # the dump the restarted server loads
        later = (await publish(publisher, 3))["id"]
        collector = Collector(live, session_id, last_event_id="0")
        await collector.wait_for(3)
        restart_redis_under(live, volatile)
        await collector.wait_for(4)
        final = (await publish(publisher, 15, "success"))["id"]
        envelopes = await collector.finish()
    finally:
        store.close()
        await publisher.aclose()
        live.stop()
        volatile.stop()
    assert [(e["type"], e["id"]) for e in envelopes] == [
        *(("progress_update", event_id) for event_id in [*backed_up, later]),
        ("reset", backed_up[-1]),
        ("progress_update", final),
    ]
