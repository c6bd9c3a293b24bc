"""The session index in Redis: the publish script's share of it, and the reads behind ``GET /sessions``.

Layout: the step durations stay with the session (fields of its meta hash, in the session's slot). The index
proper is five keys under one hash tag, ``{<prefix>}``, so that they share one Redis Cluster slot: sorted sets
``active`` (pending or running) and one per terminal status, each scored by the session's latest event time
(the ms part of its stream id: Redis's clock, the same for every publisher), and a hash of job totals. A
session is in exactly one set; "every session" is their merge. The keys get the session TTL when a session
starts or ends, and members older than the TTL are pruned.

On one Redis the index is updated by the publish script itself: one round trip, atomic with the event. A
cluster script can only touch one slot, so there the session's script runs first on the session's master and
returns what the index needs; ``INDEX_SCRIPT`` then runs on the master of the index slot (a second command).
Readers treat the session's snapshot as the truth either way: an entry without one is dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from sse_progress.engines.redis.errors import unavailable_because
from sse_progress.protocol.session_index import (
    DURATIONS_CHARS,
    GROUPS,
    MAX_STEP_LABEL,
    STEP_BUCKETS_S,
    Cursor,
    IndexEntry,
    SessionIndex,
    parse_durations,
)

INDEX_KEY_COUNT = 3
TERMINAL_GROUPS = GROUPS[1:]

# Runs in the session's slot after XADD; needs the locals state (the meta fields step, step_at and durations at
# 3, 4, 5), changes (meta fields to write), id, etapa and terminal. Sets at, ended_step, ended_ms: the step that
# just ended (the previous one, or the current one when the job ends on it) and how long it took.
STEP_DURATION_LUA = f"""
local at = tonumber(string.match(id, '^%d+'))
local ended_step, ended_ms = '', ''
if not state[3] then
  changes[#changes + 1], changes[#changes + 2] = 'step', etapa
  changes[#changes + 1], changes[#changes + 2] = 'step_at', at
elseif tonumber(state[3]) ~= etapa or terminal == '1' then
  ended_step, ended_ms = state[3], at - tonumber(state[4])
  local log = (state[5] or '') .. ';' .. ended_step .. ':' .. ended_ms
  if #log > {DURATIONS_CHARS} then log = string.sub(log, string.find(log, ';', #log - {DURATIONS_CHARS}, true)) end
  changes[#changes + 1], changes[#changes + 2] = 'step', etapa
  changes[#changes + 1], changes[#changes + 2] = 'step_at', at
  changes[#changes + 1], changes[#changes + 2] = 'durations', log
end
"""

# An if-chain, not a loop over a table: a table literal would be built again on every publish.
_BUCKET_CHAIN = "\n  ".join(
    f"{'if' if position == 0 else 'elseif'} ended_ms <= {round(bound * 1000)} then bucket = '{bound:g}'"
    for position, bound in enumerate(STEP_BUCKETS_S)
)


def index_update_lua(first_key: int) -> str:
    """The index's share of a publish; the index keys start at ``KEYS[first_key]``. Needs the locals sid,
    status, at, terminal, ended_step, ended_ms, new_session and ttl.

    The keys' TTL is renewed when a session starts or ends (not on every event: that would cost a call per
    publish); members older than the TTL are pruned by the readers (``prune``), so nothing outlives it long.
    """
    k = first_key
    return f"""
local active, finished, totals = KEYS[{k}], KEYS[{k + 1}], KEYS[{k + 2}]
if terminal == '1' then
  redis.call('ZREM', active, sid)
  redis.call('ZADD', finished, at, sid)
  redis.call('EXPIRE', finished, ttl)
  redis.call('HINCRBY', totals, 'finished:' .. status, 1)
else
  redis.call('ZADD', active, at, sid)
end
if new_session or terminal == '1' then
  redis.call('EXPIRE', active, ttl)
  redis.call('EXPIRE', totals, ttl)
end
if ended_ms ~= '' then
  local label = tonumber(ended_step)
  if label < 1 or label > {MAX_STEP_LABEL} then label = 'other' end
  local bucket = '+Inf'
  {_BUCKET_CHAIN}
  end
  redis.call('HINCRBY', totals, 'step:' .. label .. ':' .. bucket, 1)
  redis.call('HINCRBY', totals, 'step:' .. label .. ':sum', ended_ms)
end
"""


# A cluster's second command: ARGV = session id, status, at, terminal, ended step, ended ms, new session, ttl.
INDEX_SCRIPT = (
    """
local sid, status, at, terminal = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local ended_step, ended_ms, new_session, ttl = ARGV[5], ARGV[6], ARGV[7] == '1', tonumber(ARGV[8])
if ended_ms ~= '' then ended_ms = tonumber(ended_ms) end
"""
    + index_update_lua(1)
    + "return 1\n"
)


class IndexKeys:
    def __init__(self, prefix: str) -> None:
        tag = f"{prefix}:index:{{{prefix}}}"
        self.totals = f"{tag}:totals"
        self._groups = {group: f"{tag}:{group}" for group in GROUPS}

    def group(self, group: str) -> str:
        return self._groups[group]

    def for_publish(self, status: str) -> list[str]:
        """KEYS of ``index_update_lua``: the finished set of ``status`` (any one when it is not terminal)."""
        finished = self._groups[status] if status in TERMINAL_GROUPS else self._groups["success"]
        return [self._groups["active"], finished, self.totals]

    @property
    def sets(self) -> list[str]:
        return list(self._groups.values())

    @property
    def all(self) -> list[str]:
        return [self.totals, *self.sets]


def index_arguments(publish_args: list[Any], outcome: list[Any]) -> list[Any] | None:
    """ARGV of ``INDEX_SCRIPT`` from the publish script's ARGV and answer; None when nothing was stored."""
    if outcome[0] != b"ok":
        return None
    _, _, at, ended_step, ended_ms, new_session = outcome
    terminal, ttl, session_id, status = publish_args[2], publish_args[7], publish_args[10], publish_args[11]
    return [session_id, status, at, terminal, ended_step, ended_ms, new_session, ttl]


@contextmanager
def _store_errors_as_unavailable() -> Iterator[None]:
    """A Redis that does not answer is an outage the callers know how to report, not a bug."""
    try:
        yield
    except (RedisError, RedisClusterException) as error:
        raise unavailable_because(error) from error


class RedisIndex(SessionIndex):
    """Reads the index; ``client`` is the engine's client (single Redis or cluster: a pipeline works on both)."""

    def __init__(self, client: Any, keys: IndexKeys, snapshot_key: Any, meta_key: Any) -> None:
        self._client = client
        self._keys = keys
        self._snapshot_key = snapshot_key
        self._meta_key = meta_key

    async def members(self, group: str | None, before: Cursor | None, count: int) -> list[tuple[str, int]]:
        keys = self._keys.sets if group is None else [self._keys.group(group)]
        top = "+inf" if before is None else before[0]
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            # Ties on the same ms come in descending id order; those at or after the cursor are skipped below.
            pipe.zrevrangebyscore(key, top, "-inf", start=0, num=count + 64, withscores=True)
        picked: list[tuple[int, str]] = []
        with _store_errors_as_unavailable():
            answered = await pipe.execute()
        for rows in answered:
            for member, score in rows:
                ms, session_id = int(score), member.decode()
                if before is None or (ms, session_id) < before:
                    picked.append((ms, session_id))
        picked.sort(reverse=True)  # every session: the merge of its one group per session
        return [(session_id, ms) for ms, session_id in picked[:count]]

    async def entries(self, session_ids: list[str]) -> list[IndexEntry | None]:
        if not session_ids:
            return []
        pipe = self._client.pipeline(transaction=False)
        for session_id in session_ids:
            pipe.get(self._snapshot_key(session_id))
            pipe.hmget(self._meta_key(session_id), "step_at", "durations")
        with _store_errors_as_unavailable():
            answers = await pipe.execute()
        found: list[IndexEntry | None] = []
        for position, session_id in enumerate(session_ids):
            snapshot, (_, durations) = answers[2 * position], answers[2 * position + 1]
            if not snapshot:
                found.append(None)
                continue
            last_ms = int(snapshot[7:].split(b"-", 1)[0])  # the snapshot starts with {"id":"<ms>-<seq>"
            found.append(IndexEntry(session_id, last_ms, snapshot, parse_durations(durations)))
        return found

    async def drop(self, session_ids: list[str]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for key in self._keys.sets:
            pipe.zrem(key, *session_ids)
        with _store_errors_as_unavailable():
            await pipe.execute()

    async def prune(self, horizon_ms: int) -> None:
        pipe = self._client.pipeline(transaction=False)
        for key in self._keys.sets:
            pipe.zremrangebyscore(key, "-inf", f"({horizon_ms}")
        with _store_errors_as_unavailable():
            await pipe.execute()

    async def totals(self) -> dict[str, int]:
        with _store_errors_as_unavailable():
            raw = await self._client.hgetall(self._keys.totals)
        return {field.decode(): int(value) for field, value in raw.items()}

    async def finished_between(self, ranges: list[tuple[int, int]]) -> dict[str, list[int]]:
        pipe = self._client.pipeline(transaction=False)
        for status in TERMINAL_GROUPS:
            for start, end in ranges:
                pipe.zcount(self._keys.group(status), start, f"({end}")
        with _store_errors_as_unavailable():
            counts = await pipe.execute()
        return {
            status: counts[position * len(ranges) : (position + 1) * len(ranges)]
            for position, status in enumerate(TERMINAL_GROUPS)
        }
