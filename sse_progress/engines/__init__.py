"""Engines, picked by URL scheme.

``redis://``/``rediss://``/``unix://`` for one Redis, ``redis+cluster://``/``rediss+cluster://`` for a Redis
Cluster, ``memory://`` (or nothing) for the embedded engine.
"""

from __future__ import annotations

from sse_progress.config import Settings
from sse_progress.engines.base import (
    Engine,
    EngineFull,
    EngineMisconfigured,
    EngineUnavailable,
    EngineWrongKind,
    Feed,
    Page,
    Published,
    SessionTerminal,
    SessionView,
    answered_within,
)
from sse_progress.engines.memory import MemoryEngine
from sse_progress.engines.redis.cluster_url import is_cluster_url

__all__ = [
    "Engine",
    "EngineFull",
    "EngineMisconfigured",
    "EngineUnavailable",
    "EngineWrongKind",
    "Feed",
    "MemoryEngine",
    "Page",
    "Published",
    "SessionTerminal",
    "SessionView",
    "answered_within",
    "create_engine",
]


def create_engine(settings: Settings) -> Engine:
    url = settings.redis_url
    if not url or url.startswith("memory://"):
        return MemoryEngine(history=settings.history, ttl=settings.ttl)
    from sse_progress.engines.redis.engine import (
        RedisEngine,  # imported on demand: the embedded engine needs no Redis client
    )

    engine_class = RedisEngine
    if is_cluster_url(url):
        from sse_progress.engines.redis.cluster import RedisClusterEngine

        engine_class = RedisClusterEngine
    elif not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(
            f"unsupported engine URL {url!r}: use redis://, rediss://, unix://, redis+cluster://, rediss+cluster:// "
            "or memory://"
        )
    return engine_class(
        url,
        prefix=settings.prefix,
        history=settings.history,
        ttl=settings.ttl,
        pool_size=settings.redis_pool_size,
        verify_tls=settings.redis_verify_tls,
    )
