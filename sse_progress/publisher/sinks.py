"""Where a tracker's events go: Redis, an HTTP service, an in-process engine, or a JSON file.

Synchronous sinks serve ``ProgressTracker`` (Playwright jobs are often synchronous); asynchronous ones serve
``AsyncProgressTracker``. Each returns the stored envelope (with its id). A synchronous sink and its asynchronous
twin differ only in their client: the Redis script's arguments and answer (``_RedisPublication``), the HTTP body
and the meaning of each status code (``_http_envelope``) are written once.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

import httpx
import redis
from redis.exceptions import RedisError

from sse_progress.engines import Engine, MemoryEngine, SessionTerminal
from sse_progress.engines.redis.scripts import RedisKeys, connection_options, publish_arguments, published_outcome
from sse_progress.protocol.events import EventDraft
from sse_progress.protocol.legacy import LEGACY_TTL_SECONDS, LegacyKeys, legacy_json
from sse_progress.publisher.redis_clients import async_client_for, publish_script_for, sync_client_for

log = logging.getLogger("sse_progress.tracker")

# Short on purpose: an event that times out waits in the tracker's outbox, so a dead or hung store costs the
# job at most this per attempt (and attempts are spaced out by the tracker's retry schedule).
HTTP_TIMEOUT = 5.0
REDIS_TIMEOUT = 2.0


class Sink(Protocol):
    def send(self, draft: EventDraft) -> bytes: ...

    def close(self) -> None: ...


class AsyncSink(Protocol):
    async def send(self, draft: EventDraft) -> bytes: ...

    async def aclose(self) -> None: ...


def _redis_options(url: str, verify_tls: bool) -> dict[str, Any]:
    options = connection_options(url, verify_tls)
    options["socket_connect_timeout"] = REDIS_TIMEOUT
    options["socket_timeout"] = REDIS_TIMEOUT
    return options


class _RedisPublication:
    """What both Redis sinks do around their one script call: its keys and arguments, and its answer read."""

    def __init__(self, url: str, prefix: str, history: int, ttl: int, verify_tls: bool) -> None:
        self.client_options = _redis_options(url, verify_tls)
        self.script = publish_script_for(url)
        self._keys = RedisKeys(prefix)
        self._history = history
        self._ttl = ttl

    def arguments(self, draft: EventDraft) -> tuple[list[str], list[str | bytes | int]]:
        return publish_arguments(self._keys, draft, self._history, self._ttl)

    @staticmethod
    def envelope(draft: EventDraft, outcome: list[bytes]) -> bytes:
        """The stored envelope, or the exception the script's answer means (the session ended...)."""
        return published_outcome(draft.session_id, outcome).envelope


class RedisSink:
    """Runs the publish script (``engines/redis/scripts.py``, the server's own) on one Redis or a cluster."""

    def __init__(
        self, url: str, prefix: str, history: int, ttl: int, verify_tls: bool = True, legacy_keys: bool = False
    ) -> None:
        self._publication = _RedisPublication(url, prefix, history, ttl, verify_tls)
        self._client = sync_client_for(url, **self._publication.client_options)
        self._script = self._client.register_script(self._publication.script)
        self._legacy = LegacyKeys(prefix) if legacy_keys else None
        if legacy_keys and not isinstance(self._client, redis.Redis):
            raise ValueError("legacy_keys=True needs one Redis (redis://, rediss://, unix://), not a cluster")

    def send(self, draft: EventDraft) -> bytes:
        keys, args = self._publication.arguments(draft)
        envelope = self._publication.envelope(draft, self._script(keys=keys, args=args))
        if self._legacy is not None:
            self._write_legacy(self._legacy, draft.session_id, envelope)
        return envelope

    def _write_legacy(self, legacy: LegacyKeys, session_id: str, envelope: bytes) -> None:
        """The older system's key and channel, for its readers that have not moved yet (after the event is
        stored: a failure here costs old readers one step, which the next event's write makes up)."""
        body = legacy_json(envelope)
        assert isinstance(self._client, redis.Redis)
        try:
            pipeline = self._client.pipeline(transaction=False)
            pipeline.set(legacy.snapshot(session_id), body, ex=LEGACY_TTL_SECONDS)
            pipeline.publish(legacy.channel(session_id), body)
            pipeline.execute()
        except RedisError as error:
            log.warning("session %s: stored, but the legacy key and channel were not written: %s", session_id, error)

    def close(self) -> None:
        self._client.close()


class AsyncRedisSink:
    """``RedisSink`` for ``AsyncProgressTracker``: the same script, with the same short timeouts."""

    def __init__(self, url: str, prefix: str, history: int, ttl: int, verify_tls: bool = True) -> None:
        self._publication = _RedisPublication(url, prefix, history, ttl, verify_tls)
        self._client = async_client_for(url, **self._publication.client_options)
        self._script = self._client.register_script(self._publication.script)

    async def send(self, draft: EventDraft) -> bytes:
        keys, args = self._publication.arguments(draft)
        return self._publication.envelope(draft, await self._script(keys=keys, args=args))

    async def aclose(self) -> None:
        await self._client.aclose()


class MemorySink:
    """Publishes into an in-process engine (tests, the embedded demo, or a JSON-only tracker's id source)."""

    def __init__(self, engine: MemoryEngine) -> None:
        self.engine = engine

    def send(self, draft: EventDraft) -> bytes:
        return self.engine.publish_now(draft).envelope

    def close(self) -> None:
        """Nothing to release: the engine belongs to whoever passed it."""


class HttpSink:
    def __init__(self, base_url: str, token: str) -> None:
        self._client = httpx.Client(base_url=base_url, timeout=HTTP_TIMEOUT, headers=_auth(token))

    def send(self, draft: EventDraft) -> bytes:
        response = self._client.post(_events_path(draft), content=_http_body(draft))
        return _http_envelope(draft, response)

    def close(self) -> None:
        self._client.close()


class EngineSink:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def send(self, draft: EventDraft) -> bytes:
        return (await self.engine.publish(draft)).envelope

    async def aclose(self) -> None:
        """Nothing to release: the engine belongs to whoever passed it."""


class AsyncHttpSink:
    def __init__(self, base_url: str, token: str) -> None:
        self._client = httpx.AsyncClient(base_url=base_url, timeout=HTTP_TIMEOUT, headers=_auth(token))

    async def send(self, draft: EventDraft) -> bytes:
        response = await self._client.post(_events_path(draft), content=_http_body(draft))
        return _http_envelope(draft, response)

    async def aclose(self) -> None:
        await self._client.aclose()


class HttpPublishError(Exception):
    """The service refused an event for a reason a retry will not fix (an invalid event)."""


class StoreFull(OSError):
    """The service answered 507: its store refuses new events until memory is freed (transient: retried)."""


class PublishNotAuthorized(HttpPublishError):
    """The service refused the token (401 or 403): the events are fine and wait for a token that is."""


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def _events_path(draft: EventDraft) -> str:
    return f"/sessions/{draft.session_id}/events"


def _http_body(draft: EventDraft) -> bytes:
    body = draft.reported()
    if draft.publisher:  # the service drops a sequence number it already stored: a retry is never stored twice
        body["publisher"] = {"id": draft.publisher, "sequence": draft.sequence}
    return json.dumps(body, ensure_ascii=False).encode()


def _http_envelope(draft: EventDraft, response: httpx.Response) -> bytes:
    if response.status_code == 409:
        raise SessionTerminal(draft.session_id, None)
    if response.status_code == 507:
        raise StoreFull(f"progress service answered 507: {response.text}")
    if response.status_code >= 500 or response.status_code == 429:
        raise OSError(f"progress service answered {response.status_code}")  # transient: fall back, retry later
    if response.status_code in (401, 403):
        raise PublishNotAuthorized(f"progress service refused the token ({response.status_code}): {response.text}")
    if response.status_code != 201:
        raise HttpPublishError(f"progress service refused the event ({response.status_code}): {response.text}")
    return json.dumps(response.json()["data"], ensure_ascii=False).encode()


def default_json_dir() -> Path:
    return Path(os.environ.get("SSE_PROGRESS_JSON_DIR") or tempfile.gettempdir())


def write_json_snapshot(directory: Path, session_id: str, envelope: bytes) -> Path:
    """Write ``progress_<sid>.json`` atomically (temp file + rename): a poller never reads half a file."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"progress_{session_id}.json"
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".progress_{session_id}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(envelope)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target
