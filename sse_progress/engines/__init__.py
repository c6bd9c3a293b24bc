"""Engines, picked by URL scheme: ``redis://``/``rediss://`` for Redis, ``memory://`` (or nothing) embedded."""

from __future__ import annotations

from ..config import Settings
from .base import Engine, EngineUnavailable, Feed, Published, SessionTerminal, SessionView
from .memory import MemoryEngine

__all__ = [
    "Engine",
    "EngineUnavailable",
    "Feed",
    "MemoryEngine",
    "Published",
    "SessionTerminal",
    "SessionView",
    "create_engine",
]


def create_engine(settings: Settings) -> Engine:
    url = settings.redis_url
    if not url or url.startswith("memory://"):
        return MemoryEngine(history=settings.history, ttl=settings.ttl)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .redis import RedisEngine

        return RedisEngine(
            url,
            prefix=settings.prefix,
            history=settings.history,
            ttl=settings.ttl,
            pool_size=settings.redis_pool_size,
            verify_tls=settings.redis_verify_tls,
        )
    raise ValueError(f"unsupported engine URL {url!r}: use redis://, rediss:// or memory://")
