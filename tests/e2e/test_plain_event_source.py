"""A plain browser ``EventSource`` (no client library) rides out a Redis outage: it is never told to give up.

Chromium stops an EventSource for good on any answer but 200; the server answers a stream or poll request that
meets an unavailable store with 200, a comment and a ``retry:``, so the browser comes back by itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page

from tests.support.processes import LiveServer, RedisServer

CLOSED = 2  # EventSource.CLOSED


@pytest.fixture
def outage_server() -> Iterator[tuple[RedisServer, LiveServer]]:
    store = RedisServer()
    store.start()
    live = LiveServer(store.url)
    live.start()
    yield store, live
    live.stop()
    store.stop()


@pytest.mark.parametrize("mode", ["stream", "poll"])
def test_a_plain_event_source_keeps_trying_through_a_redis_outage_and_gets_the_next_event(
    page: Page, outage_server: tuple[RedisServer, LiveServer], sid: str, mode: str
) -> None:
    store, live = outage_server
    page.goto(f"{live.url}/healthz")  # any page of the server's origin
    store.stop(kill=True)
    url = f"/sessions/{sid}/events?token={live.token(sid)}" + ("&mode=poll" if mode == "poll" else "")
    page.evaluate(
        """url => {
            window.__log = { errors: 0, closed: false, frames: [] };
            const source = new EventSource(url);
            window.__source = source;
            source.onerror = () => {
                window.__log.errors += 1;
                if (source.readyState === EventSource.CLOSED) window.__log.closed = true;
            };
            for (const kind of ["snapshot", "progress_update"]) {
                source.addEventListener(kind, event => window.__log.frames.push(JSON.parse(event.data)));
            }
        }""",
        url,
    )
    # At least one answer during the outage, and the browser is still trying.
    page.wait_for_function("() => window.__log.errors >= 1 || window.__log.frames.length > 0", timeout=30_000)
    assert page.evaluate("() => window.__log.closed") is False
    assert page.evaluate("() => window.__source.readyState") != CLOSED
    store.start()
    published = httpx.post(
        f"{live.url}/sessions/{sid}/events",
        json={"etapa_atual": 1, "total_etapas": 2, "mensagem": "after the outage"},
        headers={"Authorization": f"Bearer {live.token(sid, 'publish')}"},
        timeout=10,
    ).json()["data"]
    page.wait_for_function("() => window.__log.frames.length > 0", timeout=40_000)
    frames = page.evaluate("() => window.__log.frames")
    assert frames[0]["id"] == published["id"], json.dumps(frames)
    assert page.evaluate("() => window.__log.closed") is False
    page.evaluate("() => window.__source.close()")
