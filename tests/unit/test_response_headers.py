"""One rule for the headers of every answer: nosniff once, CORS only for configured origins, preflights."""

from __future__ import annotations

from sse_progress.server.headers import NOSNIFF, preflight, response_headers

ORIGINS = ("https://app.example",)


def test_nosniff_is_added_once() -> None:
    assert response_headers(None, ()) == [NOSNIFF]
    assert response_headers(None, (), present=[NOSNIFF]) == []


def test_an_allowed_origin_gets_cors_with_credentials_and_vary() -> None:
    added = dict(response_headers("https://app.example", ORIGINS))
    assert added[b"access-control-allow-origin"] == b"https://app.example"
    assert added[b"access-control-allow-credentials"] == b"true"
    assert added[b"vary"] == b"Origin"


def test_another_origin_or_none_configured_gets_no_cors() -> None:
    assert response_headers("https://evil.example", ORIGINS) == [NOSNIFF]
    assert response_headers("https://app.example", ()) == [NOSNIFF]


def test_a_wildcard_answers_with_the_requesting_origin() -> None:
    assert (
        dict(response_headers("https://any.example", ("*",)))[b"access-control-allow-origin"] == b"https://any.example"
    )


def test_a_preflight_is_allowed_for_a_configured_origin_and_refused_with_400_otherwise() -> None:
    allowed = preflight("https://app.example", ORIGINS)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "last-event-id" in allowed.headers["access-control-allow-headers"].lower()
    assert preflight("https://evil.example", ORIGINS).status_code == 400
