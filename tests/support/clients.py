"""Test clients that speak each transport, so one contract test can run over all of them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

import httpx
import websockets
from httpx_sse import aconnect_sse

from tests.support.processes import LiveServer, running

TERMINAL = {"success", "error", "cancelled"}


@dataclass
class Received:
    id: str
    kind: str
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.data.get("status") in TERMINAL


class Follower(Protocol):
    status_code: int

    async def next(self, timeout: float = 10.0) -> Received | None:
        """The next frame, or None when the server ended the stream."""
        ...


def id_key(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


class SseFollower:
    def __init__(self, events: AsyncIterator[Any], status_code: int) -> None:
        self._events = events
        self.status_code = status_code
        self.retry: int | None = None

    async def next(self, timeout: float = 10.0) -> Received | None:
        while True:
            try:
                event = await asyncio.wait_for(anext(self._events), timeout)
            except StopAsyncIteration:
                return None
            if event.retry is not None:
                self.retry = event.retry
            if event.data:
                return Received(event.id, event.event, json.loads(event.data))


class WsFollower:
    def __init__(self, socket: Any) -> None:
        self.socket = socket
        self.status_code = 200
        self.greeting: dict[str, Any] | None = None
        self.close_code: int | None = None

    async def next(self, timeout: float = 10.0) -> Received | None:
        try:
            message = json.loads(await asyncio.wait_for(self.socket.recv(), timeout))
        except websockets.ConnectionClosed as closed:
            self.close_code = closed.rcvd.code if closed.rcvd else None
            return None
        return Received(message["id"], message["type"], message)


@asynccontextmanager
async def follow(
    transport: str, base_url: str, session_id: str, token: str, resume: str | None = None
) -> AsyncIterator[Follower]:
    """Open a stream of a session over ``sse`` or ``ws``, resuming after ``resume`` when given."""
    if transport == "sse":
        headers = {"Last-Event-ID": resume} if resume is not None else {}
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=30.0)) as client,
            aconnect_sse(
                client, "GET", f"{base_url}/sessions/{session_id}/events", params={"token": token}, headers=headers
            ) as source,
        ):
            if source.response.status_code != 200:
                yield SseFollower(_nothing(), source.response.status_code)
                return
            yield SseFollower(source.aiter_sse(), 200)
    elif transport == "ws":
        query = f"token={token}" + (f"&last_event_id={resume}" if resume is not None else "")
        url = base_url.replace("http://", "ws://") + f"/ws/sessions/{session_id}?{query}"
        async with websockets.connect(url, open_timeout=10) as socket:
            follower = WsFollower(socket)
            follower.greeting = json.loads(await asyncio.wait_for(socket.recv(), 10))
            yield follower
    else:
        raise ValueError(transport)


async def _nothing() -> AsyncIterator[Any]:
    return
    yield


async def collect_until_end(follower: Follower, limit: int = 10_000, timeout: float = 15.0) -> list[Received]:
    """Every frame until the server ends the stream (after the terminal event)."""
    frames: list[Received] = []
    while len(frames) < limit:
        frame = await follower.next(timeout)
        if frame is None:
            return frames
        frames.append(frame)
    raise AssertionError(f"more than {limit} frames")


class Publisher:
    """Publishes through the HTTP API, as a non-Python producer would."""

    def __init__(self, base_url: str, token: str, session_id: str, total: int = 15) -> None:
        self.client = httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        self.session_id = session_id
        self.total = total

    async def step(self, etapa: int, status: str = "running", **fields: Any) -> dict[str, Any]:
        body = {"etapa_atual": etapa, "total_etapas": self.total, "mensagem": f"step {etapa}", "status": status}
        response = await self.client.post(f"/sessions/{self.session_id}/events", json={**body, **fields})
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()


@asynccontextmanager
async def serving(
    redis_url: str | None, session_id: str, env: dict[str, str] | None = None, total: int = 15
) -> AsyncIterator[tuple[LiveServer, Publisher]]:
    """A server of the test's own on ``redis_url`` (which the test may stop or empty) and a publisher of
    ``session_id`` through it; both are stopped after the block."""
    with running(LiveServer(redis_url, env=env)) as live:
        async with Publisher(live.url, live.token(session_id, "publish"), session_id, total) as publisher:
            yield live, publisher
