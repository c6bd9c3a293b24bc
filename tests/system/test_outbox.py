"""Publisher outage: a tracker whose Redis is down queues events in its outbox and stores each exactly once later."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis

from sse_progress import AsyncProgressTracker, ProgressTracker
from sse_progress.protocol.tokens import TokenAuthority
from sse_progress.publisher.outbox import RetrySchedule
from tests.support.clients import Received, follow
from tests.support.processes import ROOT, LiveServer, RedisServer

RETRY_AT_ONCE = RetrySchedule(first=0, longest=0)  # every event tries Redis: the tests decide when it is back


def stored_etapas(url: str, session_id: str) -> list[int]:
    client = redis.Redis.from_url(url)
    try:
        entries = client.xrange(f"rpa:events:{{{session_id}}}")
    finally:
        client.close()
    return [json.loads(fields[b"e"])["etapa_atual"] for _, fields in entries]


def outbox_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.outbox.jsonl"))


def test_events_reported_during_an_outage_are_stored_in_order_once_redis_returns(
    persistent_redis: RedisServer, tmp_path: Path, session_id: str
) -> None:
    tracker = ProgressTracker(9, session_id, redis_url=persistent_redis.url, json_dir=tmp_path, retry=RETRY_AT_ONCE)
    for etapa in range(1, 4):
        tracker.update_progress(etapa, f"Tela {etapa}")
    persistent_redis.stop()
    for etapa in range(4, 9):
        event = tracker.update_progress(etapa, f"Tela {etapa}")  # never raises into the job
        assert event is not None and event["etapa_atual"] == etapa
        snapshot = json.loads((tmp_path / f"progress_{session_id}.json").read_text())
        assert (snapshot["etapa_atual"], snapshot["mensagem"]) == (etapa, f"Tela {etapa}")
    [outbox] = outbox_files(tmp_path)
    assert [json.loads(line)["etapa_atual"] for line in outbox.read_text().splitlines()] == [4, 5, 6, 7, 8]

    persistent_redis.start()
    tracker.update_progress(9, "Tela 9")
    assert stored_etapas(persistent_redis.url, session_id) == list(range(1, 10))
    assert outbox_files(tmp_path) == []  # deleted once every entry was acknowledged
    tracker.close()


async def test_the_async_tracker_queues_and_sends_in_order_too(
    persistent_redis: RedisServer, tmp_path: Path, session_id: str
) -> None:
    tracker = AsyncProgressTracker(
        5, session_id, redis_url=persistent_redis.url, json_dir=tmp_path, retry=RETRY_AT_ONCE
    )
    await tracker.update_progress(1, "um")
    persistent_redis.stop()
    await tracker.update_progress(2, "dois")
    await tracker.update_progress(3, "três")
    assert tracker.outbox is not None and len(tracker.outbox) == 2
    persistent_redis.start()
    await tracker.complete("fim")
    await tracker.aclose()
    assert stored_etapas(persistent_redis.url, session_id) == [1, 2, 3, 5]
    assert outbox_files(tmp_path) == []


def test_a_retried_flush_stores_nothing_twice(persistent_redis: RedisServer, tmp_path: Path, session_id: str) -> None:
    tracker = ProgressTracker(9, session_id, redis_url=persistent_redis.url, json_dir=tmp_path, retry=RETRY_AT_ONCE)
    tracker.update_progress(1, "Tela 1")
    persistent_redis.stop()
    for etapa in (2, 3, 4):
        tracker.update_progress(etapa, f"Tela {etapa}")
    [outbox] = outbox_files(tmp_path)
    before_flush = tmp_path / "before-flush"
    shutil.copy(outbox, before_flush)
    persistent_redis.start()
    assert tracker.flush() == 0
    tracker.close()
    assert stored_etapas(persistent_redis.url, session_id) == [1, 2, 3, 4]

    # As if the process had died after Redis stored the entries but before the outbox file was deleted.
    before_flush.rename(outbox)
    retry = ProgressTracker(9, session_id, redis_url=persistent_redis.url, json_dir=tmp_path, retry=RETRY_AT_ONCE)
    assert retry.outbox is not None and len(retry.outbox) == 3  # adopted
    retry.update_progress(5, "Tela 5")
    retry.close()
    assert stored_etapas(persistent_redis.url, session_id) == [1, 2, 3, 4, 5]
    assert outbox_files(tmp_path) == []


CRASHING_JOB = """
import os, signal, sys
from sse_progress import ProgressTracker
from sse_progress.publisher.outbox import RetrySchedule
tracker = ProgressTracker(9, sys.argv[1], redis_url=sys.argv[2], json_dir=sys.argv[3], retry=RetrySchedule(0, 0))
for etapa in (1, 2, 3):
    tracker.update_progress(etapa, f"Tela {etapa}")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_new_tracker_after_a_crash_sends_the_leftovers_first(
    persistent_redis: RedisServer, tmp_path: Path, session_id: str
) -> None:
    persistent_redis.stop()
    job = subprocess.run(
        [sys.executable, "-c", CRASHING_JOB, session_id, persistent_redis.url, str(tmp_path)], cwd=ROOT, timeout=60
    )
    assert job.returncode == -9
    assert len(outbox_files(tmp_path)) == 1
    persistent_redis.start()

    with ProgressTracker(9, session_id, redis_url=persistent_redis.url, json_dir=tmp_path) as tracker:
        tracker.update_progress(4, "Tela 4 (nova execução)")
    assert stored_etapas(persistent_redis.url, session_id) == [1, 2, 3, 4]
    assert outbox_files(tmp_path) == []


def test_a_live_trackers_outbox_is_not_taken_by_another(
    persistent_redis: RedisServer, tmp_path: Path, session_id: str
) -> None:
    persistent_redis.stop()
    first = ProgressTracker(9, session_id, redis_url=persistent_redis.url, json_dir=tmp_path)
    first.update_progress(1, "Tela 1")
    second = ProgressTracker(9, session_id, redis_url=persistent_redis.url, json_dir=tmp_path)
    assert second.outbox is not None and len(second.outbox) == 0
    first.close()  # still unsent: the file stays for a later tracker
    third = ProgressTracker(9, session_id, redis_url=persistent_redis.url, json_dir=tmp_path)
    assert third.outbox is not None and [draft.etapa_atual for draft in third.outbox.pending()] == [1]
    second.close()
    third.close()


class HungRedis:
    """A TCP server that accepts connections and never answers: a Redis that hangs instead of refusing."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.accepted.append(self.listener.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.listener.close()
        for connection in self.accepted:
            connection.close()


def test_a_hung_redis_does_not_slow_the_job_to_a_crawl(tmp_path: Path, session_id: str) -> None:
    hung = HungRedis()
    tracker = ProgressTracker(30, session_id, redis_url=hung.url, json_dir=tmp_path)
    try:
        started = time.monotonic()
        for etapa in range(1, 21):
            tracker.update_progress(etapa, f"Tela {etapa}")
        elapsed = time.monotonic() - started
    finally:
        tracker.close()
        hung.close()
    # One attempt waits out the short socket timeout; the next ones are not due yet, so events go straight
    # to the outbox (20 attempts would take 20 timeouts).
    assert elapsed < 6, elapsed
    assert tracker.outbox is not None
    assert [json.loads(line)["etapa_atual"] for line in outbox_files(tmp_path)[0].read_text().splitlines()] == list(
        range(1, 21)
    )


async def follow_like_a_browser(url: str, session_id: str, token: str, frames: asyncio.Queue[Received]) -> None:
    """Every frame until the terminal one, resuming after the last id whenever the stream drops, as EventSource does."""
    last_id, retry_s = "earliest", 0.5
    while True:
        try:
            async with follow("sse", url, session_id, token, last_id) as stream:
                while (frame := await stream.next(30)) is not None:
                    await frames.put(frame)
                    last_id = frame.id
                    if frame.terminal:
                        return
        except httpx.TransportError:
            pass
        await asyncio.sleep(retry_s)  # the `retry:` delay a browser waits before reconnecting, not a synchronisation


async def test_a_subscriber_during_the_outage_sees_every_event_exactly_once(
    persistent_redis: RedisServer, tmp_path: Path, session_id: str
) -> None:
    live = LiveServer(persistent_redis.url)
    live.start()
    tracker = ProgressTracker(9, session_id, redis_url=persistent_redis.url, json_dir=tmp_path, retry=RETRY_AT_ONCE)

    def job_through_an_outage() -> None:
        persistent_redis.stop()
        for etapa in range(4, 9):
            tracker.update_progress(etapa, f"Tela {etapa}")
        persistent_redis.start()
        tracker.complete("Tela 9")

    frames: asyncio.Queue[Received] = asyncio.Queue()
    subscriber = asyncio.create_task(follow_like_a_browser(live.url, session_id, live.token(session_id), frames))
    try:
        for etapa in (1, 2, 3):
            tracker.update_progress(etapa, f"Tela {etapa}")
        received = [await asyncio.wait_for(frames.get(), 10) for _ in range(3)]  # connected before the outage
        await asyncio.to_thread(job_through_an_outage)
        await asyncio.wait_for(subscriber, 30)
        tracker.close()
    finally:
        subscriber.cancel()
        live.stop()
    while not frames.empty():
        received.append(frames.get_nowait())
    assert [frame.data["etapa_atual"] for frame in received] == list(range(1, 10))
    assert len({frame.id for frame in received}) == 9


def test_events_refused_for_the_token_during_a_resend_stay_on_disk(
    redis_url: str, tmp_path: Path, session_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The server's secret changed during an outage: the resend is answered 401. The events stay in the outbox,
    an error names it, and a tracker with a valid token sends them later."""
    live = LiveServer(redis_url)
    live.start()
    try:
        tracker = ProgressTracker(9, session_id, "http", base_url=live.url, token=live.token(session_id, "publish"),
                                  json_dir=tmp_path, retry=RETRY_AT_ONCE)  # fmt: skip
        tracker.update_progress(1, "Tela 1")
        live.stop()
        tracker.update_progress(2, "Tela 2")
        tracker.update_progress(3, "Tela 3")
        live.env["SSE_PROGRESS_SECRET"] = live.secret = "rotated-" + live.secret
        live.tokens = TokenAuthority((live.secret,))
        live.start()
        with caplog.at_level(logging.ERROR, "sse_progress.publisher.tracker"):
            tracker.update_progress(4, "Tela 4")  # resends 2 and 3 first: refused
            tracker.close()
        assert_kept_and_reported(tmp_path, caplog, 401, [2, 3, 4])
        assert sent_by_a_valid_tracker(live, session_id, tmp_path) == [1, 2, 3, 4, 9]
    finally:
        live.stop()


def test_events_refused_for_a_token_without_the_right_stay_on_disk(
    server: LiveServer, tmp_path: Path, session_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A subscribe token cannot publish (403): each attempt, resends included, keeps every event on disk."""
    reader = server.token(session_id, "subscribe")
    with caplog.at_level(logging.ERROR, "sse_progress.publisher.tracker"):
        tracker = ProgressTracker(9, session_id, "http", base_url=server.url, token=reader, json_dir=tmp_path,
                                  retry=RETRY_AT_ONCE)  # fmt: skip
        for etapa in (1, 2, 3):
            assert tracker.update_progress(etapa, f"Tela {etapa}") is not None  # never raises into the job
        tracker.close()
    assert_kept_and_reported(tmp_path, caplog, 403, [1, 2, 3])
    assert sent_by_a_valid_tracker(server, session_id, tmp_path) == [1, 2, 3, 9]


def assert_kept_and_reported(directory: Path, caplog: pytest.LogCaptureFixture, status: int, etapas: list[int]) -> None:
    [outbox] = outbox_files(directory)
    assert [json.loads(line)["etapa_atual"] for line in outbox.read_text().splitlines()] == etapas
    errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert any(f"({status})" in message and str(outbox) in message for message in errors), errors


def sent_by_a_valid_tracker(live: LiveServer, session_id: str, directory: Path) -> list[int]:
    """A rerun of the job with a valid token: it sends the kept events first; returns the stored steps."""
    valid = live.token(session_id, "publish")
    with ProgressTracker(9, session_id, "http", base_url=live.url, token=valid, json_dir=directory) as rerun:
        rerun.complete("fim")
    assert outbox_files(directory) == []
    history = httpx.get(f"{live.url}/sessions/{session_id}/history", params={"token": valid}).json()["events"]
    return [event["etapa_atual"] for event in history]


async def test_the_async_tracker_writes_its_outbox_off_the_event_loop(
    persistent_redis: RedisServer, tmp_path: Path, session_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outbox is fsync'd before the job goes on; in an async job that wait must not stall the event loop."""
    loop_thread = threading.get_ident()
    fsync_threads: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        fsync_threads.append(threading.get_ident())
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    tracker = AsyncProgressTracker(
        5, session_id, redis_url=persistent_redis.url, json_dir=tmp_path, retry=RETRY_AT_ONCE
    )
    await tracker.update_progress(1, "um")
    persistent_redis.stop()
    for etapa in (2, 3, 4):
        await tracker.update_progress(etapa, f"tela {etapa}")
    assert tracker.outbox is not None and len(tracker.outbox) == 3
    assert fsync_threads and loop_thread not in fsync_threads
    persistent_redis.start()
    await tracker.complete("fim")
    await tracker.aclose()
    assert stored_etapas(persistent_redis.url, session_id) == [1, 2, 3, 4, 5]
