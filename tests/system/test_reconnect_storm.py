"""A reconnect storm: clients of one session that come back together share one history read."""

from __future__ import annotations

import asyncio

import redis

from tests.support.clients import Publisher
from tests.support.processes import LiveServer

CLIENTS = 50


def script_calls(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return sum(int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_evalsha", "cmdstat_eval"))


async def test_clients_resuming_together_share_one_read_and_each_gets_every_missed_event(
    server: LiveServer, session_id: str
) -> None:
    publisher = Publisher(server.url, server.token(session_id, "publish"), session_id)
    ids = [(await publisher.step(etapa))["id"] for etapa in (1, 2, 3, 4)]
    await publisher.aclose()
    token = server.token(session_id)
    request = (
        f"GET /sessions/{session_id}/events?token={token} HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {ids[0]}\r\n\r\n"
    ).encode()
    sockets = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(CLIENTS)]
    # One stream subscribes the session first, so the storm finds it subscribed, as after a real drop.
    first_reader, first_writer = await asyncio.open_connection("127.0.0.1", server.port)
    first_writer.write(request)
    await first_reader.readuntil(f"id: {ids[-1]}\n".encode())

    before = script_calls(server.redis_url)
    for _, writer in sockets:  # all requests leave at once: the server reads them in one turn of its loop
        writer.write(request)
    received = await asyncio.gather(*(reader.readuntil(f"id: {ids[-1]}\n".encode()) for reader, _ in sockets))
    reads = script_calls(server.redis_url) - before

    for body in received:
        assert [line for line in body.decode().splitlines() if line.startswith("id: ")] == [
            f"id: {event_id}" for event_id in ids[1:]
        ]
    assert reads < CLIENTS / 5, f"{CLIENTS} identical resumes cost {reads} history reads"
    for _, writer in [*sockets, (first_reader, first_writer)]:
        writer.close()
