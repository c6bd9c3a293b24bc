"""The JSON API: snapshot with ETag, history, publishing and its errors, auth, health."""

from __future__ import annotations

import httpx
import pytest

from tests.support.clients import Publisher, collect_until_end, follow
from tests.support.processes import LiveServer


@pytest.fixture
async def client(server: LiveServer):  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        yield http


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_snapshot_has_an_etag_and_answers_304_when_unchanged(
    server: LiveServer, client: httpx.AsyncClient, session_id: str
) -> None:
    publisher = Publisher(server.url, server.token(session_id, "publish"), session_id)
    latest = await publisher.step(4)
    await publisher.aclose()
    response = await client.get(f"/sessions/{session_id}", params={"token": server.token(session_id)})
    assert response.status_code == 200
    assert response.json() == {"success": True, "data": latest}
    assert response.headers["etag"] == f'"{latest["id"]}"'
    assert response.headers["x-content-type-options"] == "nosniff"
    cached = await client.get(
        f"/sessions/{session_id}",
        headers={**bearer(server.token(session_id)), "If-None-Match": response.headers["etag"]},
    )
    assert cached.status_code == 304 and cached.content == b""


async def test_unknown_session_is_404_with_a_json_error(server: LiveServer, client: httpx.AsyncClient) -> None:
    response = await client.get("/sessions/nobody-here", params={"token": server.token("nobody-here")})
    assert response.status_code == 404
    assert response.json()["success"] is False and "no such session" in response.json()["error"]


async def test_unknown_routes_and_methods_get_json_errors(client: httpx.AsyncClient, session_id: str) -> None:
    missing = await client.get("/no/such/route")
    assert missing.status_code == 404
    assert missing.json() == {"success": False, "error": "no such route; see /openapi.json"}
    wrong = await client.delete(f"/sessions/{session_id}")
    assert wrong.status_code == 405 and "DELETE" in wrong.json()["error"] and "GET" in wrong.headers["allow"]


async def test_head_of_a_stream_answers_its_headers_without_opening_it(
    server: LiveServer, client: httpx.AsyncClient, session_id: str
) -> None:
    url = f"/sessions/{session_id}/events"
    response = await client.head(url, params={"token": server.token(session_id)})
    assert response.status_code == 200 and response.content == b""
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers.get_list("x-content-type-options") == ["nosniff"]
    assert (await client.head(url)).status_code == 401


async def test_history_lists_events_after_an_id(server: LiveServer, client: httpx.AsyncClient, session_id: str) -> None:
    publisher = Publisher(server.url, server.token(session_id, "publish"), session_id)
    events = [await publisher.step(n) for n in (1, 2, 3)]
    await publisher.aclose()
    token = {"token": server.token(session_id)}
    everything = await client.get(f"/sessions/{session_id}/history", params=token)
    assert everything.json()["events"] == events
    later = await client.get(f"/sessions/{session_id}/history", params={**token, "after": events[0]["id"]})
    assert later.json() == {"success": True, "truncated": False, "more": False, "events": events[1:]}
    bad = await client.get(f"/sessions/{session_id}/history", params={**token, "after": "yesterday"})
    assert bad.status_code == 422 and bad.json()["error"].startswith("after:")


@pytest.mark.parametrize(
    ("body", "status", "mentions"),
    [
        (b"not json", 400, "not JSON"),
        (b"[1, 2]", 422, "body"),
        (b'{"total_etapas": 15}', 422, "etapa_atual"),
        (b'{"etapa_atual": "3", "total_etapas": 15}', 422, "etapa_atual"),
        (b'{"etapa_atual": 3, "total_etapas": 0}', 422, "total_etapas"),
        (b'{"etapa_atual": 3, "total_etapas": 15, "status": "finished"}', 422, "status"),
        (b'{"etapa_atual": 3, "total_etapas": 15, "dados_extra": "x"}', 422, "dados_extra"),
        (b'{"etapa_atual": 3, "total_etapas": 15, "etapa": 3}', 422, "etapa"),
        (b'{"etapa_atual": 3, "total_etapas": 15, "timestamp": "tuesday"}', 422, "timestamp"),
        # fromisoformat alone takes these, and the event would carry them verbatim to every reader
        (b'{"etapa_atual": 3, "total_etapas": 15, "timestamp": "2026-01-01T00:00:00x+00:00"}', 422, "timestamp"),
        (b'{"etapa_atual": 3, "total_etapas": 15, "timestamp": "2026-01-01T00:00:00+00:00\\u0000"}', 422, "timestamp"),
        (b'{"etapa_atual": 3, "total_etapas": 15, "timestamp": "2026-01-01T00:00:00+00:00:30"}', 422, "timestamp"),
        (b'{"etapa_atual": 3, "total_etapas": 15, "timestamp": "2026-W01-1T00:00:00Z"}', 422, "timestamp"),
        # Not JSON: the error says what and where.
        (
            b'{"etapa_atual": 3, "total_etapas": 15, "mensagem": "\\ud800"}',
            400,
            "no low surrogate in string at line 1, column 53",
        ),
        (
            b'{"etapa_atual": 1e400, "total_etapas": 15}',
            400,
            "number is infinity when parsed as double at line 1, column 17",
        ),
        (b'{"etapa_atual": 3,\n "total_etapas": 15,}', 400, "at line 2, column 20"),
        (b'{"etapa_atual": 3, "mensagem": "\xed\xa0\x80"}', 400, "invalid UTF-8 at byte 32"),
        # Integers past 64 bits in dados_extra: refused, named, never turned into floats.
        (
            b'{"etapa_atual": 3, "total_etapas": 15, "dados_extra": {"ids": [1, 123456789012345678901234567890]}}',
            422,
            "dados_extra.ids[1]: integer outside the 64-bit range",
        ),
        (
            b'{"etapa_atual": 3, "total_etapas": 15, "dados_extra": {"a": {"b": 9223372036854775808}}}',
            422,
            "dados_extra.a.b: integer outside the 64-bit range",
        ),
        (
            b'{"etapa_atual": 3, "total_etapas": 15, "dados_extra": {"n": -9223372036854775809}}',
            422,
            "dados_extra.n: integer outside the 64-bit range",
        ),
        # A number that may be a wide integer, nested past the exact parser's recursion: refused for the nesting.
        (
            b'{"etapa_atual": 3, "total_etapas": 15, "dados_extra": {"a": '
            + b"[" * 1000
            + b"1e19"
            + b"]" * 1000
            + b"}}",
            422,
            "dados_extra: nested too deeply",
        ),
    ],
)
async def test_publish_rejects_bad_bodies_with_a_clear_error_and_stores_nothing(
    server: LiveServer, client: httpx.AsyncClient, session_id: str, body: bytes, status: int, mentions: str
) -> None:
    response = await client.post(
        f"/sessions/{session_id}/events", content=body, headers=bearer(server.token(session_id, "publish"))
    )
    assert response.status_code == status
    assert response.json()["success"] is False and mentions in response.json()["error"]
    snapshot = await client.get(f"/sessions/{session_id}", params={"token": server.token(session_id)})
    assert snapshot.status_code == 404


async def test_publish_body_over_64_kib_is_413(server: LiveServer, client: httpx.AsyncClient, session_id: str) -> None:
    body = b'{"etapa_atual": 1, "total_etapas": 2, "mensagem": "' + b"x" * 70_000 + b'"}'
    response = await client.post(
        f"/sessions/{session_id}/events", content=body, headers=bearer(server.token(session_id, "publish"))
    )
    assert response.status_code == 413 and "too large" in response.json()["error"]


async def test_publish_returns_201_with_the_envelope_and_409_after_the_end(
    server: LiveServer, client: httpx.AsyncClient, session_id: str
) -> None:
    headers = bearer(server.token(session_id, "publish"))
    created = await client.post(
        f"/sessions/{session_id}/events",
        json={"etapa_atual": 15, "total_etapas": 15, "mensagem": "fim", "status": "success"},
        headers=headers,
    )
    assert created.status_code == 201
    assert created.json()["data"]["percentual"] == 100.0 and created.json()["data"]["status"] == "success"
    refused = await client.post(
        f"/sessions/{session_id}/events", json={"etapa_atual": 1, "total_etapas": 15}, headers=headers
    )
    assert refused.status_code == 409 and refused.json()["success"] is False


async def test_status_defaults_to_running(server: LiveServer, client: httpx.AsyncClient, session_id: str) -> None:
    created = await client.post(
        f"/sessions/{session_id}/events",
        json={"etapa_atual": 1, "total_etapas": 15},
        headers=bearer(server.token(session_id, "publish")),
    )
    assert created.json()["data"]["status"] == "running"


@pytest.mark.parametrize("path", ["/sessions/{sid}", "/sessions/{sid}/events", "/sessions/{sid}/history"])
async def test_reading_needs_a_token_for_that_session(
    server: LiveServer, client: httpx.AsyncClient, session_id: str, path: str
) -> None:
    url = path.format(sid=session_id)
    assert (await client.get(url)).status_code == 401
    assert (await client.get(url, params={"token": "forged.token"})).status_code == 401
    assert (await client.get(url, params={"token": server.token("another")})).status_code == 403
    expired = server.token(session_id, ttl=-5)
    assert (await client.get(url, headers=bearer(expired))).status_code == 401


async def test_token_is_accepted_from_query_header_or_cookie(
    server: LiveServer, client: httpx.AsyncClient, session_id: str
) -> None:
    publisher = Publisher(server.url, server.token(session_id, "publish"), session_id)
    await publisher.step(1)
    await publisher.aclose()
    token = server.token(session_id)
    url = f"/sessions/{session_id}"
    assert (await client.get(url, params={"token": token})).status_code == 200
    assert (await client.get(url, headers=bearer(token))).status_code == 200
    assert (await client.get(url, headers={"Cookie": f"sse_progress_token={token}"})).status_code == 200


async def test_publishing_needs_a_publisher_token(
    server: LiveServer, client: httpx.AsyncClient, session_id: str
) -> None:
    body = {"etapa_atual": 1, "total_etapas": 15}
    url = f"/sessions/{session_id}/events"
    assert (await client.post(url, json=body)).status_code == 401
    assert (await client.post(url, json=body, headers=bearer(server.token(session_id)))).status_code == 403
    assert (await client.post(url, json=body, headers=bearer(server.token("*", "publish")))).status_code == 201


async def test_invalid_session_id_is_400(server: LiveServer, client: httpx.AsyncClient) -> None:
    response = await client.get("/sessions/bad.id/events", params={"token": server.token("x")})
    assert response.status_code == 400 and "session id" in response.json()["error"]


async def test_health_and_readiness(server: LiveServer, client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["engine"] == "redis"


async def test_readiness_is_503_when_redis_is_down(session_id: str) -> None:
    from tests.support.processes import RedisServer

    redis_server = RedisServer()
    redis_server.start()
    live = LiveServer(redis_server.url)
    live.start()
    try:
        redis_server.stop()
        async with httpx.AsyncClient(base_url=live.url, timeout=15) as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
            snapshot = await http.get(f"/sessions/{session_id}", params={"token": live.token(session_id)})
            assert snapshot.status_code == 503 and snapshot.json()["success"] is False
            assert (await http.get("/healthz")).status_code == 200
    finally:
        live.stop()
        redis_server.stop()


async def test_sse_response_headers_and_immediate_retry_line(
    server: LiveServer, client: httpx.AsyncClient, session_id: str
) -> None:
    async with client.stream("GET", f"/sessions/{session_id}/events", params={"token": server.token(session_id)}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-accel-buffering"] == "no"
        first = await anext(r.aiter_raw())
        assert first == b"retry: 500\n\n"


async def test_heartbeat_comment_keeps_an_idle_stream_alive(
    server: LiveServer, client: httpx.AsyncClient, session_id: str
) -> None:
    async with client.stream("GET", f"/sessions/{session_id}/events", params={"token": server.token(session_id)}) as r:
        chunks = r.aiter_raw()
        assert (await anext(chunks)).startswith(b"retry:")
        assert await anext(chunks) == b": ping\n\n"  # SSE_PROGRESS_HEARTBEAT=1 in the test server


async def test_publishing_faster_than_the_rate_limit_gets_429_with_retry_after(redis_url: str, session_id: str) -> None:
    live = LiveServer(redis_url, env={"SSE_PROGRESS_PUBLISH_RATE": "2"})
    live.start()
    try:
        async with httpx.AsyncClient(base_url=live.url, timeout=5) as http:
            headers = bearer(live.token(session_id, "publish"))
            statuses = [
                (await http.post(f"/sessions/{session_id}/events", json={"etapa_atual": n, "total_etapas": 9},
                                 headers=headers)).status_code
                for n in range(8)
            ]  # fmt: skip
            assert statuses[:4] == [201] * 4 and 429 in statuses[4:]
            limited = await http.post(
                f"/sessions/{session_id}/events", json={"etapa_atual": 1, "total_etapas": 9}, headers=headers
            )
            assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
            history = await http.get(f"/sessions/{session_id}/history", headers=headers)
            assert len(history.json()["events"]) == statuses.count(201)
    finally:
        live.stop()


async def test_the_sse_starlette_responder_serves_the_same_stream(redis_url: str, session_id: str) -> None:
    """``SSE_PROGRESS_RESPONDER=sse-starlette`` (kept for the benchmark) still honours the replay contract."""
    live = LiveServer(redis_url, env={"SSE_PROGRESS_RESPONDER": "sse-starlette"})
    live.start()
    try:
        publisher = Publisher(live.url, live.token(session_id, "publish"), session_id, total=3)
        published = [(await publisher.step(etapa))["id"] for etapa in (1, 2)]
        async with follow("sse", live.url, session_id, live.token(session_id), published[0]) as stream:
            replayed = await stream.next()
            published.append((await publisher.step(3, "success"))["id"])
            frames = [replayed, *await collect_until_end(stream)]
        await publisher.aclose()
    finally:
        live.stop()
    assert [(frame.kind, frame.id) for frame in frames if frame] == [("progress_update", i) for i in published[1:]]
