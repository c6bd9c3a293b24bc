"""What every route shares: settings, the engine, the hub and the token authority."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import HTTPConnection

from sse_progress.config import Settings
from sse_progress.engines import Engine
from sse_progress.protocol.errors import ApiError, AtConnectionLimit
from sse_progress.protocol.events import is_valid_session_id
from sse_progress.protocol.tokens import Claims, Role, TokenAuthority
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
        return self.tokens.check(token_from(connection), session_id, role)
