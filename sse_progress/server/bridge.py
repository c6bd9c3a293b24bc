"""``sse-progress bridge``: the older system's Redis writes, turned into sse-progress events.

The older bot ``SET``s ``rpa:progress:<sid>`` and may ``PUBLISH`` the same JSON on ``rpa:session:<sid>``
(unbraced names). The bridge follows both — the channel pattern by ``PSUBSCRIBE``, the key through keyspace
notifications, and the keys that already exist by a ``SCAN`` at start — and stores each update through the
engine's publish script, the same path as ``ProgressTracker`` (terminal rule, ETA, history, live push).

An update read twice (a publish and its ``SET``, two bridges, a restart's scan) is stored once: its
(publisher, sequence) is derived from its timestamp (see ``legacy.draft_from_legacy``) and the script drops a
sequence it already stored; an update that repeats the session's stored state is skipped before that. An update
that cannot be read is skipped, logged and counted; it never stops the bridge.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import logging.config
import signal
import sys
import time
import zlib
from collections import Counter, OrderedDict
from typing import Any

import orjson
from prometheus_client import Gauge
from redis.exceptions import RedisError, ResponseError

from sse_progress.cancellation import raise_if_cancelled
from sse_progress.config import ConfigError, Settings
from sse_progress.engines import EngineUnavailable, SessionTerminal
from sse_progress.engines.redis.cluster_url import is_cluster_url
from sse_progress.engines.redis.engine import RedisEngine
from sse_progress.engines.redis.scripts import connection_options
from sse_progress.engines.redis.subscription import client_without_retries, next_message
from sse_progress.exits import EXIT_CONFIG, EXIT_OK, EXIT_UNAVAILABLE
from sse_progress.ports import bind_failure
from sse_progress.protocol.events import InvalidEvent
from sse_progress.protocol.legacy import (
    NOTIFY_SETTING,
    SETTLE_SECONDS,
    LegacyKeys,
    OwnUpdate,
    draft_from_legacy,
    same_state,
    session_from_name,
)
from sse_progress.server.logs import log_config
from sse_progress.server.metrics import METRICS

log = logging.getLogger("sse_progress.bridge")

NEEDED_FLAGS = "K$"  # keyspace events (K) of string commands ($: SET, SETEX…)
SCAN_EVERY_SECONDS = 2.0  # when keyspace notifications are off: the older PHP poller's rhythm
MAX_PENDING_READS = 10_000
# Short: while the bridge is away, a bot that only SETs overwrites steps nobody reads; one attempt a second costs
# Redis nothing.
FIRST_BACKOFF_SECONDS = 0.25
MAX_BACKOFF_SECONDS = 1.0
CONNECTION_NAME = "the bridge's Pub/Sub connection"
MAX_REMEMBERED_SESSIONS = 100_000
LOCK_STRIPES = 64
SHOWN_BYTES = 80
NEEDS_REDIS = "sse-progress: the bridge needs one Redis: --redis-url or REDIS_URL (redis://, rediss://, unix://)"

# Registered by ``run_bridge`` only: a server's /metrics would otherwise show a bridge that is not there.
CONNECTED = Gauge(
    "sse_progress_bridge_connected", "1 while the bridge follows Redis, 0 while it reconnects", registry=None
)


class Bridge:
    """Follows the legacy channel pattern and key pattern of one Redis; ``run()`` until cancelled."""

    def __init__(
        self,
        url: str,
        engine: RedisEngine,
        channel_pattern: str,
        key_pattern: str,
        total_etapas: int = 15,
        settle: float = SETTLE_SECONDS,
        configure_redis: bool = True,
        verify_tls: bool = True,
    ) -> None:
        for pattern in (channel_pattern, key_pattern):
            if not pattern.endswith("*") or any(c in pattern[:-1] for c in "*?[]\\"):
                raise ConfigError(f"a legacy pattern must be a plain prefix followed by '*', got {pattern!r}")
        self.engine = engine
        self.channel_pattern = channel_pattern
        self.key_pattern = key_pattern
        self.total_etapas = total_etapas
        self.settle = settle
        self.configure_redis = configure_redis
        # No silent reconnect: after a drop the bridge resubscribes and rescans itself (SETs made meanwhile).
        self._client = client_without_retries(url, connection_options(url, verify_tls))
        db = self._client.connection_pool.connection_kwargs.get("db", 0)
        self._keyspace_prefix = f"__keyspace@{db}__:"
        self._keyspace_pattern = self._keyspace_prefix + key_pattern
        self._pending_reads: dict[str, asyncio.Task[None]] = {}
        # Sessions whose bot also PUBLISHes: their updates are taken from the channel only, where every bridge
        # sees the same JSON (a key read could race the publish of the same update, with another timestamp).
        self._publishing: OrderedDict[str, None] = OrderedDict()
        # Sessions whose bot only SETs (a key read, no publish seen): their keys are read at once, since the
        # next SET may come soon and a read that lags behind it misses a step.
        self._key_only: OrderedDict[str, None] = OrderedDict()
        # One session's updates are compared with its stored state and stored one at a time (striped: bounded).
        self._locks = [asyncio.Lock() for _ in range(LOCK_STRIPES)]
        self.counts: Counter[str] = Counter()
        self.notifications = False
        self._following = False
        self._reconnecting = False  # the next "ready" follows a lost connection: counted as a reconnect

    async def run(self) -> None:
        backoff = FIRST_BACKOFF_SECONDS
        while True:
            try:
                await self._follow()
            except (RedisError, OSError, EngineUnavailable) as error:
                raise_if_cancelled()
                if self._following:  # it was working: a fresh outage starts with a short wait
                    self._following = False
                    CONNECTED.set(0)
                    backoff = FIRST_BACKOFF_SECONDS
                log.warning("lost Redis (%s); reconnecting and rescanning in %.2fs", error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                # A pooled connection opened before a Redis restart is dead, and would fail the first command
                # after it: every connection of the next attempt is a new one.
                await self._client.connection_pool.disconnect()
                self._reconnecting = True

    async def close(self) -> None:
        for task in list(self._pending_reads.values()):
            task.cancel()
        await self._client.aclose()
        await self.engine.close()

    async def _follow(self) -> None:
        pubsub = self._client.pubsub()
        rescans: asyncio.Task[None] | None = None
        try:
            self.notifications = await self._enable_notifications()
            patterns = [self.channel_pattern, self._keyspace_pattern]
            await pubsub.psubscribe(*patterns)
            # Scan only once both subscriptions are confirmed: a write made during the scan is then seen too.
            confirmed = 0
            while confirmed < len(patterns):
                message = await next_message(pubsub, CONNECTION_NAME)
                if message["type"] == "psubscribe":
                    confirmed += 1
                else:
                    await self._dispatch(message)
            scanned = await self._scan()
            log.info(
                "bridge ready: following %s and %s (%s); %d existing keys read",
                self.channel_pattern,
                self.key_pattern,
                "keyspace notifications" if self.notifications else f"a scan every {SCAN_EVERY_SECONDS:g}s",
                scanned,
            )
            self._following = True
            CONNECTED.set(1)
            if self._reconnecting:
                self._reconnecting = False
                METRICS.redis_reconnects.inc()
            if not self.notifications:
                rescans = asyncio.create_task(self._rescan_forever())
            while True:
                await self._dispatch(await next_message(pubsub, CONNECTION_NAME))
        finally:
            if rescans is not None:
                rescans.cancel()
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    async def _enable_notifications(self) -> bool:
        """Whether SETs of legacy keys are announced; turns the needed flags on where CONFIG is allowed."""
        try:
            current = str((await self._client.config_get(NOTIFY_SETTING)).get(NOTIFY_SETTING) or "")
        except ResponseError as error:
            log.error(_notifications_help(f"CONFIG GET was refused ({error})"))
            return False
        if "K" in current and ("$" in current or "A" in current):
            return True
        if not self.configure_redis:
            log.error(_notifications_help(f"{NOTIFY_SETTING} is {current!r} and --no-configure-redis was given"))
            return False
        wanted = current + "".join(flag for flag in NEEDED_FLAGS if flag not in current)
        try:
            await self._client.config_set(NOTIFY_SETTING, wanted)
        except ResponseError as error:
            log.error(_notifications_help(f"CONFIG SET was refused ({error})"))
            return False
        log.info("set %s from %r to %r so that SETs of legacy keys are announced", NOTIFY_SETTING, current, wanted)
        return True

    async def _scan(self) -> int:
        count = 0
        async for key in self._client.scan_iter(match=self.key_pattern, count=500):
            session_id = session_from_name(key.decode(errors="replace"), self.key_pattern[:-1])
            if session_id is not None:
                await self._read_key(session_id, key.decode(errors="replace"), "scan")
                count += 1
        return count

    async def _rescan_forever(self) -> None:
        while True:
            await asyncio.sleep(SCAN_EVERY_SECONDS)
            try:
                await self._scan()
            except (RedisError, OSError, EngineUnavailable) as error:
                raise_if_cancelled()
                log.warning("rescan of legacy keys failed (%s); retrying", error)

    async def _dispatch(self, message: dict[str, Any]) -> None:
        if message["type"] != "pmessage":
            return
        pattern = message["pattern"].decode()
        name = message["channel"].decode(errors="replace")
        if pattern == self.channel_pattern:
            session_id = session_from_name(name, self.channel_pattern[:-1])
            if session_id is not None:  # None: a braced channel, the service's own
                _remember(self._publishing, session_id)
                self._key_only.pop(session_id, None)
                await self.bridge(session_id, message["data"], name, "channel")
        elif pattern == self._keyspace_pattern and message["data"] == b"set":
            key = name[len(self._keyspace_prefix) :]
            session_id = session_from_name(key, self.key_pattern[:-1])
            if session_id is not None:
                self._read_soon(session_id, key)

    def _read_soon(self, session_id: str, key: str) -> None:
        """Read a key soon, once however many SETs arrive meanwhile.

        The first SET of a session is read after a short settle delay: the older bot SETs then PUBLISHes the
        same update, and its publish, arriving first, marks the session as one followed on its channel. Once a
        session is known to only SET, its keys are read at once.
        """
        if session_id in self._pending_reads:
            return
        if len(self._pending_reads) >= MAX_PENDING_READS:
            # Bounded: past the limit the reader waits for this read itself instead of queueing more.
            self.counts["read_inline"] += 1
            task = asyncio.ensure_future(self._read_key(session_id, key, "key"))
        else:
            task = asyncio.ensure_future(self._read_key_later(session_id, key))
            self._pending_reads[session_id] = task

    async def _read_key_later(self, session_id: str, key: str) -> None:
        try:
            await asyncio.sleep(0 if session_id in self._key_only else self.settle)
        finally:
            self._pending_reads.pop(session_id, None)
        if session_id in self._publishing:
            self._count("key", "via_channel")
            return
        _remember(self._key_only, session_id)
        try:
            await self._read_key(session_id, key, "key")
        except (RedisError, OSError, EngineUnavailable) as error:
            # The reconnect that follows rescans every key: this one's latest value is read again then.
            log.warning("could not read %s (%s); it is read again after the reconnect", key, error)

    async def _read_key(self, session_id: str, key: str, source: str) -> None:
        raw = await self._client.get(key)
        if raw is not None:  # gone meanwhile (expired, deleted): nothing to bridge
            await self.bridge(session_id, raw, key, source)

    async def bridge(self, session_id: str, raw: bytes | str, name: str, source: str) -> str:
        """Store one legacy update; returns what became of it (also counted and, when skipped, logged).

        A lost Redis connection propagates (the caller reconnects and rescans); any other failure is logged and
        counted as ``failed``: one bad update never stops the bridge."""
        try:
            return await self._bridge(session_id, raw, name, source)
        except (RedisError, OSError, EngineUnavailable):
            raise
        except Exception:
            log.exception("could not bridge an update from %s; it began %r", name, raw[:SHOWN_BYTES])
            return self._count(source, "failed")

    async def _bridge(self, session_id: str, raw: bytes | str, name: str, source: str) -> str:
        started = time.perf_counter()
        try:
            draft = draft_from_legacy(session_id, raw, self.total_etapas)
        except OwnUpdate:
            return self._count(source, "own")
        except InvalidEvent as error:
            outcome = self._count(source, "skipped")
            log.warning(
                "skipped a legacy update from %s: %s (%d skipped so far); it began %r",
                name,
                error,
                self.counts["skipped"],
                raw[:SHOWN_BYTES],
            )
            return outcome
        async with self._locks[zlib.crc32(session_id.encode()) % LOCK_STRIPES]:
            view = await self.engine.read(session_id, None)
            if view.snapshot is not None and same_state(draft, orjson.loads(view.snapshot)):
                return self._count(source, "duplicate")
            try:
                published = await self.engine.publish(draft)
            except SessionTerminal:
                return self._count(source, "ended")
        if published.duplicate:
            return self._count(source, "duplicate")
        METRICS.publish_latency.observe(time.perf_counter() - started)
        return self._count(source, "stored")

    def _count(self, source: str, outcome: str) -> str:
        self.counts[outcome] += 1
        METRICS.legacy_updates.labels(source, outcome).inc()
        return outcome


def _remember(sessions: OrderedDict[str, None], session_id: str) -> None:
    """Keep ``session_id`` among the most recent ``MAX_REMEMBERED_SESSIONS`` (bounded, least recent dropped)."""
    sessions[session_id] = None
    sessions.move_to_end(session_id)
    if len(sessions) > MAX_REMEMBERED_SESSIONS:
        sessions.popitem(last=False)


def _notifications_help(reason: str) -> str:
    return (
        f"keyspace notifications are off: {reason}. Until '{NOTIFY_SETTING}' includes K and $ (for example "
        f"'K$', or 'AK'), set it where Redis is configured: redis.conf `{NOTIFY_SETTING} K$`, "
        f"`redis-cli CONFIG SET {NOTIFY_SETTING} K$`, or the managed service's parameter group / settings page. "
        f"Meanwhile legacy keys are rescanned every {SCAN_EVERY_SECONDS:g}s; published updates are bridged at once"
    )


def run_bridge(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env().with_overrides(redis_url=args.redis_url)
    except ConfigError as error:
        print(f"sse-progress: {error}", file=sys.stderr)
        return EXIT_CONFIG
    url = settings.redis_url
    if not url or url.startswith("memory://") or is_cluster_url(url):
        print(NEEDS_REDIS, file=sys.stderr)
        return EXIT_CONFIG
    logging.config.dictConfig(log_config(settings.log_format))
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        METRICS.registry.register(CONNECTED)
        try:
            start_http_server(args.metrics_port, args.metrics_host, registry=METRICS.registry)
        except OSError as error:
            print(f"sse-progress: {bind_failure(args.metrics_host, args.metrics_port, error)}", file=sys.stderr)
            return EXIT_UNAVAILABLE
    legacy = LegacyKeys(settings.prefix)
    return asyncio.run(_serve(args, settings, url, legacy))


async def _serve(args: argparse.Namespace, settings: Settings, url: str, legacy: LegacyKeys) -> int:
    engine = RedisEngine(
        url, settings.prefix, settings.history, settings.ttl, settings.redis_pool_size, settings.redis_verify_tls
    )
    try:
        bridge = Bridge(
            url,
            engine,
            args.channel_pattern or legacy.channel_pattern(),
            args.key_pattern or legacy.snapshot_pattern(),
            total_etapas=args.total_etapas,
            settle=args.settle_ms / 1000,
            configure_redis=not args.no_configure_redis,
            verify_tls=settings.redis_verify_tls,
        )
    except ConfigError as error:
        print(f"sse-progress: {error}", file=sys.stderr)
        return EXIT_CONFIG
    task = asyncio.ensure_future(bridge.run())
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await bridge.close()
    log.info("bridge stopped: %s", ", ".join(f"{k} {v}" for k, v in sorted(bridge.counts.items())) or "nothing read")
    return EXIT_OK
