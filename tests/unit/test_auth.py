"""Tokens: forged, tampered, expired, other-session and wrong-role tokens; key rotation."""

from __future__ import annotations

import base64

import pytest

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
