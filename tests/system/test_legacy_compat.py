"""The older system's readers against sse-progress: its PHP endpoint's answer, its WebSocket path, and its Redis
key and channel written by ``ProgressTracker(legacy_keys=True)``. Real redis-server, uvicorn and WebSocket."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
import websockets

from sse_progress import ProgressTracker
from tests.support.cli import lines_until, started_cli
from tests.support.legacy import BridgeProcess
from tests.support.processes import LiveServer, RedisServer, free_port

OLD_FIELDS = {"etapa_atual", "total_etapas", "percentual", "status", "mensagem", "dados_extra", "timestamp"}


@pytest.fixture
def tracker(legacy_redis: RedisServer, session_id: str, tmp_path: Any) -> Iterator[ProgressTracker]:
    job = ProgressTracker(15, session_id, "redis", legacy_redis.url, outbox_dir=tmp_path)
    yield job
    job.close()


@pytest.mark.parametrize("path", ["/api/get_progress.php", "/get_progress"])
def test_get_progress_answers_the_old_shape(
    legacy_server: LiveServer, tracker: ProgressTracker, session_id: str, path: str
) -> None:
    tracker.update_progress(3, "Processando tela 3...")
    params = {"session": session_id, "token": legacy_server.token(session_id)}
    answer = httpx.get(legacy_server.url + path, params=params, timeout=10)
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"success", "data"} and body["success"] is True
    assert set(body["data"]) >= OLD_FIELDS
    assert body["data"]["etapa_atual"] == 3 and body["data"]["percentual"] == 20.0
    assert body["data"]["mensagem"] == "Processando tela 3..." and body["data"]["status"] == "running"
    tracker.complete("Cotação concluída")
    final = httpx.get(legacy_server.url + path, params=params, timeout=10).json()
    assert final["data"]["status"] == "success" and final["data"]["percentual"] == 100.0


def test_one_observe_token_reads_any_session_on_the_old_route(
    legacy_server: LiveServer, tracker: ProgressTracker, session_id: str
) -> None:
    tracker.update_progress(2, "Processando tela 2...")
    token = legacy_server.token("*", "observe")  # what `sse-progress token '*' --observe` prints
    answer = httpx.get(
        legacy_server.url + "/api/get_progress.php", params={"session": session_id, "token": token}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["success"] is True and answer.json()["data"]["etapa_atual"] == 2


def test_serve_says_at_startup_that_the_legacy_routes_are_on() -> None:
    port = free_port()
    env = {"SSE_PROGRESS_SECRET": "k1", "SSE_PROGRESS_LEGACY_ROUTES": "1"}
    with started_cli("serve", "--port", str(port), env=env) as output:
        startup = lines_until(output, "Application startup complete")
    said = [line for line in startup if "legacy routes on" in line]
    assert said, "".join(startup)
    assert "/api/get_progress.php" in said[0] and "/get_progress" in said[0] and "/session/" in said[0]


def test_get_progress_refusals_keep_the_old_error_shape(legacy_server: LiveServer, session_id: str) -> None:
    url = legacy_server.url + "/api/get_progress.php"
    unknown = httpx.get(url, params={"session": session_id, "token": legacy_server.token(session_id)}, timeout=10)
    assert unknown.status_code == 200  # as the older endpoint: a poller started before the first step waits
    assert unknown.json()["success"] is False and "no such session" in unknown.json()["error"]
    for params, status in [
        ({"session": session_id}, 401),
        ({"session": session_id, "token": legacy_server.token("another")}, 403),
        ({"session": "not valid!", "token": legacy_server.token(session_id)}, 400),
        ({"token": legacy_server.token(session_id)}, 400),
    ]:
        answer = httpx.get(url, params=params, timeout=10)
        assert answer.status_code == status, (params, answer.text)
        assert answer.json()["success"] is False and answer.json()["error"]


async def test_the_legacy_routes_are_off_by_default(server: LiveServer, session_id: str) -> None:
    token = server.token(session_id)
    answer = httpx.get(server.url + "/api/get_progress.php", params={"session": session_id, "token": token})
    assert answer.status_code == 404
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(server.url.replace("http", "ws") + f"/session/{session_id}?token={token}")


async def test_a_late_joiner_on_the_old_websocket_path_gets_the_state_as_a_progress_update(
    legacy_server: LiveServer, tracker: ProgressTracker, session_id: str
) -> None:
    for etapa in range(1, 4):
        tracker.update_progress(etapa, f"Tela {etapa}")
    url = legacy_server.url.replace("http", "ws") + f"/session/{session_id}?token={legacy_server.token(session_id)}"
    async with websockets.connect(url, open_timeout=10) as socket:
        greeting = json.loads(await asyncio.wait_for(socket.recv(), 10))
        assert greeting["type"] == "connection_established"
        current = json.loads(await asyncio.wait_for(socket.recv(), 10))
        assert current["type"] == "progress_update"
        assert (current["etapa_atual"], current["percentual"], current["mensagem"]) == (3, 20.0, "Tela 3")
        await socket.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(socket.recv(), 10))["type"] == "pong"
        tracker.update_progress(4, "Tela 4")
        live = json.loads(await asyncio.wait_for(socket.recv(), 10))
        assert (live["type"], live["etapa_atual"]) == ("progress_update", 4)
        tracker.complete("Cotação concluída")
        final = json.loads(await asyncio.wait_for(socket.recv(), 10))
        assert (final["type"], final["status"], final["percentual"]) == ("progress_update", "success", 100.0)
    # After the end: the final state, as a progress_update, then a normal close.
    async with websockets.connect(url, open_timeout=10) as socket:
        messages = [json.loads(message) async for message in socket]
        assert [m["type"] for m in messages] == ["connection_established", "progress_update"]
        assert messages[1]["mensagem"] == "Cotação concluída" and messages[1]["percentual"] == 100.0
        assert socket.close_code == 1000


class ChannelRecorder:
    """``SUBSCRIBE rpa:session:<sid>`` in a thread, as an older consumer does."""

    def __init__(self, client: redis.Redis, channel: str) -> None:
        self.pubsub = client.pubsub()
        self.pubsub.subscribe(channel)
        assert self.pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
        self.messages: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while len(self.messages) < 100:
            message = self.pubsub.get_message(timeout=0.2)
            if message is None and getattr(self, "done", False):
                return
            if message is not None and message["type"] == "message":
                self.messages.append(json.loads(message["data"]))

    def stop(self) -> list[dict[str, Any]]:
        self.done = True
        self.thread.join(10)
        self.pubsub.close()
        return self.messages


def test_legacy_keys_write_the_old_key_and_publish_the_old_json(
    legacy_redis: RedisServer, session_id: str, tmp_path: Any
) -> None:
    client = redis.Redis.from_url(legacy_redis.url)
    recorder = ChannelRecorder(client, f"rpa:session:{session_id}")
    bridge = BridgeProcess(legacy_redis.url)  # a bridge still running meanwhile must not store them again
    bridge.start()
    try:
        with ProgressTracker(15, session_id, "redis", legacy_redis.url, outbox_dir=tmp_path, legacy_keys=True) as job:
            for etapa in range(1, 4):
                job.update_progress(etapa, f"Processando tela {etapa}...")
                old = json.loads(client.get(f"rpa:progress:{session_id}") or b"{}")
                assert (old["etapa_atual"], old["percentual"], old["mensagem"]) == (
                    etapa,
                    round(100 * etapa / 15, 1),
                    f"Processando tela {etapa}...",
                )
                assert set(old) >= OLD_FIELDS and old["status"] == "running"
            job.complete("Cotação concluída")
        final = json.loads(client.get(f"rpa:progress:{session_id}") or b"{}")
        assert (final["status"], final["percentual"], final["mensagem"]) == ("success", 100.0, "Cotação concluída")
        assert 86000 < client.ttl(f"rpa:progress:{session_id}") <= 86400
        published = recorder.stop()
        assert [m["type"] for m in published] == ["progress_update"] * 4
        assert [(m["etapa_atual"], m["status"]) for m in published] == [
            (1, "running"),
            (2, "running"),
            (3, "running"),
            (15, "success"),
        ]
        assert all(set(m) >= OLD_FIELDS for m in published)
        assert client.xlen(f"rpa:events:{{{session_id}}}") == 4
        assert bridge.total("stored") == 0 and bridge.total("own") >= 4
    finally:
        bridge.stop()
        client.close()


def test_legacy_keys_needs_the_redis_tracker() -> None:
    with pytest.raises(ValueError, match="tipo='redis'"):
        ProgressTracker(15, "abc", "memory", legacy_keys=True)
