"""Data the service did not write, on a session's channel or snapshot key: skipped, logged once, counted.

A producer ported from an older system publishes its own JSON on the channel; before, one such message ended
live delivery for every session of the process.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import redis

from tests.support.clients import Publisher, collect_until_end, follow
from tests.support.processes import LiveServer
from tests.system.test_reliability import metric

# Ids an hour ahead: were such a message taken for an event, it would be newer than anything the job publishes.
FUTURE_ID = f"{int(time.time() * 1000) + 3_600_000}-0"
FOREIGN_MESSAGES = [
    b'{"type":"progress_update","etapa_atual":3}',  # the older system's JSON: no id
    b"not json at all",
    b"[1, 2, 3]",
    b'{"id": 12}',
    b'{"id": "yesterday"}',
    # A valid id is not enough: an envelope of this session, with its fields, is.
    json.dumps({"id": FUTURE_ID}).encode(),
    json.dumps(
        {"id": FUTURE_ID, "type": "progress_update", "session_id": "someone-else", "etapa_atual": 15,
         "total_etapas": 15, "status": "success"}
    ).encode(),
    json.dumps(
        {"id": FUTURE_ID, "type": "progress_update", "session_id": "{session_id}", "etapa_atual": "x",
         "total_etapas": 15, "status": "success"}
    ).encode(),
]  # fmt: skip


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_a_foreign_message_on_the_channel_is_skipped_and_live_delivery_goes_on(
    redis_url: str, session_id: str, transport: str
) -> None:
    live = LiveServer(redis_url)
    live.start()
    store = redis.Redis.from_url(redis_url)
    other_session = session_id + "b"
    publisher = Publisher(live.url, live.token(session_id, "publish"), session_id)
    other_publisher = Publisher(live.url, live.token(other_session, "publish"), other_session)
    try:
        async with (
            follow(transport, live.url, session_id, live.token(session_id), "0") as stream,
            follow(transport, live.url, other_session, live.token(other_session), "0") as other,
        ):
            for message in FOREIGN_MESSAGES:
                message = message.replace(b"{session_id}", session_id.encode())
                assert store.publish(f"rpa:session:{{{session_id}}}", message) == 1
            published = [(await publisher.step(1))["id"], (await publisher.step(15, "success"))["id"]]
            other_published = (await other_publisher.step(15, "success"))["id"]
            assert [frame.id for frame in await collect_until_end(stream)] == published
            assert [frame.id for frame in await collect_until_end(other)] == [other_published]
        counted = 'sse_progress_foreign_messages_total{where="channel"}'
        assert metric(live, counted) == len(FOREIGN_MESSAGES)
        assert (await asyncio.to_thread(httpx.get, f"{live.url}/readyz")).status_code == 200
        logged = [line for line in live.log.read_text().splitlines() if "not an event this service wrote" in line]
        assert len(logged) == 1 and session_id in logged[0] and "no event id" in logged[0]
    finally:
        store.close()
        await publisher.aclose()
        await other_publisher.aclose()
        live.stop()


@pytest.mark.parametrize(
    "value",
    [{"type": "progress_update", "etapa_atual": 3}, {"id": "1-0"}, {"id": "1-0", "session_id": "other"}],
    ids=["no id", "only an id", "another session"],
)
async def test_a_foreign_snapshot_key_is_no_history_not_a_500(
    server: LiveServer, session_id: str, value: dict[str, object]
) -> None:
    store = redis.Redis.from_url(server.redis_url or "")
    store.set(f"rpa:progress:{{{session_id}}}", json.dumps(value))
    params = {"token": server.token(session_id)}
    url = f"{server.url}/sessions/{session_id}"
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            snapshot = await client.get(url, params=params)
            assert snapshot.status_code == 404 and "no such session" in snapshot.json()["error"]
            history = await client.get(url + "/history", params=params)
            assert history.status_code == 404
            polled = await client.get(url + "/events", params={**params, "mode": "poll"})
            assert polled.status_code == 200 and polled.text == "retry: 300\n\nid: 0\n\n"
        # The stream waits for the first real event, which comes as a plain update: nothing to reset.
        publisher = Publisher(server.url, server.token(session_id, "publish"), session_id)
        async with follow("sse", server.url, session_id, server.token(session_id)) as stream:
            first = await publisher.step(15, "success")
            assert [(f.kind, f.id) for f in await collect_until_end(stream)] == [("progress_update", first["id"])]
        await publisher.aclose()
        assert metric(server, 'sse_progress_foreign_messages_total{where="snapshot"}') >= 1
    finally:
        store.close()
