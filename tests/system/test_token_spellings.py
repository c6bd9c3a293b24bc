"""One token, many spellings: base64 decoding forgives padding, stray characters and unused trailing bits, so a
signature verifies under hundreds of spellings. Only the issued spelling is accepted, and the publish rate limit
counts a token by its verified claims, so neither can be used to publish past the limit."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator

import httpx
import pytest
from itsdangerous import BadSignature, URLSafeSerializer

from sse_progress.protocol.tokens import SALT, Role, TokenAuthority
from tests.support.processes import SECRET, LiveServer

RATE = 50  # events per second; bursts of 2 x RATE
STRAY = "!*~$"
BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def spellings(token: str, count: int) -> list[str]:
    """``count`` spellings of ``token`` other than itself that its verifier accepts as the same signature."""
    value, _, signature = token.rpartition(".")
    last = signature[-1]
    # The signature's 160 bits fill 27 characters: the low 2 bits of the last one are unused.
    twins = [c for c in BASE64URL if BASE64URL.index(c) >> 2 == BASE64URL.index(last) >> 2]
    variants = [f"{signature[:-1]}{twin}" for twin in twins]
    for twin, position, stray in itertools.product(variants[:], range(len(signature) + 1), STRAY):
        variants.append(twin[:position] + stray + twin[position:])
    padded = [variant + padding for padding in ("", "=", "==") for variant in variants]
    verifier = URLSafeSerializer([SECRET], salt=SALT)
    accepted = [f"{value}.{variant}" for variant in dict.fromkeys(padded) if variant != signature]
    accepted = [spelling for spelling in accepted if _verifies(verifier, spelling)]
    assert len(accepted) >= count, len(accepted)
    return accepted[:count]


def _verifies(verifier: URLSafeSerializer, spelling: str) -> bool:
    try:
        verifier.loads(spelling)
    except BadSignature:
        return False
    return True


@pytest.fixture(scope="module")
def limited_server(redis_url: str) -> Iterator[LiveServer]:
    # Two signing keys (rotation): the same claims signed by each are two canonical spellings of one token.
    live = LiveServer(redis_url, env={"SSE_PROGRESS_PUBLISH_RATE": str(RATE), "SSE_PROGRESS_SECRET": f"{SECRET},old"})
    live.start()
    yield live
    live.stop()


async def publish_with(server: LiveServer, session_id: str, tokens: list[str]) -> list[httpx.Response]:
    event = {"etapa_atual": 1, "total_etapas": 9}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        return list(
            await asyncio.gather(
                *(
                    http.post(f"/sessions/{session_id}/events", json=event, headers={"Authorization": f"Bearer {t}"})
                    for t in tokens
                )
            )
        )


async def test_300_spellings_of_one_token_publish_no_more_than_the_limit(
    limited_server: LiveServer, session_id: str
) -> None:
    token = limited_server.token(session_id, Role.PUBLISH)
    variants = spellings(token, 299)
    verifier = URLSafeSerializer([SECRET], salt=SALT)
    assert all(verifier.loads(variant) == verifier.loads(token) for variant in variants)  # one signature, 300 ways

    started = time.monotonic()
    responses = await publish_with(limited_server, session_id, [token, *variants])
    elapsed = time.monotonic() - started
    accepted = sum(response.status_code == 201 for response in responses)
    assert 1 <= accepted <= 2 * RATE + RATE * elapsed, (accepted, elapsed)
    async with httpx.AsyncClient(base_url=limited_server.url, timeout=10) as http:
        history = await http.get(f"/sessions/{session_id}/history", headers={"Authorization": f"Bearer {token}"})
    assert len(history.json()["events"]) == accepted


async def test_a_token_not_spelled_as_issued_is_refused_with_the_reason(
    limited_server: LiveServer, session_id: str
) -> None:
    token = limited_server.token(session_id, Role.PUBLISH)
    variants = spellings(token, 40)
    for response in await publish_with(limited_server, session_id, variants):
        assert response.status_code == 401
        assert "not spelled as it was issued" in response.json()["error"]
    async with httpx.AsyncClient(base_url=limited_server.url, timeout=10) as http:
        for variant in variants[:5]:  # reading too, in the query string as browsers send it
            response = await http.get(f"/sessions/{session_id}", params={"token": variant})
            assert response.status_code == 401 and "exactly as issued" in response.json()["error"]


async def test_tokens_with_the_same_claims_share_one_budget(limited_server: LiveServer, session_id: str) -> None:
    """The same claims signed with the current and the previous key (rotation) are one token to the limiter."""
    ttl = 3600
    current = TokenAuthority((SECRET,)).issue(session_id, Role.PUBLISH, ttl)
    previous = TokenAuthority(("old",)).issue(session_id, Role.PUBLISH, ttl)
    assert current != previous
    started = time.monotonic()
    responses = await publish_with(limited_server, session_id, [current, previous] * 150)
    elapsed = time.monotonic() - started
    assert {response.status_code for response in responses} == {201, 429}
    accepted = sum(response.status_code == 201 for response in responses)
    assert accepted <= 2 * RATE + RATE * elapsed, (accepted, elapsed)
