"""What the Redis engine and a publisher share: the Lua scripts, the key layout and the scripts' arguments.

Every publish is one Lua script, so a reader never sees the stream, the snapshot and the announcement
disagree. Keys carry the session id in a hash tag (``rpa:events:{abc}``) so one session lives in one
Redis Cluster slot. Imports no client: a job's tracker loads this, not the engine.
"""

from __future__ import annotations

import ssl
from typing import Any

from sse_progress.engines.base import Published, SessionTerminal
from sse_progress.engines.redis.index import STEP_DURATION_LUA, IndexKeys, index_update_lua
from sse_progress.protocol.events import EventDraft

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


def _announce(command: str) -> str:
    """The script's end: announce the envelope on the session's channel with ``command`` and return."""
    return f"""
redis.call('{command}', channel, envelope)
return {{'ok', envelope, at, ended_step, ended_ms, new_session and 1 or 0}}
"""


_SESSION_PUBLISH = _SESSION_PUBLISH_HEAD + STEP_DURATION_LUA + _SESSION_PUBLISH_META
# One Redis: the session's keys (KEYS[1..3]) and the index's (KEYS[4..6]) in one script, one round trip.
PUBLISH_SCRIPT = _SESSION_PUBLISH + index_update_lua(4) + _announce("PUBLISH")
# A cluster: the session's keys only (the index is updated by INDEX_SCRIPT in its own slot, see index.py), and
# sharded Pub/Sub: only the shard that owns the session's slot carries its channel.
CLUSTER_PUBLISH_SCRIPT = _SESSION_PUBLISH + _announce("SPUBLISH")

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


def publish_arguments(
    keys: RedisKeys, draft: EventDraft, history: int, ttl: int
) -> tuple[list[str], list[str | bytes | int]]:
    """KEYS and ARGV of ``PUBLISH_SCRIPT``; shared by the engine and the publisher's Redis sinks."""
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
