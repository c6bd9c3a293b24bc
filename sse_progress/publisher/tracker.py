"""``ProgressTracker``: how a job reports its progress. Drop-in for existing job code.

    tracker = ProgressTracker(total_etapas=15, redis_url="redis://localhost:6379/0")
    with tracker:
        for etapa in range(1, 16):
            ...  # fill screen `etapa`
            tracker.update_progress(etapa, f"Tela {etapa} preenchida")
        tracker.complete("Cotação concluída", {"valor": 1234.5})

A tracker never raises into the job because its store is unreachable: it writes the JSON snapshot file,
appends the event to its outbox (see ``outbox.py``) and goes on. Once the store answers again, the outbox is
sent in order before any newer event.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import uuid
from collections.abc import Generator
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar, cast

import httpx
import orjson
from redis.exceptions import OutOfMemoryError, RedisError

from sse_progress.config import StoreSettings
from sse_progress.engines import Engine, EngineFull, EngineUnavailable, MemoryEngine, SessionTerminal
from sse_progress.protocol.events import EventDraft, is_valid_session_id
from sse_progress.publisher.outbox import Outbox, RetrySchedule, default_outbox_dir
from sse_progress.publisher.sinks import (
    AsyncHttpSink,
    AsyncRedisSink,
    AsyncSink,
    EngineSink,
    HttpPublishError,
    HttpSink,
    MemorySink,
    PublishNotAuthorized,
    RedisSink,
    Sink,
    StoreFull,
    default_json_dir,
    write_json_snapshot,
)

log = logging.getLogger("sse_progress.tracker")

Tipo = Literal["redis", "json", "http", "memory"]
TIPOS = ("redis", "json", "http", "memory")
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
UNREACHABLE = (RedisError, OSError, httpx.TransportError, EngineUnavailable)
# What keeps an event in the outbox for a later attempt: a store out of reach, or one that refuses the token (the
# events are not at fault; a tracker given a valid token sends them).
NOT_NOW = (*UNREACHABLE, PublishNotAuthorized)


SEND = "send"
APPEND = "append"
T = TypeVar("T")
# What the tracker core yields: (SEND or APPEND, draft); a SEND is answered with the stored envelope.
Steps = Generator[tuple[str, EventDraft], bytes | None, T]


def new_session_id() -> str:
    return secrets.token_urlsafe(12).replace("-", "").replace("_", "")[:16] or uuid.uuid4().hex[:16]


class _TrackerBase:
    """Builds the events and keeps the outbox; subclasses send them."""

    def __init__(
        self,
        total_etapas: int,
        session_id: str | None,
        tipo: str,
        json_dir: str | Path | None,
        outbox_dir: str | Path | None,
        retry: RetrySchedule | None,
    ) -> None:
        if tipo not in TIPOS:
            raise ValueError(f"tipo must be one of {', '.join(TIPOS)}, got {tipo!r}")
        if session_id is not None and not is_valid_session_id(session_id):
            raise ValueError(f"session_id must match ^[A-Za-z0-9_-]{{1,64}}$, got {session_id!r}")
        self.total_etapas = total_etapas
        self.session_id = session_id or new_session_id()
        self.tipo = tipo
        self.json_dir = Path(json_dir) if json_dir else default_json_dir()
        self.finished = False
        self.last_envelope: dict[str, Any] | None = None
        self.etapa_atual = 0
        self._publisher = uuid.uuid4().hex[:16]
        self._sequence = 0
        # Ids and ETA for the JSON file when the store cannot give them.
        self._local = MemoryEngine()
        self._retry = retry or RetrySchedule()
        self._outbox: Outbox | None = None
        if tipo != "json":
            directory = Path(outbox_dir) if outbox_dir else default_outbox_dir(self.json_dir)
            self._outbox = Outbox(directory, self.session_id, self._publisher)

    @property
    def outbox(self) -> Outbox | None:
        """The events waiting for the store (None for ``tipo="json"``, which has no store)."""
        return self._outbox

    def _draft(self, etapa: int, mensagem: str, dados_extra: dict[str, Any] | None, status: str) -> EventDraft | None:
        if self.finished:
            log.warning("session %s already ended; ignoring %s event %r", self.session_id, status, mensagem)
            return None
        draft = EventDraft(
            session_id=self.session_id,
            etapa_atual=etapa,
            total_etapas=self.total_etapas,
            status=status,
            mensagem=mensagem,
            dados_extra=dados_extra,
            publisher=self._publisher,
            sequence=self._sequence,
        )
        self._sequence += 1
        self.etapa_atual = etapa
        if draft.terminal:
            self.finished = True
        return draft

    def _store_locally(self, draft: EventDraft) -> dict[str, Any]:
        envelope = self._local.publish_now(draft).envelope
        self._write_json(envelope)
        return self._accepted(envelope)

    def _may_send(self, draft: EventDraft) -> bool:
        """Whether to try the store now: not while it is known down, except for the final event."""
        return self._retry.due() or draft.terminal

    def _append_to_outbox(self, draft: EventDraft) -> None:
        """Write ``draft`` to the outbox and fsync it (blocking: the async tracker runs this in a thread)."""
        assert self._outbox is not None
        try:
            self._outbox.append(draft)
        except OSError as write_error:
            log.error("session %s: could not write the outbox %s: %s", self.session_id, self._outbox.path, write_error)

    def _queued(self, draft: EventDraft, error: BaseException | None) -> dict[str, Any]:
        """``draft`` is in the outbox for a later attempt; the JSON snapshot file shows it meanwhile."""
        assert self._outbox is not None
        if error is not None:
            self._retry.failed()
            self._report_not_sent(error)
        return self._store_locally(draft)

    def _report_not_sent(self, error: BaseException) -> None:
        assert self._outbox is not None
        if isinstance(error, PublishNotAuthorized):
            log.error(
                "session %s: %s; %d events kept in %s until a tracker with a valid token sends them",
                self.session_id,
                error,
                len(self._outbox),
                self._outbox.path,
            )
            return
        # A full store answers: "unreachable" would send the operator to the network instead of its memory.
        problem = "is full" if isinstance(error, (OutOfMemoryError, EngineFull, StoreFull)) else "unreachable"
        log.warning(
            "session %s: progress store %s (%s); %d events wait in %s",
            self.session_id,
            problem,
            error,
            len(self._outbox),
            self._outbox.path,
        )

    def _sent(self, envelope: bytes) -> dict[str, Any]:
        self._retry.succeeded()
        return self._accepted(envelope)

    def _dropped(self, draft: EventDraft, reason: BaseException) -> None:
        """A queued event the store will never take (the session ended, or the service refused it)."""
        log.warning("session %s: queued event %r not stored: %s", self.session_id, draft.mensagem, reason)

    def _report_leftovers(self) -> None:
        if self._outbox is not None and len(self._outbox):
            log.warning(
                "session %s: progress store still not taking events; %d events remain in %s for the next tracker "
                "of this session",
                self.session_id,
                len(self._outbox),
                self._outbox.directory,
            )

    # One core for both trackers: these generators decide what to do and yield each input/output step,
    # ("send", draft) or ("append", draft); ``ProgressTracker`` runs the steps as calls, the async one awaits them.

    def _update_steps(self, draft: EventDraft) -> Steps[dict[str, Any] | None]:
        """Send ``draft`` after the outbox, or keep it in the outbox while the store is away."""
        if not self._may_send(draft):
            yield APPEND, draft
            return self._queued(draft, None)
        try:
            yield from self._flush_steps()
            envelope = yield SEND, draft
        except SessionTerminal:
            self._refused(draft.mensagem)
            return None
        except NOT_NOW as error:
            yield APPEND, draft
            return self._queued(draft, error)
        assert envelope is not None
        return self._sent(envelope)

    def _flush_steps(self) -> Steps[None]:
        """Send the outbox, oldest first; a store out of reach stops it (the rest stays for later)."""
        assert self._outbox is not None
        for draft in self._outbox.pending():
            try:
                envelope = yield SEND, draft
                assert envelope is not None
                self._accepted(envelope)
            except PublishNotAuthorized:
                raise  # the event stays: nothing was wrong with it
            except (SessionTerminal, HttpPublishError) as refusal:
                self._dropped(draft, refusal)
            self._outbox.acknowledge()

    def _flush_now_steps(self) -> Steps[int]:
        assert self._outbox is not None
        try:
            yield from self._flush_steps()
        except NOT_NOW as error:
            self._retry.failed()
            self._report_not_sent(error)
        return len(self._outbox)

    def _refused(self, mensagem: str) -> None:
        log.warning("session %s already ended elsewhere; event %r dropped", self.session_id, mensagem)
        self.finished = True

    def _accepted(self, envelope: bytes) -> dict[str, Any]:
        self.last_envelope = orjson.loads(envelope)
        return self.last_envelope

    def _write_json(self, envelope: bytes) -> None:
        try:
            write_json_snapshot(self.json_dir, self.session_id, envelope)
        except OSError as error:
            log.error("could not write the progress file in %s: %s", self.json_dir, error)


class ProgressTracker(_TrackerBase):
    """Synchronous tracker; ``tipo`` picks where events go: ``redis``, ``http``, ``json`` or ``memory``."""

    def __init__(
        self,
        total_etapas: int = 15,
        session_id: str | None = None,
        tipo: Tipo = "redis",
        redis_url: str | None = None,
        *,
        base_url: str | None = None,
        token: str | None = None,
        json_dir: str | Path | None = None,
        prefix: str | None = None,
        ttl: int | None = None,
        history: int | None = None,
        engine: MemoryEngine | None = None,
        outbox_dir: str | Path | None = None,
        retry: RetrySchedule | None = None,
        legacy_keys: bool = False,
    ) -> None:
        super().__init__(total_etapas, session_id, tipo, json_dir, outbox_dir, retry)
        if legacy_keys and tipo != "redis":
            raise ValueError("legacy_keys=True writes the older system's Redis key and channel: it needs tipo='redis'")
        self._sink: Sink | None = None
        if tipo == "redis":
            settings = _redis_settings(redis_url, prefix, history, ttl)
            self._sink = RedisSink(
                settings.redis_url or DEFAULT_REDIS_URL,
                settings.prefix,
                settings.history,
                settings.ttl,
                settings.redis_verify_tls,
                legacy_keys,
            )
        elif tipo == "http":
            self._sink = HttpSink(_required(base_url, "base_url"), _required(token, "token"))
        elif tipo == "memory":
            self._sink = MemorySink(engine or self._local)

    @classmethod
    def from_arguments(cls, args: argparse.Namespace, total_etapas: int = 15) -> ProgressTracker:
        """A tracker configured by the options of ``add_progress_arguments``."""
        return cls(
            total_etapas,
            args.session,
            args.progress_tracker,
            args.redis_url,
            base_url=getattr(args, "progress_url", None),
            token=getattr(args, "progress_token", None),
        )

    def update_progress(
        self, etapa: int, mensagem: str = "", dados_extra: dict[str, Any] | None = None, status: str = "running"
    ) -> dict[str, Any] | None:
        """Report step ``etapa`` of ``total_etapas``; returns the stored envelope (None once finished)."""
        draft = self._draft(etapa, mensagem, dados_extra, status)
        if draft is None:
            return None
        if self._sink is None:
            return self._store_locally(draft)
        return self._run(self._update_steps(draft))

    def flush(self) -> int:
        """Send the outbox now, oldest first; returns how many events still wait (the store is down again)."""
        if self._outbox is None or self._sink is None:
            return 0
        return self._run(self._flush_now_steps())

    def _run(self, steps: Steps[T]) -> T:
        """Run the core's steps as calls: a send through the sink, an append to the outbox."""
        assert self._sink is not None
        reply: bytes | None = None
        error: BaseException | None = None
        while True:
            try:
                action, draft = steps.send(reply) if error is None else steps.throw(error)
            except StopIteration as done:
                return cast(T, done.value)
            reply, error = None, None
            try:
                if action == SEND:
                    reply = self._sink.send(draft)
                else:
                    self._append_to_outbox(draft)
            except BaseException as failure:  # handed to the core, which decides (or lets it propagate)
                error = failure

    def update_progress_with_estimativas(
        self, etapa: int, mensagem: str = "", estimativas: Any = None
    ) -> dict[str, Any] | None:
        return self.update_progress(etapa, mensagem, {"estimativas_tela_5": estimativas})

    def complete(self, mensagem: str = "", dados_extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
        return self.update_progress(self.total_etapas, mensagem, dados_extra, status="success")

    def fail(self, mensagem: str = "", dados_extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
        return self.update_progress(self.etapa_atual, mensagem, dados_extra, status="error")

    def cancel(self, mensagem: str = "", dados_extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
        return self.update_progress(self.etapa_atual, mensagem, dados_extra, status="cancelled")

    def close(self) -> None:
        """Try the outbox a last time, then release it (what remains is sent by the next tracker)."""
        if self._outbox is not None:
            if len(self._outbox):
                self.flush()
            self._report_leftovers()
            self._outbox.close()
        close = getattr(self._sink, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> ProgressTracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        report = _final_report(exc) if exc is not None and not self.finished else None
        if report is not None:
            status, mensagem = report
            self.update_progress(self.etapa_atual, mensagem, status=status)
        self.close()


class AsyncProgressTracker(_TrackerBase):
    """The asynchronous twin of ``ProgressTracker`` (same methods, awaited)."""

    def __init__(
        self,
        total_etapas: int = 15,
        session_id: str | None = None,
        tipo: Tipo = "redis",
        redis_url: str | None = None,
        *,
        base_url: str | None = None,
        token: str | None = None,
        json_dir: str | Path | None = None,
        prefix: str | None = None,
        ttl: int | None = None,
        history: int | None = None,
        engine: Engine | None = None,
        outbox_dir: str | Path | None = None,
        retry: RetrySchedule | None = None,
    ) -> None:
        super().__init__(total_etapas, session_id, tipo, json_dir, outbox_dir, retry)
        self._sink: AsyncSink | None = None
        if engine is not None:
            self._sink = EngineSink(engine)
        elif tipo == "redis":
            settings = _redis_settings(redis_url, prefix, history, ttl)
            self._sink = AsyncRedisSink(
                settings.redis_url or DEFAULT_REDIS_URL,
                settings.prefix,
                settings.history,
                settings.ttl,
                settings.redis_verify_tls,
            )
        elif tipo == "http":
            self._sink = AsyncHttpSink(_required(base_url, "base_url"), _required(token, "token"))
        elif tipo == "memory":
            self._sink = EngineSink(self._local)

    async def update_progress(
        self, etapa: int, mensagem: str = "", dados_extra: dict[str, Any] | None = None, status: str = "running"
    ) -> dict[str, Any] | None:
        draft = self._draft(etapa, mensagem, dados_extra, status)
        if draft is None:
            return None
        if self._sink is None:
            return self._store_locally(draft)
        return await self._run(self._update_steps(draft))

    async def flush(self) -> int:
        """Send the outbox now, oldest first; returns how many events still wait (the store is down again)."""
        if self._outbox is None or self._sink is None:
            return 0
        return await self._run(self._flush_now_steps())

    async def _run(self, steps: Steps[T]) -> T:
        """Run the core's steps awaited; the outbox's append ends with an fsync, so it runs in a thread."""
        assert self._sink is not None
        reply: bytes | None = None
        error: BaseException | None = None
        while True:
            try:
                action, draft = steps.send(reply) if error is None else steps.throw(error)
            except StopIteration as done:
                return cast(T, done.value)
            reply, error = None, None
            try:
                if action == SEND:
                    reply = await self._sink.send(draft)
                else:
                    await asyncio.to_thread(self._append_to_outbox, draft)
            except BaseException as failure:  # handed to the core, which decides (or lets it propagate)
                error = failure

    async def update_progress_with_estimativas(
        self, etapa: int, mensagem: str = "", estimativas: Any = None
    ) -> dict[str, Any] | None:
        return await self.update_progress(etapa, mensagem, {"estimativas_tela_5": estimativas})

    async def complete(self, mensagem: str = "", dados_extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
        return await self.update_progress(self.total_etapas, mensagem, dados_extra, status="success")

    async def fail(self, mensagem: str = "", dados_extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
        return await self.update_progress(self.etapa_atual, mensagem, dados_extra, status="error")

    async def cancel(self, mensagem: str = "", dados_extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
        return await self.update_progress(self.etapa_atual, mensagem, dados_extra, status="cancelled")

    async def aclose(self) -> None:
        """Try the outbox a last time, then release it (what remains is sent by the next tracker)."""
        if self._outbox is not None:
            if len(self._outbox):
                await self.flush()
            self._report_leftovers()
            self._outbox.close()
        aclose = getattr(self._sink, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aenter__(self) -> AsyncProgressTracker:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        report = _final_report(exc) if exc is not None and not self.finished else None
        if report is not None:
            status, mensagem = report
            await self.update_progress(self.etapa_atual, mensagem, status=status)
        await self.aclose()


def _redis_settings(redis_url: str | None, prefix: str | None, history: int | None, ttl: int | None) -> StoreSettings:
    """The store's settings from the environment (README's table), the tracker's own arguments taking precedence."""
    return StoreSettings.from_env().with_overrides(redis_url=redis_url, prefix=prefix, history=history, ttl=ttl)


def _final_report(exc: BaseException) -> tuple[str, str] | None:
    """(status, mensagem) an exception leaving the ``with`` block ends the session with; None leaves it as is."""
    if isinstance(exc, KeyboardInterrupt | asyncio.CancelledError):
        return "cancelled", "Interrompido"
    if isinstance(exc, SystemExit) and exc.code in (0, None):
        return None
    return "error", f"{type(exc).__name__}: {exc}"


def _required(value: str | None, name: str) -> str:
    if not value:
        raise ValueError(f"tipo='http' needs {name}=")
    return value


def add_progress_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--progress-tracker``, ``--session`` and ``--redis-url`` to a job's argument parser.

    Also ``--progress-url`` and ``--progress-token`` for ``--progress-tracker http``. Pass them all on with
    ``ProgressTracker.from_arguments(args, total_etapas=15)``.
    """
    group = parser.add_argument_group("progress")
    group.add_argument("--progress-tracker", choices=TIPOS, default="redis", help="where progress goes")
    group.add_argument("--session", default=None, help="session id (default: a new random one)")
    group.add_argument("--redis-url", default=os.environ.get("REDIS_URL"), help="Redis URL (default: $REDIS_URL)")
    group.add_argument(
        "--progress-url",
        default=os.environ.get("SSE_PROGRESS_URL"),
        help="server URL for http (default: $SSE_PROGRESS_URL)",
    )
    group.add_argument(
        "--progress-token",
        default=os.environ.get("SSE_PROGRESS_TOKEN"),
        help="publisher token for http (default: $SSE_PROGRESS_TOKEN)",
    )
    return parser
