"""Settings, read once from the environment (every name is listed in the README's configuration table).

``StoreSettings`` is the part a job's tracker reads: where the store is and how it keeps events. A tracker never
parses the server's own settings, so a server setting a job cannot use never breaks the job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices``; the first is the default."""
    raw = env.get(name) or choices[0]
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {raw!r}")
    return raw


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


@dataclass(frozen=True)
class StoreSettings:
    redis_url: str | None = None
    prefix: str = "rpa"
    ttl: int = 86400
    history: int = 1000
    redis_verify_tls: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StoreSettings:
        env = os.environ if env is None else env
        return cls(
            redis_url=env.get("REDIS_URL") or None,
            prefix=env.get("SSE_PROGRESS_PREFIX") or "rpa",
            ttl=_int(env, "SSE_PROGRESS_TTL", 86400, minimum=1),
            history=_int(env, "SSE_PROGRESS_HISTORY", 1000, minimum=1),
            redis_verify_tls=_bool(env, "SSE_PROGRESS_REDIS_TLS_VERIFY", True),
        )

    def with_overrides(self, **changes: object) -> StoreSettings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]


@dataclass(frozen=True)
class Settings:
    redis_url: str | None = None
    secrets: tuple[str, ...] = ()
    insecure: bool = False
    prefix: str = "rpa"
    ttl: int = 86400
    history: int = 1000
    heartbeat: float = 15.0
    retry_ms: int = 3000
    poll_ms: int = 2000
    cors_origins: tuple[str, ...] = ()
    redis_pool_size: int = 2
    redis_verify_tls: bool = True
    buffer_events: int = 256
    buffer_bytes: int = 1 << 20
    socket_send_buffer: int = 65536
    max_connections: int = 20000
    publish_rate: float = 50.0
    log_format: str = "text"
    responder: str = "lean"
    header_timeout: float = 10.0
    legacy_routes: bool = False
    stall_after: float = 60.0
    stall_factor: float = 4.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        store = StoreSettings.from_env(env)
        return cls(
            redis_url=store.redis_url,
            secrets=_list(env, "SSE_PROGRESS_SECRET"),
            insecure=_bool(env, "SSE_PROGRESS_INSECURE", False),
            prefix=store.prefix,
            ttl=store.ttl,
            history=store.history,
            heartbeat=_float(env, "SSE_PROGRESS_HEARTBEAT", 15.0, minimum=0.05),
            retry_ms=_int(env, "SSE_PROGRESS_RETRY_MS", 3000, minimum=0),
            poll_ms=_int(env, "SSE_PROGRESS_POLL_MS", 2000, minimum=100),
            cors_origins=_list(env, "SSE_PROGRESS_CORS_ORIGINS"),
            redis_pool_size=_int(env, "SSE_PROGRESS_REDIS_POOL", 2, minimum=1),
            redis_verify_tls=store.redis_verify_tls,
            buffer_events=_int(env, "SSE_PROGRESS_BUFFER_EVENTS", 256, minimum=1),
            buffer_bytes=_int(env, "SSE_PROGRESS_BUFFER_BYTES", 1 << 20, minimum=1024),
            socket_send_buffer=_int(env, "SSE_PROGRESS_SOCKET_SEND_BUFFER", 65536, minimum=0),
            max_connections=_int(env, "SSE_PROGRESS_MAX_CONNECTIONS", 20000, minimum=1),
            publish_rate=_float(env, "SSE_PROGRESS_PUBLISH_RATE", 50.0, minimum=0.0),
            log_format=_choice(env, "SSE_PROGRESS_LOG_FORMAT", ("text", "json")),
            responder=_choice(env, "SSE_PROGRESS_RESPONDER", ("lean", "sse-starlette")),
            header_timeout=_float(env, "SSE_PROGRESS_HEADER_TIMEOUT", 10.0, minimum=0.1),
            legacy_routes=_bool(env, "SSE_PROGRESS_LEGACY_ROUTES", False),
            stall_after=_float(env, "SSE_PROGRESS_STALL_AFTER", 60.0, minimum=0.1),
            stall_factor=_float(env, "SSE_PROGRESS_STALL_FACTOR", 4.0, minimum=1.0),
        )

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]
