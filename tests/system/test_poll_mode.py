"""EventSource poll mode: the server answers at once and closes; the client's reconnects are the poll loop."""

from __future__ import annotations

import time

import httpx

from tests.support.clients import Publisher
from tests.support.processes import LiveServer


def parse_frames(body: str) -> tuple[int | None, list[dict[str, str]]]:
    retry, frames, current = None, [], {}
    for line in body.split("\n"):
        if not line:
            if current:
                frames.append(current)
            current = {}
        elif line.startswith("retry: "):
            retry = int(line[len("retry: ") :])
        else:
            name, _, value = line.partition(": ")
            current[name] = value
    return retry, frames


async def test_successive_polls_yield_every_event_exactly_once_then_204(server: LiveServer, session_id: str) -> None:
    publisher = Publisher(server.url, server.token(session_id, "publish"), session_id)
    url = f"{server.url}/sessions/{session_id}/events"
    params = {"token": server.token(session_id), "mode": "poll"}
    published: list[str] = []
    seen: list[str] = []
    last: str | None = "earliest"
    async with httpx.AsyncClient(timeout=5) as client:
        for round_ in range(6):
            for _ in range(3):
                published.append((await publisher.step(len(published) + 1))["id"])
            if round_ == 5:
                published.append((await publisher.step(99, "success"))["id"])
            started = time.monotonic()
            response = await client.get(url, params=params, headers={"Last-Event-ID": last} if last else {})
            assert time.monotonic() - started < 1.0, "poll mode must answer at once"
            assert response.status_code == 200
            retry, frames = parse_frames(response.text)
            assert retry == 300  # SSE_PROGRESS_POLL_MS in the test server
            seen.extend(frame["id"] for frame in frames)
            last = seen[-1]
        final = await client.get(url, params=params, headers={"Last-Event-ID": last})
    await publisher.aclose()
    assert seen == published
    assert final.status_code == 204


async def test_poll_without_resume_id_gets_the_snapshot(server: LiveServer, session_id: str) -> None:
    publisher = Publisher(server.url, server.token(session_id, "publish"), session_id)
    await publisher.step(1)
    latest = await publisher.step(2)
    await publisher.aclose()
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(
            f"{server.url}/sessions/{session_id}/events", params={"token": server.token(session_id), "mode": "poll"}
        )
    _, frames = parse_frames(response.text)
    assert [(f["event"], f["id"]) for f in frames] == [("snapshot", latest["id"])]


async def test_poll_of_a_session_without_events_sets_id_zero_so_the_next_poll_misses_nothing(
    server: LiveServer, session_id: str
) -> None:
    url = f"{server.url}/sessions/{session_id}/events"
    params = {"token": server.token(session_id), "mode": "poll"}
    async with httpx.AsyncClient(timeout=5) as client:
        first = await client.get(url, params=params)
        assert first.status_code == 200 and parse_frames(first.text) == (300, [{"id": "0"}])
        publisher = Publisher(server.url, server.token(session_id, "publish"), session_id)
        published = [(await publisher.step(etapa))["id"] for etapa in (1, 2, 3)]
        await publisher.aclose()
        # What a plain EventSource sends next: the last id it was given.
        second = await client.get(url, params=params, headers={"Last-Event-ID": "0"})
    _, frames = parse_frames(second.text)
    assert [(f["event"], f["id"]) for f in frames] == [("progress_update", event_id) for event_id in published]


async def test_unknown_mode_is_400(server: LiveServer, session_id: str) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(
            f"{server.url}/sessions/{session_id}/events", params={"token": server.token(session_id), "mode": "x"}
        )
    assert response.status_code == 400 and "mode" in response.json()["error"]
