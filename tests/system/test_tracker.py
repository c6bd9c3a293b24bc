"""ProgressTracker: every tipo, the JSON file and outbox when the store is unreachable, the context manager."""

from __future__ import annotations

import json
import logging
import shutil
import socket
from pathlib import Path

import httpx
import pytest
import redis

from sse_progress import AsyncProgressTracker, ProgressTracker
from sse_progress.engines import MemoryEngine
from sse_progress.publisher.outbox import RetrySchedule
from tests.support.processes import LiveServer


def unused_redis_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"  # nothing listens there once the socket is closed


def test_redis_tracker_stores_stream_and_snapshot(redis_url: str, session_id: str) -> None:
    with ProgressTracker(total_etapas=15, session_id=session_id, redis_url=redis_url) as tracker:
        tracker.update_progress(1, "Tela 1")
        tracker.update_progress_with_estimativas(5, "Tela 5", [{"seguradora": "Porto", "valor": 10.5}])
        final = tracker.complete("pronto", {"valor": 10.5})
    client = redis.Redis.from_url(redis_url)
    assert client.xlen(f"rpa:events:{{{session_id}}}") == 3
    snapshot = json.loads(client.get(f"rpa:progress:{{{session_id}}}"))
    client.close()
    assert snapshot == final
    assert (snapshot["status"], snapshot["percentual"], snapshot["etapa_atual"]) == ("success", 100.0, 15)


def test_session_id_is_generated_when_not_given() -> None:
    tracker = ProgressTracker(tipo="memory")
    assert 1 <= len(tracker.session_id) <= 64
    assert tracker.update_progress(1)["session_id"] == tracker.session_id  # type: ignore[index]


def test_estimativas_are_stored_under_dados_extra(session_id: str) -> None:
    tracker = ProgressTracker(session_id=session_id, tipo="memory")
    event = tracker.update_progress_with_estimativas(5, "Tela 5", [{"seguradora": "Azul", "valor": 1.0}])
    assert event is not None
    assert event["dados_extra"] == {"estimativas_tela_5": [{"seguradora": "Azul", "valor": 1.0}]}


def test_json_tracker_writes_the_snapshot_file_atomically(tmp_path: Path, session_id: str) -> None:
    tracker = ProgressTracker(total_etapas=4, session_id=session_id, tipo="json", json_dir=tmp_path)
    tracker.update_progress(1, "um")
    tracker.update_progress(2, "dois")
    written = json.loads((tmp_path / f"progress_{session_id}.json").read_text())
    assert (written["etapa_atual"], written["mensagem"], written["percentual"]) == (2, "dois", 50.0)
    assert [p.name for p in tmp_path.iterdir()] == [f"progress_{session_id}.json"]  # no temp file left behind


def test_unreachable_redis_never_raises_into_the_job_and_falls_back_to_json(tmp_path: Path, session_id: str) -> None:
    tracker = ProgressTracker(session_id=session_id, redis_url=unused_redis_url(), json_dir=tmp_path)
    event = tracker.update_progress(3, "Tela 3")
    assert event is not None and event["etapa_atual"] == 3
    written = json.loads((tmp_path / f"progress_{session_id}.json").read_text())
    assert written["mensagem"] == "Tela 3"


def test_an_exception_in_the_job_reports_fail(session_id: str) -> None:
    engine = MemoryEngine()
    with pytest.raises(RuntimeError), ProgressTracker(session_id=session_id, tipo="memory", engine=engine) as tracker:
        tracker.update_progress(2, "Tela 2")
        raise RuntimeError("tela 3 quebrou")
    assert tracker.last_envelope is not None
    assert tracker.last_envelope["status"] == "error"
    assert "tela 3 quebrou" in tracker.last_envelope["mensagem"]
    assert tracker.last_envelope["etapa_atual"] == 2


def test_events_after_the_end_are_ignored(session_id: str) -> None:
    tracker = ProgressTracker(session_id=session_id, tipo="memory")
    tracker.complete("fim")
    assert tracker.update_progress(3, "tarde demais") is None
    assert tracker.last_envelope is not None and tracker.last_envelope["status"] == "success"


def test_http_tracker_publishes_through_the_service(server: LiveServer, session_id: str) -> None:
    token = server.token(session_id, "publish")
    with ProgressTracker(session_id=session_id, tipo="http", base_url=server.url, token=token) as tracker:
        tracker.update_progress(1, "via http — ção")
        final = tracker.complete("ok")
    assert final is not None and final["status"] == "success" and final["id"]


async def test_async_tracker_over_redis(redis_url: str, session_id: str) -> None:
    async with AsyncProgressTracker(total_etapas=3, session_id=session_id, redis_url=redis_url) as tracker:
        await tracker.update_progress(1, "um")
        final = await tracker.complete("fim")
    assert final is not None and final["status"] == "success"
    client = redis.Redis.from_url(redis_url)
    assert client.xlen(f"rpa:events:{{{session_id}}}") == 2
    client.close()


def test_interrupting_the_job_reports_cancelled_and_a_clean_exit_reports_nothing(session_id: str) -> None:
    with pytest.raises(KeyboardInterrupt), ProgressTracker(session_id=session_id, tipo="memory") as tracker:
        tracker.update_progress(2, "Tela 2")
        raise KeyboardInterrupt
    assert tracker.last_envelope is not None and tracker.last_envelope["status"] == "cancelled"
    with pytest.raises(SystemExit), ProgressTracker(session_id=session_id + "b", tipo="memory") as quiet:
        quiet.update_progress(1, "Tela 1")
        raise SystemExit(0)
    assert quiet.last_envelope is not None and quiet.last_envelope["status"] == "running"


def test_add_progress_arguments_configures_an_http_tracker(server: LiveServer, session_id: str) -> None:
    import argparse

    from sse_progress import add_progress_arguments

    parser = add_progress_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--progress-tracker", "http", "--session", session_id, "--progress-url", server.url,
         "--progress-token", server.token(session_id, "publish")]
    )  # fmt: skip
    tracker = ProgressTracker.from_arguments(args, total_etapas=3)
    event = tracker.update_progress(1, "via argumentos")
    assert event is not None and event["id"] and event["session_id"] == session_id


def test_close_tries_the_outbox_once_more_and_says_how_many_events_remain(
    tmp_path: Path, session_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = ProgressTracker(session_id=session_id, redis_url=unused_redis_url(), json_dir=tmp_path)
    tracker.update_progress(1, "Tela 1")
    tracker.update_progress(2, "Tela 2")
    tracker.fail("quebrou")
    assert tracker.outbox is not None and len(tracker.outbox) == 3
    with caplog.at_level(logging.WARNING, "sse_progress.publisher.tracker"):
        tracker.close()
    assert any("3 events remain" in record.getMessage() for record in caplog.records)
    [outbox] = tmp_path.glob(f"progress_{session_id}.*.outbox.jsonl")  # kept for the next tracker of the session
    assert [json.loads(line)["status"] for line in outbox.read_text().splitlines()] == ["running", "running", "error"]


def test_an_http_tracker_queues_while_the_service_is_down_and_never_stores_twice(
    redis_url: str, tmp_path: Path, session_id: str
) -> None:
    live = LiveServer(redis_url)
    live.start()
    token = live.token(session_id, "publish")
    at_once = RetrySchedule(first=0, longest=0)
    try:
        tracker = ProgressTracker(
            9, session_id, "http", base_url=live.url, token=token, json_dir=tmp_path, retry=at_once
        )
        tracker.update_progress(1, "Tela 1")
        live.stop()
        tracker.update_progress(2, "Tela 2")
        tracker.update_progress(3, "Tela 3")
        [outbox] = tmp_path.glob("*.outbox.jsonl")
        shutil.copy(outbox, tmp_path / "before-flush")
        live.start()
        tracker.update_progress(4, "Tela 4")
        tracker.close()
        # As if the job had died after the service stored 2 and 3 but before the outbox file was deleted.
        (tmp_path / "before-flush").rename(outbox)
        with ProgressTracker(9, session_id, "http", base_url=live.url, token=token, json_dir=tmp_path) as rerun:
            rerun.complete("fim")
        history = httpx.get(f"{live.url}/sessions/{session_id}/history", params={"token": token}).json()["events"]
    finally:
        live.stop()
    assert [event["etapa_atual"] for event in history] == [1, 2, 3, 4, 9]
    assert list(tmp_path.glob("*.outbox.jsonl")) == []


def test_the_publish_api_drops_a_publisher_sequence_it_already_stored(server: LiveServer, session_id: str) -> None:
    headers = {"Authorization": f"Bearer {server.token(session_id, 'publish')}"}
    body = {"etapa_atual": 1, "total_etapas": 3, "publisher": {"id": "job-1", "sequence": 0}}
    first = httpx.post(f"{server.url}/sessions/{session_id}/events", json=body, headers=headers)
    again = httpx.post(f"{server.url}/sessions/{session_id}/events", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json()["data"]["id"] == first.json()["data"]["id"]  # answered with what is stored
    history = httpx.get(f"{server.url}/sessions/{session_id}/history", headers=headers).json()["events"]
    assert len(history) == 1
    for wrong in ({"id": "job-1"}, {"id": "a b", "sequence": 1}, {"id": "job-1", "sequence": -1}, "job-1", None):
        refused = httpx.post(
            f"{server.url}/sessions/{session_id}/events", json={**body, "publisher": wrong}, headers=headers
        )
        assert refused.status_code == 422 and refused.json()["error"].startswith("publisher"), refused.text
