"""Redis blinks, restarts or stays away: watchers are never told to give up, and come back by themselves."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
import redis
import websockets

from tests.support.clients import follow, serving
from tests.support.processes import LiveServer, RedisServer, free_port, metric, running, wait_until
from tests.system.test_reliability import ws_url

RETRY = re.compile(rb"^: (?P<problem>[^\n]+)\nretry: (?P<ms>\d+)\n\n$")


@pytest.fixture
def live(own_redis: RedisServer) -> Iterator[LiveServer]:
    """A server of the test's own on ``own_redis``."""
    with running(LiveServer(own_redis.url)) as server:
        yield server


def events_url(live: LiveServer, session_id: str) -> str:
    return f"{live.url}/sessions/{session_id}/events"


def assert_try_again(response: httpx.Response, problem: str, window_ms: tuple[int, int]) -> int:
    """A 200 empty stream naming the problem in a comment, with a retry: in the window; returns the delay."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    match = RETRY.match(response.content)
    assert match is not None, response.content
    assert problem in match["problem"].decode()
    delay = int(match["ms"])
    assert window_ms[0] <= delay <= window_ms[1]
    return delay


async def test_stream_and_poll_requests_during_an_outage_get_200_and_a_retry(
    own_redis: RedisServer, live: LiveServer, session_id: str
) -> None:
    params = {"token": live.token(session_id)}
    own_redis.stop(kill=True)
    async with httpx.AsyncClient(timeout=30) as client:
        streamed, polled, snapshot = await asyncio.gather(
            client.get(events_url(live, session_id), params=params),
            client.get(events_url(live, session_id), params={**params, "mode": "poll"}),
            client.get(f"{live.url}/sessions/{session_id}", params=params),
        )
        delays = {assert_try_again(streamed, "event store unavailable", (2000, 5000))}
        delays.add(assert_try_again(polled, "event store unavailable", (2000, 5000)))
        for _ in range(4):
            again = await client.get(events_url(live, session_id), params={**params, "mode": "poll"})
            delays.add(assert_try_again(again, "event store unavailable", (2000, 5000)))
        assert len(delays) > 1, "the retry delay is not jittered"
        # Other endpoints are not read by an EventSource: they keep 503 and Retry-After.
        assert snapshot.status_code == 503 and snapshot.headers["retry-after"]
    async with websockets.connect(ws_url(live, session_id, params["token"]), open_timeout=30) as socket:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), 30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    own_redis.start()
    assert metric(live, 'sse_progress_streams_deferred_total{reason="store_unavailable"}') == 6


@pytest.mark.parametrize("outage", ["killed", "stopped 25 s"])
async def test_a_session_tried_during_an_outage_streams_again_within_5s_of_the_restart(
    own_redis: RedisServer, session_id: str, outage: str
) -> None:
    async with serving(own_redis.url, session_id) as (live, publisher):
        assert own_redis.process is not None
        began = time.monotonic()
        if outage == "killed":
            own_redis.stop(kill=True)
        else:
            own_redis.process.send_signal(signal.SIGSTOP)  # connections stay open; nothing answers
        async with httpx.AsyncClient(timeout=30) as client:
            attempt = await client.get(events_url(live, session_id), params={"token": live.token(session_id)})
        assert_try_again(attempt, "event store unavailable", (2000, 5000))
        if outage == "killed":
            own_redis.start()
        else:
            # Past the feed's unanswered ping (2 x 10 s): it has reconnected once meanwhile.
            await asyncio.sleep(max(0.0, 25 - (time.monotonic() - began)))
            own_redis.process.send_signal(signal.SIGCONT)
        back = time.monotonic()
        # Once the server's Pub/Sub connection is back, a new stream of the session must work at once.
        admin = redis.Redis.from_url(own_redis.url)
        wait_until(lambda: bool(admin.client_list(_type="pubsub")), 5, "the server to resubscribe")
        admin.close()
        recovered = None
        while recovered is None and time.monotonic() - back < 5:
            async with follow("sse", live.url, session_id, live.token(session_id), "0") as stream:
                if stream.status_code != 200:
                    continue
                published = await publisher.step(1)
                frame = await stream.next(timeout=5)
                assert frame is not None and frame.id == published["id"]
                recovered = time.monotonic() - back
        assert recovered is not None, "the session could not be watched within 5 s of Redis coming back"
        print(f"session streams again {recovered:.2f}s after Redis came back ({outage})")
        async with follow("ws", live.url, session_id, live.token(session_id), "0") as socket:
            assert (await socket.next()) is not None


async def test_no_request_fails_right_after_redis_restarts(own_redis: RedisServer, session_id: str) -> None:
    async with serving(own_redis.url, session_id, total=100) as (live, publisher):
        params = {"token": live.token(session_id)}
        async with httpx.AsyncClient(timeout=30) as client:
            # Open every pooled command connection of the server.
            await publisher.step(1)
            await asyncio.gather(*[client.get(f"{live.url}/sessions/{session_id}", params=params) for _ in range(8)])
            own_redis.stop(kill=True)
            own_redis.start()
            # Sequential after one restart, all at once after another: each pooled connection is met dead.
            answers = []
            for etapa in (2, 3):
                answers.append(await publisher.client.post(
                    f"/sessions/{session_id}/events", json={"etapa_atual": etapa, "total_etapas": 100}
                ))  # fmt: skip
                answers.append(await client.get(f"{live.url}/sessions/{session_id}", params=params))
                answers.append(await client.get(events_url(live, session_id), params={**params, "mode": "poll"}))
            own_redis.stop(kill=True)
            own_redis.start()
            answers += await asyncio.gather(
                *[client.get(f"{live.url}/sessions/{session_id}", params=params) for _ in range(6)],
                *[client.get(events_url(live, session_id), params={**params, "mode": "poll"}) for _ in range(6)],
            )
            failed = [(a.request.method, a.request.url.path, a.status_code) for a in answers if a.status_code >= 500]
            print(f"{len(failed)} of {len(answers)} requests failed right after the restart")
            assert failed == []
            assert [a.status_code for a in answers[:6:3]] == [201] * 2
        wait_until(lambda: httpx.get(f"{live.url}/readyz").status_code == 200, 10, "/readyz")


def test_serve_starts_without_redis_and_readyz_reports_it_until_redis_answers() -> None:
    later = RedisServer()  # its port is chosen; nothing listens there yet
    port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "sse_progress.cli", "serve", "--port", str(port), "--redis-url", later.url],
        env={**os.environ, "SSE_PROGRESS_SECRET": "k1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    readyz = f"http://127.0.0.1:{port}/readyz"

    def answers() -> bool:
        assert serve.poll() is None, serve.communicate()[0]  # it must not exit for want of Redis
        try:
            return httpx.get(readyz, timeout=2).status_code > 0
        except httpx.HTTPError:
            return False

    try:
        wait_until(answers, 30, "serve to answer without Redis")
        answer = httpx.get(readyz, timeout=10)
        assert answer.status_code == 503
        assert answer.json()["status"] == "unavailable" and answer.json()["error"]
        later.start()
        wait_until(lambda: httpx.get(readyz, timeout=10).status_code == 200, 30, "/readyz once Redis answers")
    finally:
        serve.terminate()
        output = serve.communicate(timeout=15)[0]
        later.stop()
    assert "could not check the event store at startup" in output, output


async def test_operator_endpoints_during_an_outage_answer_503_json_and_the_watch_logs_once(
    own_redis: RedisServer, live: LiveServer
) -> None:
    observe, admin = live.token("*", "observe"), live.token("*", "admin")
    own_redis.stop(kill=True)
    await asyncio.sleep(3.5)  # a few ticks of the session index watch
    async with httpx.AsyncClient(timeout=30) as client:
        for path, token in (("/sessions", observe), ("/ops/figures", observe), ("/stats", admin)):
            answer = await client.get(live.url + path, params={"token": token})
            assert answer.status_code == 503, (path, answer.text)
            assert answer.headers["retry-after"]
            assert answer.json() == {"success": False, "error": "the event store is unavailable; retry shortly"}
        # The change stream is read by an EventSource: a 200 stream with a retry:, never an error status.
        async with client.stream("GET", live.url + "/ops/events", params={"token": observe}) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            first = await anext(stream.aiter_bytes())
            assert first.startswith(b"retry: ")
    log = live.log.read_text()
    assert log.count("session index unreadable") == 1, log
    assert "Traceback" not in log, log
    own_redis.start()
    wait_until(lambda: "session index readable again" in live.log.read_text(), 30, "the recovery line")


async def timed_get(client: httpx.AsyncClient, url: str, **params: str) -> tuple[httpx.Response, float]:
    began = time.monotonic()
    response = await client.get(url, params=params)
    return response, time.monotonic() - began


async def test_with_redis_down_a_new_stream_is_told_to_retry_at_once(
    own_redis: RedisServer, live: LiveServer, session_id: str
) -> None:
    token = live.token(session_id)
    own_redis.stop(kill=True)
    wait_until(lambda: httpx.get(f"{live.url}/readyz").status_code == 503, 10, "/readyz to see the outage")
    await asyncio.sleep(0.5)  # the feed's connection is closed by the kill: it has noticed by now
    async with httpx.AsyncClient(timeout=30) as client:
        streamed, seconds = await timed_get(client, events_url(live, session_id), token=token)
    assert_try_again(streamed, "event store unavailable", (2000, 5000))
    print(f"stream told to retry after {seconds:.3f}s with Redis down")
    assert seconds < 1.0
    began = time.monotonic()
    async with websockets.connect(ws_url(live, session_id, token), open_timeout=30) as socket:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), 30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    print(f"websocket told to retry after {time.monotonic() - began:.3f}s with Redis down")
    assert time.monotonic() - began < 1.0


async def test_with_redis_frozen_a_stream_or_poll_is_told_to_retry_and_readyz_answers_within_bounds(
    own_redis: RedisServer, live: LiveServer, session_id: str
) -> None:
    assert own_redis.process is not None
    try:
        own_redis.process.send_signal(signal.SIGSTOP)  # connections stay open; nothing answers
        async with httpx.AsyncClient(timeout=30) as client:
            ready, ready_seconds = await timed_get(client, f"{live.url}/readyz")
            streamed, seconds = await timed_get(client, events_url(live, session_id), token=live.token(session_id))
            polled, poll_seconds = await timed_get(
                client, events_url(live, session_id), token=live.token(session_id), mode="poll"
            )
        print(
            f"readyz answered after {ready_seconds:.2f}s, the stream after {seconds:.2f}s, "
            f"a poll after {poll_seconds:.2f}s with Redis frozen"
        )
        assert ready.status_code == 503 and "did not answer within 2 s" in ready.json()["error"]
        assert ready_seconds < 3.0
        assert_try_again(streamed, "event store unavailable", (2000, 5000))
        assert seconds < 4.5, "past the subscribe bound"
        assert_try_again(polled, "event store unavailable", (2000, 5000))
        assert poll_seconds < 4.5, "past the poll's read bound"
    finally:
        own_redis.process.send_signal(signal.SIGCONT)


async def test_with_redis_frozen_metrics_answer_at_once_and_reads_answer_503_within_their_bound(
    own_redis: RedisServer, live: LiveServer, session_id: str
) -> None:
    """A Prometheus scrape times out after 10 s by default: the figures that show the outage must not be lost
    to it, and a read endpoint must not hold its client for the Redis client's own timeouts."""
    assert own_redis.process is not None
    observe, admin = live.token("*", "observe"), live.token("*", "admin")
    reads = (
        ("/stats", admin),
        ("/sessions", observe),
        ("/ops/figures", observe),
        (f"/sessions/{session_id}", live.token(session_id)),
        (f"/sessions/{session_id}/history", live.token(session_id)),
    )
    try:
        own_redis.process.send_signal(signal.SIGSTOP)
        async with httpx.AsyncClient(timeout=30) as client:
            scraped, scrape_seconds = await timed_get(client, f"{live.url}/metrics")
            answers = [(path, *await timed_get(client, live.url + path, token=token)) for path, token in reads]
    finally:
        own_redis.process.send_signal(signal.SIGCONT)
    assert scraped.status_code == 200 and scrape_seconds < 2.0, f"/metrics took {scrape_seconds:.1f} s"
    assert "sse_progress_session_index_readable 0.0" in scraped.text
    for path, answer, seconds in answers:
        assert answer.status_code == 503 and seconds < 4.0, f"{path}: {answer.status_code} after {seconds:.1f} s"


async def test_sigterm_while_a_stream_waits_on_a_frozen_redis_answers_200_and_retry(
    own_redis: RedisServer, live: LiveServer, session_id: str
) -> None:
    assert own_redis.process is not None and live.process is not None
    try:
        own_redis.process.send_signal(signal.SIGSTOP)
        async with httpx.AsyncClient(timeout=30) as client:
            waiting = asyncio.ensure_future(
                client.get(events_url(live, session_id), params={"token": live.token(session_id)})
            )
            await asyncio.sleep(0.5)
            assert not waiting.done()
            live.process.send_signal(signal.SIGTERM)
            terminated = time.monotonic()
            streamed = await waiting
        seconds = time.monotonic() - terminated
        print(f"the waiting stream answered {seconds:.2f}s after SIGTERM")
        assert_try_again(streamed, "event store unavailable", (2000, 5000))
        assert seconds < 1.5
        live.process.wait(10)
    finally:
        own_redis.process.send_signal(signal.SIGCONT)
