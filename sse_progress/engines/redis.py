"""The Redis engine: a stream per session (history), a snapshot key (polling), Pub/Sub (live push).

Every publish is one Lua script, so a reader never sees the stream, the snapshot and the announcement
disagree. Keys carry the session id in a hash tag (``rpa:events:{abc}``) so one session lives in one
Redis Cluster slot.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import OutOfMemoryError, RedisError

from ..events import EventDraft, EventId, format_event_id, parse_event_id, with_id
from ..foreign import FOREIGN
from ..frames import ForeignEnvelope, parse_envelope
from .base import (
    Engine,
    EngineFull,
    EngineMisconfigured,
    EngineUnavailable,
    EngineWrongKind,
    Feed,
    MessageHandler,
    Page,
    Published,
    ResyncHandler,
    SessionTerminal,
    SessionView,
    outlived,
)
from .redis_errors import unavailable_because
from .redis_feed import RedisFeed
from .redis_index import STEP_DURATION_LUA, IndexKeys, RedisIndex, index_update_lua

log = logging.getLogger("sse_progress.engine")

_SESSION_PUBLISH_HEAD = """
local stream, snapshot, meta = KEYS[1], KEYS[2], KEYS[3]
local channel, draft, terminal = ARGV[1], ARGV[2], ARGV[3]
local etapa, total, now_ms = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local maxlen, ttl, publisher, sequence = ARGV[7], tonumber(ARGV[8]), ARGV[9], tonumber(ARGV[10])
local sid, status = ARGV[11], ARGV[12]

-- The session's meta hash is read once and written once: each call from a script has a cost.
local pub_field = 'pub:' .. publisher
local state = redis.call('HMGET', meta, 'terminal', 'started', 'step', 'step_at', 'durations', pub_field)
if state[1] then
  return {'terminal', redis.call('GET', snapshot) or ''}
end
local changes = {}
if publisher ~= '' then
  if sequence <= tonumber(state[6] or '-1') then
    return {'duplicate', redis.call('GET', snapshot) or ''}
  end
  changes[#changes + 1], changes[#changes + 2] = pub_field, sequence
end

local new_session = not state[2]
local started = now_ms
if new_session then
  changes[#changes + 1], changes[#changes + 2] = 'started', now_ms
else
  started = tonumber(state[2])
end
local eta = 'null'
if terminal == '1' then
  eta = '0.0'
elseif etapa >= 1 and now_ms > started then
  local elapsed = (now_ms - started) / 1000
  eta = string.format('%.1f', elapsed / etapa * math.max(0, total - etapa))
end

local stored = string.sub(draft, 1, -2) .. ',"eta_seconds":' .. eta .. '}'
local id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'e', stored)
local envelope = '{"id":"' .. id .. '",' .. string.sub(stored, 2)
redis.call('SET', snapshot, envelope, 'EX', ttl)
redis.call('EXPIRE', stream, ttl)
if terminal == '1' then
  changes[#changes + 1], changes[#changes + 2] = 'terminal', id
end
"""
_SESSION_PUBLISH_META = """
if #changes > 0 then redis.call('HSET', meta, unpack(changes)) end
redis.call('EXPIRE', meta, ttl)
"""
_SESSION_PUBLISH_TAIL = """
redis.call('PUBLISH', channel, envelope)
return {'ok', envelope, at, ended_step, ended_ms, new_session and 1 or 0}
"""
_SESSION_PUBLISH = _SESSION_PUBLISH_HEAD + STEP_DURATION_LUA + _SESSION_PUBLISH_META
# One Redis: the session's keys (KEYS[1..3]) and the index's (KEYS[4..6]) in one script, one round trip.
PUBLISH_SCRIPT = _SESSION_PUBLISH + index_update_lua(4) + _SESSION_PUBLISH_TAIL
# A cluster: the session's keys only; the index is updated by INDEX_SCRIPT in its own slot (see redis_index).
SESSION_PUBLISH_SCRIPT = _SESSION_PUBLISH + _SESSION_PUBLISH_TAIL

# Returns {snapshot, first retained id, entries after ARGV[1]}; the first retained id is 'lost' when the stream
# is gone but the snapshot is not. A resume id before the first retained id needs history that is gone: trimmed,
# expired, or lost with Redis's data (a fresh stream's ids come after every id the lost one gave, clock allowing).
READ_SCRIPT = """
local snapshot = redis.call('GET', KEYS[2])
if ARGV[1] == '' or not snapshot then
  return {snapshot or '', '', {}}
end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
if not first then
  return {snapshot, 'lost', {}}
end
local start = '(' .. ARGV[1]
if ARGV[1] == '-' then start = '-' end
if not ARGV[2] then
  return {snapshot, first[1], redis.call('XRANGE', KEYS[1], start, '+')}
end
-- A page: at most ARGV[3] entries and ARGV[2] bytes of envelopes (at least one entry), and whether more follow.
-- Read a few entries at a time: one XRANGE of ARGV[3] large entries would copy far more than the page holds.
local max_events = tonumber(ARGV[3])
local budget = tonumber(ARGV[2])
local page = {}
while true do
  local entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 16)
  for _, entry in ipairs(entries) do
    local size = #entry[2][2]
    if #page > 0 and (#page >= max_events or size > budget) then
      return {snapshot, first[1], page, 1}
    end
    page[#page + 1] = entry
    budget = budget - size
  end
  if #entries < 16 then
    return {snapshot, first[1], page, 0}
  end
  start = '(' .. entries[#entries][1]
end
"""


class RedisKeys:
    """Key and channel names; the braces are literal Redis Cluster hash tags."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.index = IndexKeys(prefix)
        self._channel_prefix = f"{prefix}:session:{{".encode()

    def stream(self, session_id: str) -> str:
        return f"{self.prefix}:events:{{{session_id}}}"

    def snapshot(self, session_id: str) -> str:
        return f"{self.prefix}:progress:{{{session_id}}}"

    def meta(self, session_id: str) -> str:
        return f"{self.prefix}:meta:{{{session_id}}}"

    def channel(self, session_id: str) -> bytes:
        return self._channel_prefix + session_id.encode() + b"}"

    def session_of(self, channel: bytes) -> str | None:
        if channel.startswith(self._channel_prefix) and channel.endswith(b"}"):
            return channel[len(self._channel_prefix) : -1].decode()
        return None

    @property
    def control_channel(self) -> bytes:
        return f"{self.prefix}:hub".encode()


def connection_options(url: str, verify_tls: bool) -> dict[str, Any]:
    options: dict[str, Any] = {"socket_keepalive": True, "socket_connect_timeout": 5, "health_check_interval": 0}
    if url.startswith(("rediss://", "rediss+cluster://")) and not verify_tls:
        # Heroku Redis presents a self-signed certificate.
        options["ssl_cert_reqs"] = ssl.CERT_NONE
        options["ssl_check_hostname"] = False
    return options


class RedisEngine(Engine):
    name = "redis"

    def __init__(
        self,
        url: str,
        prefix: str = "rpa",
        history: int = 1000,
        ttl: int = 86400,
        pool_size: int = 2,
        verify_tls: bool = True,
    ) -> None:
        self.url = url
        self.keys = RedisKeys(prefix)
        self.history = history
        self.ttl = ttl
        options = connection_options(url, verify_tls)
        # A small blocking pool queues a burst of readers instead of failing past max_connections. A command
        # that meets a dead connection (Redis restarted) is sent once more, on a new one: no request fails.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=pool_size, timeout=10, retry=Retry(NoBackoff(), 1), **options
        )
        self.client = aioredis.Redis(connection_pool=pool)
        self._options = options
        self._verified = False  # verify() found a single Redis, not a cluster node
        self._wrong_kind_logged = False  # a cluster node found after startup is logged once
        self._full = False  # the last publish was refused for want of memory (logged once until one succeeds)
        self._publish = self.client.register_script(PUBLISH_SCRIPT)
        self._read = self.client.register_script(READ_SCRIPT)
        self.index = RedisIndex(self.client, self.keys.index, self.keys.snapshot, self.keys.meta)

    async def publish(self, draft: EventDraft) -> Published:
        keys, args = publish_arguments(self.keys, draft, self.history, self.ttl)
        try:
            outcome = await self._publish(keys=keys, args=args)
        except OutOfMemoryError as error:
            if not self._full:
                self._full = True
                log.error("redis refuses every event: %s; free memory or raise maxmemory", FULL)
            raise EngineFull(FULL) from error
        except RedisError as error:
            raise await self._unavailable(error) from error
        if self._full:
            self._full = False
            log.warning("redis stores events again")
        return published_outcome(draft.session_id, outcome)

    async def read(self, session_id: str, after: EventId | None, page: Page | None = None) -> SessionView:
        if after is None:
            argument = ""
        elif after == (0, 0):
            argument = "-"
        else:
            argument = format_event_id(after)
        try:
            limits = [] if page is None else [page.max_bytes, page.max_events]
            snapshot, marker, entries, *more = await self._read(
                keys=[self.keys.stream(session_id), self.keys.snapshot(session_id)], args=[argument, *limits]
            )
        except RedisError as error:
            raise await self._unavailable(error) from error
        if not snapshot or not _written_by_us(session_id, snapshot):
            return SessionView(snapshot=None, expired=outlived(after, self.ttl))
        if after is None:
            return SessionView(snapshot)
        events = [with_id(fields[1], entry_id.decode()) for entry_id, fields in entries]
        return SessionView(snapshot, events, gap=_history_missing_after(marker, after), more=bool(more and more[0]))

    def open_feed(self, on_message: MessageHandler, on_resync: ResyncHandler) -> Feed:
        return RedisFeed(self.url, self._options, self.keys, on_message, on_resync)

    async def ping(self) -> None:
        """Redis answers, and would store an event (it answers PING even when it refuses every write)."""
        try:
            if not self._verified:
                await self.verify()
            memory = await self.client.info("memory")
        except RedisError as error:
            raise unavailable_because(error) from error
        except EngineMisconfigured as error:  # Redis was not reachable at startup to be verified then
            raise self._wrong_kind(error) from error
        raise_if_full(memory)

    async def _unavailable(self, error: RedisError) -> EngineUnavailable:
        """What a failed command means: the store unreachable, or — unchecked since startup — the wrong kind."""
        if not self._verified:
            try:
                await self.verify()
            except EngineMisconfigured as wrong:
                return self._wrong_kind(wrong)
            except EngineUnavailable:
                pass
        return unavailable_because(error)

    def _wrong_kind(self, error: EngineMisconfigured) -> EngineWrongKind:
        if not self._wrong_kind_logged:
            self._wrong_kind_logged = True
            log.error("the event store found after startup is misconfigured: %s", error)
        return EngineWrongKind(str(error))

    async def verify(self) -> None:
        """A cluster node answers single-node commands for its own slots only: every other session would fail."""
        try:
            info = await self.client.info("cluster")
        except RedisError as error:
            raise unavailable_because(error) from error
        if info.get("cluster_enabled") == 1:
            where = self.client.connection_pool.connection_kwargs
            raise EngineMisconfigured(
                f"the Redis at {where.get('host')}:{where.get('port')} is a Redis Cluster node, which serves the "
                "sessions of its own slots only: use a redis+cluster:// (or rediss+cluster://) URL"
            )
        self._verified = True

    async def stats(self) -> dict[str, Any]:
        try:
            info = await self.client.info()
        except RedisError as error:
            raise unavailable_because(error) from error
        return {
            "connected_clients": info.get("connected_clients"),
            "used_memory": info.get("used_memory"),
            "keyspace_hits": info.get("keyspace_hits"),
            "keyspace_misses": info.get("keyspace_misses"),
        }

    async def close(self) -> None:
        await self.client.aclose()
        await self.client.connection_pool.disconnect()


def publish_arguments(
    keys: RedisKeys, draft: EventDraft, history: int, ttl: int
) -> tuple[list[str], list[str | bytes | int]]:
    """KEYS and ARGV of ``PUBLISH_SCRIPT``; shared by the engine and the synchronous tracker."""
    sid = draft.session_id
    return [keys.stream(sid), keys.snapshot(sid), keys.meta(sid), *keys.index.for_publish(draft.status)], [
        keys.channel(sid),
        draft.encode(),
        "1" if draft.terminal else "0",
        draft.etapa_atual,
        draft.total_etapas,
        draft.timestamp_ms,
        history,
        ttl,
        draft.publisher,
        draft.sequence,
        sid,
        draft.status,
    ]


def published_outcome(session_id: str, outcome: list[bytes]) -> Published:
    status, envelope = outcome[0], outcome[1]
    if status == b"terminal":
        raise SessionTerminal(session_id, envelope or None)
    return Published(envelope, duplicate=status == b"duplicate")


FULL = "event store is full: Redis used all its maxmemory and its policy is noeviction"


def raise_if_full(memory: Mapping[str, Any]) -> None:
    """Raise ``EngineFull`` if a Redis node with this ``INFO memory`` refuses writes (it does past maxmemory
    under noeviction; any other policy evicts keys instead)."""
    limit = int(memory.get("maxmemory", 0))
    if limit and memory.get("maxmemory_policy") == "noeviction" and int(memory.get("used_memory", 0)) > limit:
        raise EngineFull(FULL)


def _written_by_us(session_id: str, snapshot: bytes) -> bool:
    """A snapshot key holding anything else (another system's JSON) is as good as absent: no usable history."""
    try:
        parse_envelope(snapshot, session_id)
    except ForeignEnvelope as error:
        FOREIGN.skipped("snapshot", session_id, str(error))
        return False
    return True


def _history_missing_after(first_retained: bytes, after: EventId) -> bool:
    """Whether the retained history starts after ``after``, so that events after it may be missing."""
    first = parse_event_id(first_retained.decode())
    return first is None or first > after  # None: 'lost', the snapshot outlived its stream
