"""``ProgressTracker``: how a job reports its progress. Drop-in for existing job code.

    tracker = ProgressTracker(total_etapas=15, redis_url="redis://localhost:6379/0")
    with tracker:
        for etapa in range(1, 16):
            ...  # fill screen `etapa`
            tracker.update_progress(etapa, f"Tela {etapa} preenchida")
        tracker.complete("Cotação concluída", {"valor": 1234.5})

A tracker never raises into the job because its store is unreachable: it logs, writes the JSON snapshot
file, and goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import httpx
import orjson
from redis.exceptions import RedisError

from .config import Settings
from .engines import Engine, EngineUnavailable, MemoryEngine, SessionTerminal
from .events import EventDraft
from .sinks import (
    AsyncHttpSink,
    AsyncSink,
    EngineSink,
    HttpSink,
    MemorySink,
    RedisSink,
    Sink,
    default_json_dir,
    write_json_snapshot,
)

log = logging.getLogger("sse_progress.tracker")

Tipo = Literal["redis", "json", "http", "memory"]
TIPOS = ("redis", "json", "http", "memory")
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
UNREACHABLE = (RedisError, OSError, httpx.TransportError, EngineUnavailable)


def new_session_id() -> str:
    return secrets.token_urlsafe(12).replace("-", "").replace("_", "")[:16] or uuid.uuid4().hex[:16]


class _TrackerBase:
    """Builds the events; subclasses send them."""

    def __init__(self, total_etapas: int, session_id: str | None, tipo: str, json_dir: str | Path | None) -> None:
        if tipo not in TIPOS:
            raise ValueError(f"tipo must be one of {', '.join(TIPOS)}, got {tipo!r}")
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

    def _fallback(self, draft: EventDraft, error: BaseException) -> dict[str, Any]:
        log.warning("progress store unreachable (%s); writing %s instead", error, self.json_dir)
        return self._store_locally(draft)

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
    ) -> None:
        super().__init__(total_etapas, session_id, tipo, json_dir)
        self._sink: Sink | None = None
        if tipo == "redis":
            settings = _redis_settings(redis_url, prefix, history, ttl)
            self._sink = RedisSink(
                settings.redis_url or DEFAULT_REDIS_URL,
                settings.prefix,
                settings.history,
                settings.ttl,
                settings.redis_verify_tls,
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
        try:
            envelope = self._sink.send(draft)
        except SessionTerminal:
            self._refused(mensagem)
            return None
        except UNREACHABLE as error:
            return self._fallback(draft, error)
        return self._accepted(envelope)

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
    ) -> None:
        super().__init__(total_etapas, session_id, tipo, json_dir)
        self._sink: AsyncSink | None = None
        self._owned_engine: Engine | None = None
        if engine is not None:
            self._sink = EngineSink(engine)
        elif tipo == "redis":
            from .engines.redis import RedisEngine

            settings = _redis_settings(redis_url, prefix, history, ttl)
            self._owned_engine = RedisEngine(
                settings.redis_url or DEFAULT_REDIS_URL,
                prefix=settings.prefix,
                history=settings.history,
                ttl=settings.ttl,
                verify_tls=settings.redis_verify_tls,
            )
            self._sink = EngineSink(self._owned_engine)
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
        try:
            envelope = await self._sink.send(draft)
        except SessionTerminal:
            self._refused(mensagem)
            return None
        except UNREACHABLE as error:
            return self._fallback(draft, error)
        return self._accepted(envelope)

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
        if self._owned_engine is not None:
            await self._owned_engine.close()
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


def _redis_settings(redis_url: str | None, prefix: str | None, history: int | None, ttl: int | None) -> Settings:
    """The server's environment settings (README's table), with the tracker's own arguments taking precedence."""
    return Settings.from_env().with_overrides(redis_url=redis_url, prefix=prefix, history=history, ttl=ttl)


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
