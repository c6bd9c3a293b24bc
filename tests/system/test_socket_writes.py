"""Live frames go straight from the fan-out to the socket where the server allows it, and through ``send``
elsewhere: the client gets the same frames either way.

Where it happens is read from ``sse_progress_events_written_to_socket_total``: under uvicorn's HTTP protocols
(httptools, h11) and its sans-I/O WebSocket protocol every live frame of a caught-up stream is written there;
under uvicorn's older ``websockets`` protocol and under hypercorn none is.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.clients import Publisher, follow
from tests.support.processes import LiveServer

LIVE_EVENTS = 20

# (ASGI server, its options, transport, whether live frames are written straight to the socket)
SETUPS = [
    ("uvicorn", ("--http", "httptools"), "sse", True),
    ("uvicorn", ("--http", "h11"), "sse", True),
    ("uvicorn", ("--ws", "websockets-sansio"), "ws", True),
    ("uvicorn", ("--ws", "websockets"), "ws", False),
    ("hypercorn", (), "sse", False),
    ("hypercorn", (), "ws", False),
]


@pytest.fixture(params=SETUPS, ids=lambda setup: f"{setup[0]}{''.join(setup[1]).replace('--', '-')}-{setup[2]}")
def setup(request: pytest.FixtureRequest, redis_url: str) -> Iterator[tuple[LiveServer, str, bool]]:
    asgi, options, transport, direct = request.param
    live = LiveServer(redis_url, asgi=asgi, options=options)
    live.start()
    yield live, transport, direct
    live.stop()


def written_to_socket(live: LiveServer, transport: str) -> float:
    prefix = f'sse_progress_events_written_to_socket_total{{transport="{transport}"}} '
    for line in httpx.get(f"{live.url}/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


async def test_live_frames_reach_the_client_in_order_written_where_the_server_allows(
    setup: tuple[LiveServer, str, bool], session_id: str
) -> None:
    live, transport, direct = setup
    async with Publisher(live.url, live.token(session_id, "publish"), session_id, total=LIVE_EVENTS + 2) as publisher:
        first = await publisher.step(1)
        async with follow(transport, live.url, session_id, live.token(session_id)) as follower:
            snapshot = await follower.next()
            assert snapshot is not None and snapshot.id == first["id"]
            before = written_to_socket(live, transport)
            ids = []
            for etapa in range(2, LIVE_EVENTS + 2):
                ids.append((await publisher.step(etapa))["id"])
                received = await follower.next()  # each one arrives while the stream waits, caught up
                assert received is not None and received.id == ids[-1]
            written = written_to_socket(live, transport) - before
            final = await publisher.step(LIVE_EVENTS + 2, "success")
            last = await follower.next()
            assert last is not None and last.id == final["id"] and last.data["status"] == "success"
            assert await follower.next(5) is None  # the terminal frame still ends the stream
    if direct:
        assert written == LIVE_EVENTS, f"{written} of {LIVE_EVENTS} live frames were written straight to the socket"
    else:
        assert written == 0
