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

Every rule lives once, in ``TrackerCore`` (``core.py``); the two trackers here only drive its steps, each method
those of the same name: ``ProgressTracker`` with calls, ``AsyncProgressTracker`` awaited.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from types import TracebackType
from typing import Any

from sse_progress.engines import Engine, MemoryEngine
from sse_progress.publisher.core import (
    APPEND,
    TIPOS,
    Envelope,
    Step,
    Steps,
    T,
    Tipo,
    TrackerCore,
    redis_store,
    required,
)
from sse_progress.publisher.outbox import RetrySchedule
from sse_progress.publisher.sinks import (
    AsyncHttpSink,
    AsyncRedisSink,
    AsyncSink,
    EngineSink,
    HttpSink,
    MemorySink,
    RedisSink,
    Sink,
)
from sse_progress.publisher.steps import drive, drive_async


class ProgressTracker(TrackerCore[Sink]):
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
        if tipo == "redis":
            self._sink = RedisSink(*redis_store(redis_url, prefix, history, ttl), legacy_keys=legacy_keys)
        elif tipo == "http":
            self._sink = HttpSink(required(base_url, "base_url"), required(token, "token"))
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
    ) -> Envelope | None:
        """Report step ``etapa`` of ``total_etapas``; returns the stored envelope (None once finished)."""
        return self._drive(self.update_progress_steps(etapa, mensagem, dados_extra, status))

    def update_progress_with_estimativas(
        self, etapa: int, mensagem: str = "", estimativas: Any = None
    ) -> Envelope | None:
        """Report step ``etapa`` with ``estimativas`` in ``dados_extra["estimativas_tela_5"]``."""
        return self._drive(self.update_progress_with_estimativas_steps(etapa, mensagem, estimativas))

    def complete(self, mensagem: str = "", dados_extra: dict[str, Any] | None = None) -> Envelope | None:
        """End the session with status ``success`` at step ``total_etapas``."""
        return self._drive(self.complete_steps(mensagem, dados_extra))

    def fail(self, mensagem: str = "", dados_extra: dict[str, Any] | None = None) -> Envelope | None:
        """End the session with status ``error`` at the current step."""
        return self._drive(self.fail_steps(mensagem, dados_extra))

    def cancel(self, mensagem: str = "", dados_extra: dict[str, Any] | None = None) -> Envelope | None:
        """End the session with status ``cancelled`` at the current step."""
        return self._drive(self.cancel_steps(mensagem, dados_extra))

    def flush(self) -> int:
        """Send the outbox now, oldest first; returns how many events still wait (the store is down again)."""
        return self._drive(self.flush_steps())

    def close(self) -> None:
        """Try the outbox a last time, then release it (what remains is sent by the next tracker)."""
        self._drive(self.close_steps())
        if self._sink is not None:
            self._sink.close()

    def __enter__(self) -> ProgressTracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._drive(self.exit_steps(exc))
        self.close()

    def _drive(self, steps: Steps[T]) -> T:
        return drive(steps, self._perform)

    def _perform(self, step: Step) -> bytes | None:
        action, draft = step
        if action == APPEND:
            self.append_to_outbox(draft)
            return None
        assert self._sink is not None
        return self._sink.send(draft)


class AsyncProgressTracker(TrackerCore[AsyncSink]):
    """The asynchronous twin of ``ProgressTracker`` (same methods, awaited; ``aclose()`` for ``close()``)."""

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
        if engine is not None:
            self._sink = EngineSink(engine)
        elif tipo == "redis":
            self._sink = AsyncRedisSink(*redis_store(redis_url, prefix, history, ttl))
        elif tipo == "http":
            self._sink = AsyncHttpSink(required(base_url, "base_url"), required(token, "token"))
        elif tipo == "memory":
            self._sink = EngineSink(self._local)

    async def update_progress(
        self, etapa: int, mensagem: str = "", dados_extra: dict[str, Any] | None = None, status: str = "running"
    ) -> Envelope | None:
        return await self._drive(self.update_progress_steps(etapa, mensagem, dados_extra, status))

    async def update_progress_with_estimativas(
        self, etapa: int, mensagem: str = "", estimativas: Any = None
    ) -> Envelope | None:
        return await self._drive(self.update_progress_with_estimativas_steps(etapa, mensagem, estimativas))

    async def complete(self, mensagem: str = "", dados_extra: dict[str, Any] | None = None) -> Envelope | None:
        return await self._drive(self.complete_steps(mensagem, dados_extra))

    async def fail(self, mensagem: str = "", dados_extra: dict[str, Any] | None = None) -> Envelope | None:
        return await self._drive(self.fail_steps(mensagem, dados_extra))

    async def cancel(self, mensagem: str = "", dados_extra: dict[str, Any] | None = None) -> Envelope | None:
        return await self._drive(self.cancel_steps(mensagem, dados_extra))

    async def flush(self) -> int:
        return await self._drive(self.flush_steps())

    async def aclose(self) -> None:
        await self._drive(self.close_steps())
        if self._sink is not None:
            await self._sink.aclose()

    async def __aenter__(self) -> AsyncProgressTracker:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._drive(self.exit_steps(exc))
        await self.aclose()

    async def _drive(self, steps: Steps[T]) -> T:
        return await drive_async(steps, self._perform)

    async def _perform(self, step: Step) -> bytes | None:
        action, draft = step
        if action == APPEND:  # the append ends with an fsync: off the event loop
            await asyncio.to_thread(self.append_to_outbox, draft)
            return None
        assert self._sink is not None
        return await self._sink.send(draft)


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
