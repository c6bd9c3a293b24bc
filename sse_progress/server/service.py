"""What every route shares: settings, the engine, the hub and the token authority."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

from sse_progress.config import Settings
from sse_progress.engines import Engine
from sse_progress.protocol.errors import ApiError, AtConnectionLimit
from sse_progress.protocol.events import is_valid_session_id
from sse_progress.protocol.tokens import COOKIE_NAME, Claims, Role, TokenAuthority
from sse_progress.server.auth import token_from
from sse_progress.server.hub import Hub
from sse_progress.server.ratelimit import RateLimiter


@dataclass
class Service:
    settings: Settings
    engine: Engine
    hub: Hub
    tokens: TokenAuthority
    publish_limiter: RateLimiter

    @staticmethod
    def of(connection: HTTPConnection) -> Service:
        service: Service = connection.app.state.service
        return service

    def session_id(self, connection: HTTPConnection) -> str:
        session_id: str = connection.path_params["session_id"]
        if not is_valid_session_id(session_id):
            raise ApiError(400, "invalid session id: use 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'")
        return session_id

    def admit_connection(self) -> None:
        """Refuse a new stream past SSE_PROGRESS_MAX_CONNECTIONS, before it costs anything."""
        if self.hub.connections() >= self.settings.max_connections:
            raise AtConnectionLimit

    def limit_publishing(self, connection: HTTPConnection, session_id: str, claims: Claims | None) -> None:
        # Per token and session: a wildcard publisher token serving many jobs gets a budget per job. The token is
        # known by its verified claims, never by its spelling; without token checks, by the client's address.
        who = claims.identity if claims else (connection.client.host if connection.client else "unknown")
        wait = self.publish_limiter.retry_after(f"{who}\n{session_id}")
        if wait > 0:
            raise ApiError(
                429,
                f"too many events: at most {self.settings.publish_rate:g} per second per token and session",
                {"Retry-After": str(max(1, round(wait)))},
            )

    def authorize(self, connection: HTTPConnection, session_id: str, role: Role) -> Claims | None:
        token = token_from(connection)
        if token is not None and self._cookie_sent_by_another_site(connection, token):
            raise ApiError(
                403,
                f"a WebSocket from a page of {connection.headers['origin']} cannot use this site's cookie: add that "
                "origin to SSE_PROGRESS_CORS_ORIGINS, or send the token as ?token=",
            )
        return self.tokens.check(token, session_id, role)

    def _cookie_sent_by_another_site(self, connection: HTTPConnection, token: str) -> bool:
        """A browser attaches cookies to a WebSocket whatever page opens it, and WebSockets have no CORS: without
        this check any site its user visits could read the streams its cookie opens."""
        if connection.scope["type"] != "websocket" or connection.cookies.get(COOKIE_NAME) != token:
            return False
        if connection.query_params.get("token") or connection.headers.get("authorization"):
            return False  # the cookie was not what authenticated it
        origin = connection.headers.get("origin")
        if origin is None or origin in self.settings.cors_origins:
            return False  # not a browser, or a page allowed to read streams with credentials
        return urlsplit(origin).netloc != connection.headers.get("host")
