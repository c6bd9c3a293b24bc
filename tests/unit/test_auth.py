"""Tokens: forged, tampered, expired, other-session and wrong-role tokens; key rotation."""

from __future__ import annotations

import base64
from types import SimpleNamespace

import pytest

from sse_progress.protocol import tokens
from sse_progress.protocol.errors import ApiError
from sse_progress.protocol.tokens import Role, TokenAuthority


def _status(call) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(ApiError) as raised:
        call()
    return raised.value.status


def test_a_subscriber_token_reads_its_own_session() -> None:
    authority = TokenAuthority(("k1",))
    claims = authority.check(authority.issue("abc", Role.SUBSCRIBE), "abc", Role.SUBSCRIBE)
    assert claims is not None and claims.session == "abc"


def test_missing_forged_tampered_and_expired_tokens_are_401() -> None:
    authority = TokenAuthority(("k1",))
    token = authority.issue("abc", Role.SUBSCRIBE)
    forged = TokenAuthority(("another-secret",)).issue("abc", Role.SUBSCRIBE)
    _payload, _, signature = token.rpartition(".")
    tampered = base64.urlsafe_b64encode(b'{"s":"xyz","r":"admin","e":9999999999}').decode().rstrip("=")
    assert _status(lambda: authority.check(None, "abc", Role.SUBSCRIBE)) == 401
    assert _status(lambda: authority.check(forged, "abc", Role.SUBSCRIBE)) == 401
    assert _status(lambda: authority.check(f"{tampered}.{signature}", "abc", Role.SUBSCRIBE)) == 401
    assert _status(lambda: authority.check(token[:-2] + "xx", "abc", Role.SUBSCRIBE)) == 401
    assert _status(lambda: authority.check("garbage", "abc", Role.SUBSCRIBE)) == 401
    expired = authority.issue("abc", Role.SUBSCRIBE, ttl=-1)
    assert _status(lambda: authority.check(expired, "abc", Role.SUBSCRIBE)) == 401


def test_a_refused_role_is_named_with_its_article() -> None:
    authority = TokenAuthority(("k1",))
    for role, article in ((Role.OBSERVE, "an"), (Role.PUBLISH, "a")):
        with pytest.raises(ApiError) as refused:
            authority.check(authority.issue("*", role), "abc", Role.ADMIN)
        assert refused.value.status == 403
        assert refused.value.message == f"{article} {role.value} token cannot admin"


def test_other_session_and_wrong_role_are_403() -> None:
    authority = TokenAuthority(("k1",))
    subscriber = authority.issue("abc", Role.SUBSCRIBE)
    assert _status(lambda: authority.check(subscriber, "other", Role.SUBSCRIBE)) == 403
    assert _status(lambda: authority.check(subscriber, "abc", Role.PUBLISH)) == 403
    assert _status(lambda: authority.check(subscriber, "*", Role.ADMIN)) == 403


def test_a_wildcard_publisher_token_publishes_to_any_session_but_is_not_admin() -> None:
    authority = TokenAuthority(("k1",))
    publisher = authority.issue("*", Role.PUBLISH)
    assert authority.check(publisher, "any-session", Role.PUBLISH) is not None
    assert _status(lambda: authority.check(publisher, "*", Role.ADMIN)) == 403


def test_key_rotation_first_key_signs_every_key_verifies() -> None:
    old = TokenAuthority(("old",))
    rotated = TokenAuthority(("new", "old"))
    new_only = TokenAuthority(("new",))
    assert rotated.check(old.issue("abc"), "abc", Role.SUBSCRIBE) is not None
    assert new_only.check(rotated.issue("abc"), "abc", Role.SUBSCRIBE) is not None
    assert _status(lambda: old.check(rotated.issue("abc"), "abc", Role.SUBSCRIBE)) == 401


def test_insecure_mode_checks_nothing() -> None:
    assert TokenAuthority((), insecure=True).check(None, "abc", Role.ADMIN) is None


def test_a_token_is_decoded_once_per_process_and_its_expiry_checked_at_every_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    authority = TokenAuthority(("a-secret-of-enough-length-for-tests",))
    token = authority.issue("s1", Role.SUBSCRIBE, ttl=60)
    for _ in range(3):
        assert authority.check(token, "s1", Role.SUBSCRIBE) is not None
    assert authority._decode.cache_info().misses == 1 and authority._decode.cache_info().hits == 2
    later = tokens.time.time() + 120
    monkeypatch.setattr(tokens, "time", SimpleNamespace(time=lambda: later))  # this module's clock only
    with pytest.raises(ApiError, match="expired"):
        authority.check(token, "s1", Role.SUBSCRIBE)


def test_a_refused_token_is_never_kept() -> None:
    authority = TokenAuthority(("a-secret-of-enough-length-for-tests",))
    forged = authority.issue("s1")[:-2] + "xx"
    for _ in range(2):
        with pytest.raises(ApiError):
            authority.check(forged, "s1", Role.SUBSCRIBE)
    assert authority._decode.cache_info().currsize == 0
