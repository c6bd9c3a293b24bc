"""Session-scoped, expiring, HMAC-signed tokens (itsdangerous; the first secret signs, every secret verifies).

>>> authority = TokenAuthority(("s3cret",))
>>> token = authority.issue("abc123", Role.SUBSCRIBE, ttl=3600)
>>> authority.check(token, "abc123", Role.SUBSCRIBE).session
'abc123'
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from enum import StrEnum

from itsdangerous import BadData, BadSignature, URLSafeSerializer
from itsdangerous.encoding import base64_decode, base64_encode

from sse_progress.protocol.errors import ApiError

SALT = "sse-progress.token.v1"
COOKIE_NAME = "sse_progress_token"
ANY_SESSION = "*"


class Role(StrEnum):
    SUBSCRIBE = "subscribe"
    PUBLISH = "publish"
    ADMIN = "admin"
    OBSERVE = "observe"


# What each role may do: a publisher can read what it writes; an observer (the ops page, a dashboard) can list
# and follow every session but neither publish nor see /stats; an admin can do everything.
GRANTS: dict[Role, frozenset[Role]] = {
    Role.SUBSCRIBE: frozenset({Role.SUBSCRIBE}),
    Role.PUBLISH: frozenset({Role.SUBSCRIBE, Role.PUBLISH}),
    Role.OBSERVE: frozenset({Role.SUBSCRIBE, Role.OBSERVE}),
    Role.ADMIN: frozenset({Role.SUBSCRIBE, Role.PUBLISH, Role.ADMIN, Role.OBSERVE}),
}


VERIFIED_TOKENS_KEPT = 8192  # about 2 MB: the tokens of the streams one process holds, and their reconnects


@dataclass(frozen=True, slots=True)
class Claims:
    session: str
    role: Role
    expires: int

    @property
    def identity(self) -> str:
        """What one issued token is, whatever its spelling: the key of per-token limits."""
        return f"{self.role.value}:{self.session}:{self.expires}"


class TokenAuthority:
    def __init__(self, secrets: tuple[str, ...], insecure: bool = False) -> None:
        if not secrets and not insecure:
            raise ValueError("a token authority needs at least one secret")
        self.insecure = insecure
        # itsdangerous signs with the *last* key of the list and verifies with all of them.
        self._serializer = URLSafeSerializer(list(reversed(secrets)) or ["insecure"], salt=SALT)
        # A reconnecting client shows the same token again and again: its signature and spelling are checked
        # once per process. Only tokens that passed are kept (an error is never cached), and expiry is checked
        # on every use.
        self._decode = functools.lru_cache(maxsize=VERIFIED_TOKENS_KEPT)(self._decode_uncached)

    def issue(self, session: str, role: Role = Role.SUBSCRIBE, ttl: int = 3600) -> str:
        return self._serializer.dumps({"s": session, "r": role.value, "e": int(time.time()) + ttl})

    def verify(self, token: str) -> Claims:
        """Claims of a well-formed, untampered, unexpired token; else ``ApiError(401)``."""
        claims = self._decode(token)
        if claims.expires < time.time():
            raise ApiError(401, "token expired: ask for a new one")
        return claims

    def _decode_uncached(self, token: str) -> Claims:
        try:
            payload = self._serializer.loads(token)
            claims = Claims(str(payload["s"]), Role(payload["r"]), int(payload["e"]))
        except (BadSignature, KeyError, TypeError, ValueError, OverflowError):
            raise ApiError(401, "invalid token: it is malformed or was not signed with this server's secret") from None
        if not is_canonical(token):
            raise ApiError(
                401,
                "invalid token: not spelled as it was issued (extra padding, characters or altered trailing bits); "
                "send it exactly as issued",
            )
        return claims

    def check(self, token: str | None, session: str, needed: Role) -> Claims | None:
        """The token's claims if it grants ``needed`` on ``session``; else ``ApiError(401 or 403)``."""
        if self.insecure:
            return None
        if not token:
            raise ApiError(401, "missing token: send ?token=, an Authorization: Bearer header or the cookie")
        claims = self.verify(token)
        if needed not in GRANTS[claims.role]:
            raise ApiError(403, f"{_with_article(claims.role.value)} token cannot {needed.value}")
        if claims.role is not Role.ADMIN and claims.session not in (session, ANY_SESSION):
            raise ApiError(403, "this token is for another session")
        if claims.session == ANY_SESSION and claims.role is Role.SUBSCRIBE:
            raise ApiError(403, "a subscribe token must name one session")
        return claims


def _with_article(word: str) -> str:
    """Role names go into sentences: "an observe token", "an admin token", "a publish token"."""
    return ("an " if word[:1] in ("a", "e", "i", "o", "u") else "a ") + word


def is_canonical(token: str) -> bool:
    """Whether each base64 part of a signed token is spelled the one way it is encoded.

    The decoder forgives padding, characters outside the alphabet and the unused low bits of the last
    character, so one signature has many spellings; only the issued one is accepted.
    """
    value, _, signature = token.rpartition(".")
    body = value.removeprefix(".")  # a leading "." marks a compressed payload
    try:
        return all(base64_encode(base64_decode(part)).decode() == part for part in (body, signature))
    except (BadData, UnicodeError):
        return False
