"""Clients for publishers that write with the publish script directly (trackers, ``sse-progress publish``).

``RedisSink`` and ``AsyncRedisSink`` take a client and register the publish script on it. For a cluster URL
they get the adapters below: the cluster client with the sharded script, made on first use (redis-py's
synchronous cluster client connects in its constructor, and a tracker must start while its store is down), and
with the cluster client's own errors raised as ``redis.ConnectionError``, which a tracker treats like any
unreachable store (it falls back to its JSON file and retries).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any, NamedTuple

import redis
import redis.asyncio as aioredis
import redis.cluster
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import RedisClusterException

from sse_progress.engines.redis.cluster_url import is_cluster_url, node_url
from sse_progress.engines.redis.index import INDEX_KEY_COUNT, INDEX_SCRIPT, index_arguments
from sse_progress.engines.redis.scripts import CLUSTER_PUBLISH_SCRIPT, PUBLISH_SCRIPT
from sse_progress.publisher.steps import drive, drive_async

ScriptArguments = Sequence[Any]
PUBLISH, INDEX = 0, 1  # the scripts a cluster publisher registers, in this order


class ScriptCall(NamedTuple):
    script: int  # PUBLISH or INDEX
    keys: ScriptArguments
    args: ScriptArguments


def _publish_calls(script: str, keys: ScriptArguments, args: ScriptArguments) -> Generator[ScriptCall, Any, Any]:
    """The script calls of one publish; each is answered with the script's outcome."""
    if script != CLUSTER_PUBLISH_SCRIPT:
        return (yield ScriptCall(PUBLISH, keys, args))
    # The session's slot first, then the index's (see redis_index).
    outcome = yield ScriptCall(PUBLISH, keys[:-INDEX_KEY_COUNT], args)
    index_args = index_arguments(list(args), outcome)
    if index_args is not None:
        yield ScriptCall(INDEX, keys[-INDEX_KEY_COUNT:], index_args)
    return outcome


def publish_script_for(url: str) -> str:
    return CLUSTER_PUBLISH_SCRIPT if is_cluster_url(url) else PUBLISH_SCRIPT


def sync_client_for(url: str, **options: Any) -> redis.Redis | SyncClusterPublisher:
    return SyncClusterPublisher(url, options) if is_cluster_url(url) else redis.Redis.from_url(url, **options)


def async_client_for(url: str, **options: Any) -> aioredis.Redis | AsyncClusterPublisher:
    return AsyncClusterPublisher(url, options) if is_cluster_url(url) else aioredis.Redis.from_url(url, **options)


class SyncClusterPublisher:
    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self._url = node_url(url)
        self._options = options
        self._client: redis.cluster.RedisCluster | None = None

    def register_script(self, script: str) -> Callable[..., Any]:
        registered: list[Any] = []

        def run(keys: ScriptArguments, args: ScriptArguments) -> Any:
            try:
                if not registered:
                    registered.extend(self._connected().register_script(code) for code in (script, INDEX_SCRIPT))
                return drive(
                    _publish_calls(script, keys, args),
                    lambda call: registered[call.script](keys=call.keys, args=call.args),
                )
            except RedisClusterException as error:
                raise redis.ConnectionError(str(error)) from error

        return run

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def _connected(self) -> redis.cluster.RedisCluster:
        if self._client is None:
            self._client = redis.cluster.RedisCluster.from_url(self._url, **self._options)
        return self._client


class AsyncClusterPublisher:
    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self._client = AsyncRedisCluster.from_url(node_url(url), **options)

    def register_script(self, script: str) -> Callable[..., Awaitable[Any]]:
        registered = [self._client.register_script(code) for code in (script, INDEX_SCRIPT)]

        async def run(keys: ScriptArguments, args: ScriptArguments) -> Any:
            try:
                return await drive_async(
                    _publish_calls(script, keys, args),
                    lambda call: registered[call.script](keys=call.keys, args=call.args),
                )
            except RedisClusterException as error:
                raise redis.ConnectionError(str(error)) from error

        return run

    async def aclose(self) -> None:
        await self._client.aclose()
