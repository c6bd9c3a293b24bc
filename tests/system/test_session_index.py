"""The session index over real servers: 30 jobs driven at once (some succeed, some fail at a named step, some go
silent) → GET /sessions, the change stream and the job metrics agree with what was driven; silent jobs become
stalled within the threshold and leave it when they report again. On Redis (two server instances: jobs publish
to both, lists are read from both) and on the memory engine."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sse_progress.protocol.tokens import Role
from tests.support.processes import LiveServer

STALL_AFTER = 2.0  # the floor; steps take ~50 ms, so factor × median stays below it
TICK = 1.0  # the index watch's tick
TOTAL = 5
FAILED_STEP = 3
FAILED_MESSAGE = "Tela 3: o site da seguradora recusou o CEP"
SILENT_STEP = 2


@dataclass
class Fleet:
    """The servers a test drives: ``publishers`` take the jobs' events, ``readers`` are asked for the lists."""

    publishers: list[LiveServer]
    readers: list[LiveServer]
    prefix: str
    succeed: set[str] = field(default_factory=set)
    fail: set[str] = field(default_factory=set)
    silent: set[str] = field(default_factory=set)
    silent_since: float = 0.0

    def token(self, role: Role = Role.OBSERVE) -> str:
        return self.readers[0].token("*", role)


def _servers(redis_url: str | None, count: int, prefix: str) -> list[LiveServer]:
    env = {"SSE_PROGRESS_STALL_AFTER": str(STALL_AFTER), "SSE_PROGRESS_PREFIX": prefix}
    servers = [LiveServer(redis_url, env) for _ in range(count)]
    for live in servers:
        live.start()
    return servers


@pytest.fixture(scope="module", params=["redis", "memory"])
def fleet(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Fleet]:
    prefix = "idx" + uuid.uuid4().hex[:8]
    if request.param == "redis":
        servers = _servers(redis_url, 2, prefix)
        yield Fleet(publishers=servers, readers=servers, prefix=prefix)
    else:
        servers = _servers(None, 1, prefix)
        yield Fleet(publishers=servers, readers=servers, prefix=prefix)
    for live in servers:
        live.stop()


async def _publish(client: httpx.AsyncClient, live: LiveServer, session_id: str, etapa: int, **fields: object) -> None:
    headers = {"Authorization": f"Bearer {live.token(session_id, Role.PUBLISH)}"}
    body = {"etapa_atual": etapa, "total_etapas": TOTAL, "mensagem": f"Tela {etapa}", **fields}
    response = await client.post(f"{live.url}/sessions/{session_id}/events", json=body, headers=headers)
    assert response.status_code == 201, response.text


async def _job(client: httpx.AsyncClient, fleet: Fleet, number: int, session_id: str) -> None:
    live = fleet.publishers[number % len(fleet.publishers)]  # jobs spread over both instances
    kind = number % 3
    last = TOTAL if kind == 0 else FAILED_STEP if kind == 1 else SILENT_STEP
    for etapa in range(1, last + 1):
        await _publish(client, live, session_id, etapa)
        await asyncio.sleep(0.05)
    if kind == 2:
        fleet.silent_since = max(fleet.silent_since, time.monotonic())
    elif kind == 0:
        await _publish(client, live, session_id, TOTAL, status="success", mensagem="Cotação concluída")
    elif kind == 1:
        await _publish(client, live, session_id, FAILED_STEP, status="error", mensagem=FAILED_MESSAGE)


def _drive(fleet: Fleet) -> None:
    sessions = [f"j{number:02d}" + uuid.uuid4().hex[:8] for number in range(30)]
    for number, session_id in enumerate(sessions):
        (fleet.succeed, fleet.fail, fleet.silent)[number % 3].add(session_id)

    async def run() -> None:
        async with httpx.AsyncClient(timeout=15) as client:
            await asyncio.gather(*(_job(client, fleet, n, sid) for n, sid in enumerate(sessions)))

    asyncio.run(run())


def _list(live: LiveServer, token: str, status: str | None = None, limit: int = 500) -> list[dict[str, object]]:
    params = {"token": token, "limit": str(limit), **({"status": status} if status else {})}
    response = httpx.get(f"{live.url}/sessions", params=params, timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    return list(body["sessions"])


def _ids(rows: list[dict[str, object]]) -> set[str]:
    return {str(row["session_id"]) for row in rows}


def _wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class ChangeStream:
    """Reads ``/ops/events`` in a thread, keeping each session's latest change record."""

    def __init__(self, live: LiveServer, token: str) -> None:
        self.changes: list[dict[str, object]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, args=(live, token), daemon=True)
        self.connected = threading.Event()
        self._thread.start()

    def _read(self, live: LiveServer, token: str) -> None:
        with httpx.stream("GET", f"{live.url}/ops/events", params={"token": token}, timeout=30) as response:
            assert response.status_code == 200
            self.connected.set()
            for line in response.iter_lines():
                if self._stop:
                    return
                if line.startswith("data: "):
                    self.changes.append(json.loads(line[6:]))

    def of(self, change: str) -> set[str]:
        return {str(record["session_id"]) for record in self.changes if record["change"] == change}

    def close(self) -> None:
        self._stop = True


def test_thirty_jobs_land_in_exactly_the_expected_lists_and_silent_ones_stall_then_resume(fleet: Fleet) -> None:
    token = fleet.token()
    stream = ChangeStream(fleet.readers[-1], token)
    assert stream.connected.wait(15)
    _drive(fleet)
    driven = fleet.succeed | fleet.fail | fleet.silent

    for reader in fleet.readers:  # every instance sees every job, whichever instance took its events
        assert _ids(_list(reader, token, "success")) == fleet.succeed
        failed = _list(reader, token, "error")
        assert _ids(failed) == fleet.fail
        assert {(row["failed_step"], row["snapshot"]["mensagem"]) for row in failed} == {  # type: ignore[index]
            (FAILED_STEP, FAILED_MESSAGE)
        }
        assert _ids(_list(reader, token, "cancelled")) == set()
        everything = _list(reader, token)
        assert _ids(everything) == driven and len(everything) == 30
        assert [row["snapshot"]["id"] for row in everything] == sorted(  # type: ignore[index]
            (row["snapshot"]["id"] for row in everything),  # type: ignore[index]
            key=lambda text: tuple(int(part) for part in str(text).split("-")),
            reverse=True,
        ), "newest first"

    # Still within the threshold: the silent jobs are running, not stalled.
    if time.monotonic() - fleet.silent_since < STALL_AFTER - 0.5:
        assert fleet.silent <= _ids(_list(fleet.readers[0], token, "running"))

    def silent_are_stalled() -> bool:
        return all(_ids(_list(reader, token, "stalled")) == fleet.silent for reader in fleet.readers)

    _wait_for(silent_are_stalled, STALL_AFTER + TICK + 5, "the silent jobs to be listed as stalled")
    assert time.monotonic() - fleet.silent_since >= STALL_AFTER - 0.2, "stalled before the threshold"
    for reader in fleet.readers:
        assert _ids(_list(reader, token, "running")) == set()
        for row in _list(reader, token, "stalled"):
            assert row["stalled"] is True and row["state"] == "stalled"
            assert float(row["last_event_age_s"]) >= STALL_AFTER  # type: ignore[arg-type]
    _wait_for(lambda: stream.of("stalled") == fleet.silent, TICK + 5, "a 'stalled' change for each silent job")
    assert stream.of("finished") >= fleet.succeed | fleet.fail

    # Half of the silent jobs report again: they leave the stalled list at once (no wait for a tick).
    resumed = set(sorted(fleet.silent)[:5])

    async def report_again() -> None:
        async with httpx.AsyncClient(timeout=15) as client:
            await asyncio.gather(*(_publish(client, fleet.publishers[0], sid, SILENT_STEP + 1) for sid in resumed))

    asyncio.run(report_again())
    for reader in fleet.readers:
        assert _ids(_list(reader, token, "running")) == resumed
        assert _ids(_list(reader, token, "stalled")) == fleet.silent - resumed
    _wait_for(lambda: stream.of("resumed") == resumed, TICK + 5, "a 'resumed' change for each job that reported")
    stream.close()

    # Paging: a cursor walk of limit 7 yields every session once, in the same order as one big page.
    walked: list[str] = []
    cursor = None
    while True:
        params = {"token": token, "limit": "7", **({"cursor": cursor} if cursor else {})}
        body = httpx.get(f"{fleet.readers[0].url}/sessions", params=params, timeout=10).json()
        walked += [row["session_id"] for row in body["sessions"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert walked == [row["session_id"] for row in _list(fleet.readers[0], token)]

    _check_metrics(fleet, resumed)


def _check_metrics(fleet: Fleet, resumed: set[str]) -> None:
    """Families present, no session id in any label, values equal to the driven jobs (on every instance)."""
    for reader in fleet.readers:
        _wait_for(
            lambda reader=reader: _scrape(reader)[1].get(("sse_progress_sessions_running", ())) == len(resumed),
            TICK + 5,
            "the running gauge",
        )
        families, samples = _scrape(reader)
        assert families["sse_progress_jobs_finished"] == "counter"
        assert families["sse_progress_step_duration_seconds"] == "histogram"
        assert families["sse_progress_sessions_running"] == "gauge"
        assert families["sse_progress_sessions_stalled"] == "gauge"
        finished = "sse_progress_jobs_finished_total"
        assert samples[(finished, (("status", "success"),))] == len(fleet.succeed)
        assert samples[(finished, (("status", "error"),))] == len(fleet.fail)
        assert samples[(finished, (("status", "cancelled"),))] == 0
        assert samples[("sse_progress_sessions_stalled", ())] == len(fleet.silent) - len(resumed)
        # Step n ended in every job that went past it, or that ended on it (success on 5, error on 3).
        expected_steps = {1: 30, 2: 20 + len(resumed), 3: 20, 4: 10, 5: 10}
        counted = {
            int(dict(labels)["step"]): value
            for (name, labels), value in samples.items()
            if name == "sse_progress_step_duration_seconds_count"
        }
        assert counted == expected_steps
        session_ids = fleet.succeed | fleet.fail | fleet.silent
        for _, labels in samples:
            for label, value in labels:
                assert label != "session_id" and value not in session_ids, (label, value)


def _scrape(live: LiveServer) -> tuple[dict[str, str], dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    text = httpx.get(f"{live.url}/metrics", timeout=10).text
    families, samples = {}, {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return families, samples


def test_bad_queries_are_refused_naming_the_parameter(memory_server: LiveServer) -> None:
    token = memory_server.token("*", Role.OBSERVE)
    for params, named in (
        ({"status": "stuck"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"cursor": "nonsense"}, "cursor"),
    ):
        response = httpx.get(f"{memory_server.url}/sessions", params={"token": token, **params}, timeout=10)
        assert response.status_code == 400 and response.json()["error"].startswith(named), response.text


def test_the_list_needs_an_observe_or_admin_token_for_every_session(memory_server: LiveServer) -> None:
    url = f"{memory_server.url}/sessions"
    assert httpx.get(url, timeout=10).status_code == 401
    for token in (
        memory_server.token("abc", Role.SUBSCRIBE),
        memory_server.token("*", Role.PUBLISH),
        memory_server.token("abc", Role.OBSERVE),
    ):
        assert httpx.get(url, params={"token": token}, timeout=10).status_code == 403
    for role in (Role.OBSERVE, Role.ADMIN):
        assert httpx.get(url, params={"token": memory_server.token("*", role)}, timeout=10).status_code == 200
    # An observer follows any session (the ops page's click-through) but cannot publish or read /stats.
    observer = {"Authorization": f"Bearer {memory_server.token('*', Role.OBSERVE)}"}
    posted = httpx.post(f"{url}/abc/events", json={"etapa_atual": 1, "total_etapas": 2}, headers=observer)
    assert posted.status_code == 403
    assert httpx.get(f"{memory_server.url}/stats", headers=observer, timeout=10).status_code == 403
    assert httpx.get(f"{url}/abc", headers=observer, timeout=10).status_code == 404  # allowed; no such session


def test_a_cluster_server_lists_sessions_from_every_master(cluster_server: LiveServer) -> None:
    """On a Redis Cluster the index lives in one slot of its own; sessions on all three masters are listed."""
    from tests.support.processes import session_id_on_shard

    sessions = {shard: session_id_on_shard(shard) for shard in (0, 1, 2)}

    async def drive() -> None:
        async with httpx.AsyncClient(timeout=15) as client:
            for shard, session_id in sessions.items():
                await _publish(client, cluster_server, session_id, 1)
                if shard == 2:
                    await _publish(client, cluster_server, session_id, 2, status="error", mensagem=FAILED_MESSAGE)

    asyncio.run(drive())
    token = cluster_server.token("*", Role.OBSERVE)
    assert {sessions[0], sessions[1]} <= _ids(_list(cluster_server, token, "running"))
    failed = [row for row in _list(cluster_server, token, "error") if row["session_id"] == sessions[2]]
    assert failed and failed[0]["failed_step"] == 2
    assert sessions[2] not in _ids(_list(cluster_server, token, "running"))
