"""The one tracker core: every rule of ``ProgressTracker`` and ``AsyncProgressTracker``, with no I/O of its own.

The core validates, drafts each event (publisher id, sequence number, step), decides whether to send it now or
keep it in the outbox, maps a failure to what it means (retry later, drop, give up) and keeps the retry schedule.
Each public method of a tracker is a generator here (``complete_steps`` for ``complete()``...) that yields its
I/O, ``(SEND, draft)`` or ``(APPEND, draft)``; a SEND is answered with the stored envelope. ``tracker.py``
drives them: ``ProgressTracker`` with calls, ``AsyncProgressTracker`` awaited (see ``steps.py``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any, Final, Generic, Literal, NamedTuple, TypeVar

import httpx
import orjson
from redis.exceptions import OutOfMemoryError, RedisError

from sse_progress.config import StoreSettings
from sse_progress.engines import EngineFull, EngineUnavailable, MemoryEngine, SessionTerminal
from sse_progress.protocol.events import EventDraft, is_valid_session_id
from sse_progress.publisher.outbox import Outbox, RetrySchedule, default_outbox_dir
from sse_progress.publisher.sinks import (
    HttpPublishError,
    PublishNotAuthorized,
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

SEND: Final = "send"
APPEND: Final = "append"
Step = tuple[Literal["send", "append"], EventDraft]
T = TypeVar("T")
# The core's generators: each yields a Step; a SEND is answered with the stored envelope, an APPEND with None.
Steps = Generator[Step, bytes | None, T]
Envelope = dict[str, Any]
SinkT = TypeVar("SinkT")


def new_session_id() -> str:
    return secrets.token_urlsafe(12).replace("-", "").replace("_", "")[:16] or uuid.uuid4().hex[:16]


class RedisStore(NamedTuple):
    """A Redis sink's arguments, in ``RedisSink``'s order."""

    url: str
    prefix: str
    history: int
    ttl: int
    verify_tls: bool


def redis_store(redis_url: str | None, prefix: str | None, history: int | None, ttl: int | None) -> RedisStore:
    """The store's settings from the environment (README's table), the tracker's own arguments taking precedence."""
    settings = StoreSettings.from_env().with_overrides(redis_url=redis_url, prefix=prefix, history=history, ttl=ttl)
    url = settings.redis_url or DEFAULT_REDIS_URL
    return RedisStore(url, settings.prefix, settings.history, settings.ttl, settings.redis_verify_tls)


def required(value: str | None, name: str) -> str:
    if not value:
        raise ValueError(f"tipo='http' needs {name}=")
    return value


class TrackerCore(Generic[SinkT]):
    """Builds the events and keeps the outbox; the tracker that subclasses it does the sending (``_sink``)."""

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
        self.last_envelope: Envelope | None = None
        self.etapa_atual = 0
        # Where the events go; None for tipo="json", which writes the JSON file only.
        self._sink: SinkT | None = None
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

    # The steps of the public methods, one generator each (the tracker's method of the same name drives it).

    def update_progress_steps(
        self, etapa: int, mensagem: str, dados_extra: dict[str, Any] | None, status: str
    ) -> Steps[Envelope | None]:
        draft = self._draft(etapa, mensagem, dados_extra, status)
        if draft is None:
            return None
        if self._sink is None:
            return self._store_locally(draft)
        return (yield from self._send_steps(draft))

    def update_progress_with_estimativas_steps(
        self, etapa: int, mensagem: str, estimativas: Any
    ) -> Steps[Envelope | None]:
        return (yield from self.update_progress_steps(etapa, mensagem, {"estimativas_tela_5": estimativas}, "running"))

    def complete_steps(self, mensagem: str, dados_extra: dict[str, Any] | None) -> Steps[Envelope | None]:
        return (yield from self.update_progress_steps(self.total_etapas, mensagem, dados_extra, "success"))

    def fail_steps(self, mensagem: str, dados_extra: dict[str, Any] | None) -> Steps[Envelope | None]:
        return (yield from self.update_progress_steps(self.etapa_atual, mensagem, dados_extra, "error"))

    def cancel_steps(self, mensagem: str, dados_extra: dict[str, Any] | None) -> Steps[Envelope | None]:
        return (yield from self.update_progress_steps(self.etapa_atual, mensagem, dados_extra, "cancelled"))

    def flush_steps(self) -> Steps[int]:
        """Send the outbox now; returns how many events still wait (the store is down again)."""
        if self._outbox is None or self._sink is None:
            return 0
        try:
            yield from self._outbox_steps()
        except NOT_NOW as error:
            self._retry.failed()
            self._report_not_sent(error)
        return len(self._outbox)

    def close_steps(self) -> Steps[None]:
        """Try the outbox a last time, then release it (the tracker closes its sink after these steps)."""
        if self._outbox is None:
            return
        if len(self._outbox):
            yield from self.flush_steps()
        self._report_leftovers()
        self._outbox.close()

    def exit_steps(self, exc: BaseException | None) -> Steps[None]:
        """Leaving the ``with`` block: an exception ends the session (see ``final_report``); the tracker closes."""
        report = final_report(exc) if exc is not None and not self.finished else None
        if report is not None:
            status, mensagem = report
            yield from self.update_progress_steps(self.etapa_atual, mensagem, None, status)

    def append_to_outbox(self, draft: EventDraft) -> None:
        """Write ``draft`` to the outbox and fsync it (blocking: the async tracker runs this in a thread)."""
        assert self._outbox is not None
        try:
            self._outbox.append(draft)
        except OSError as write_error:
            log.error("session %s: could not write the outbox %s: %s", self.session_id, self._outbox.path, write_error)

    # The rules.

    def _send_steps(self, draft: EventDraft) -> Steps[Envelope | None]:
        """Send ``draft`` after the outbox, or keep it in the outbox while the store is away."""
        if not self._may_send(draft):
            yield APPEND, draft
            return self._queued(draft, None)
        try:
            yield from self._outbox_steps()
            envelope = yield SEND, draft
        except SessionTerminal:
            self._refused(draft.mensagem)
            return None
        except NOT_NOW as error:
            yield APPEND, draft
            return self._queued(draft, error)
        assert envelope is not None
        return self._sent(envelope)

    def _outbox_steps(self) -> Steps[None]:
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

    def _store_locally(self, draft: EventDraft) -> Envelope:
        envelope = self._local.publish_now(draft).envelope
        self._write_json(envelope)
        return self._accepted(envelope)

    def _may_send(self, draft: EventDraft) -> bool:
        """Whether to try the store now: not while it is known down, except for the final event."""
        return self._retry.due() or draft.terminal

    def _queued(self, draft: EventDraft, error: BaseException | None) -> Envelope:
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

    def _sent(self, envelope: bytes) -> Envelope:
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

    def _refused(self, mensagem: str) -> None:
        log.warning("session %s already ended elsewhere; event %r dropped", self.session_id, mensagem)
        self.finished = True

    def _accepted(self, envelope: bytes) -> Envelope:
        self.last_envelope = orjson.loads(envelope)
        return self.last_envelope

    def _write_json(self, envelope: bytes) -> None:
        try:
            write_json_snapshot(self.json_dir, self.session_id, envelope)
        except OSError as error:
            log.error("could not write the progress file in %s: %s", self.json_dir, error)


def final_report(exc: BaseException) -> tuple[str, str] | None:
    """(status, mensagem) an exception leaving the ``with`` block ends the session with; None leaves it as is."""
    if isinstance(exc, KeyboardInterrupt | asyncio.CancelledError):
        return "cancelled", "Interrompido"
    if isinstance(exc, SystemExit) and exc.code in (0, None):
        return None
    return "error", f"{type(exc).__name__}: {exc}"
