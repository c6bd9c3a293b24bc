"""A tracker's outbox: the events a job reported while its store was unreachable, kept on disk in order.

Each tracker appends to its own file, ``<dir>/progress_<sid>.<publisher>.outbox.jsonl``: one JSON line per event
with the publisher id and sequence number it was reported with, fsync'd before the job goes on. The file is
created on the first failure and deleted once the store acknowledged every entry in it. Resending an entry
that was stored already (a crash between the store's answer and the deletion, a reply lost to a timeout) stores
nothing: the publish script drops a publisher sequence number it has seen.

A tracker holds an exclusive lock on its file while it lives. A new tracker for the same session adopts the
files whose lock is free — left by a job process that died — and sends their entries before its own, oldest
file first. Locks need ``fcntl`` (POSIX); where it is missing, leftovers wait for a tracker on a POSIX system.
"""

from __future__ import annotations

import glob
import logging
import os
import time
import weakref
from pathlib import Path
from typing import Any

import orjson

from sse_progress.protocol.events import EventDraft

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("sse_progress.outbox")

SUFFIX = ".outbox.jsonl"


def default_outbox_dir(json_dir: Path) -> Path:
    """``$SSE_PROGRESS_OUTBOX_DIR``, else next to the JSON snapshot file."""
    configured = os.environ.get("SSE_PROGRESS_OUTBOX_DIR")
    return Path(configured) if configured else json_dir


def outbox_path(directory: Path, session_id: str, publisher: str) -> Path:
    return directory / f"progress_{session_id}.{publisher}{SUFFIX}"


class _OutboxFile:
    """One locked outbox file and how many of its entries the store acknowledged (this process only)."""

    def __init__(self, path: Path, fd: int, entries: list[EventDraft]) -> None:
        self.path = path
        self.fd = fd
        self.entries = entries
        self.acknowledged = 0
        # A tracker that is never closed still releases its lock when it is collected.
        self._release = weakref.finalize(self, os.close, fd)

    @property
    def pending(self) -> list[EventDraft]:
        return self.entries[self.acknowledged :]

    @property
    def unacknowledged(self) -> int:
        return len(self.entries) - self.acknowledged

    def append(self, draft: EventDraft) -> None:
        size = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            line = _encode(draft)
            if os.write(self.fd, line) != len(line):
                raise OSError(f"short write to {self.path}")
            os.fsync(self.fd)
        except OSError:
            os.ftruncate(self.fd, size)  # no torn line in front of the next append
            raise
        self.entries.append(draft)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        self._release()  # closing the descriptor releases the lock; a second call does nothing


class Outbox:
    """The unsent events of one tracker, plus those it adopted from dead trackers of the same session."""

    def __init__(self, directory: Path, session_id: str, publisher: str) -> None:
        self.directory = directory
        self.path = outbox_path(directory, session_id, publisher)
        self._own: _OutboxFile | None = None
        self._adopted = _adopt_leftovers(directory, session_id, self.path)

    def __len__(self) -> int:
        return sum(file.unacknowledged for file in self._files())

    def pending(self) -> list[EventDraft]:
        """The unacknowledged events, oldest first."""
        return [draft for file in self._files() for draft in file.pending]

    def append(self, draft: EventDraft) -> None:
        """Store ``draft`` durably after every pending event; returns once it is on disk."""
        if self._own is None:
            self._own = _create(self.path)
        self._own.append(draft)

    def acknowledge(self) -> None:
        """The oldest pending event is stored (or can never be): drop it; delete a file once all of it is done."""
        file = next(file for file in self._files() if file.unacknowledged)
        file.acknowledged += 1
        if file.unacknowledged:
            return
        file.remove()
        if file is self._own:
            self._own = None
        else:
            self._adopted.remove(file)

    def close(self) -> None:
        """Release the files; pending entries stay on disk for the next tracker of this session."""
        for file in self._files():
            file.close()
        self._adopted.clear()
        self._own = None

    def _files(self) -> list[_OutboxFile]:
        return [*self._adopted, *([self._own] if self._own is not None else [])]


def _create(path: Path) -> _OutboxFile:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    if not _lock(fd):
        os.close(fd)
        raise OSError(f"outbox {path} is locked by another process")
    _fsync_directory(path.parent)  # the new name survives a power loss too
    return _OutboxFile(path, fd, _read(path))


def _adopt_leftovers(directory: Path, session_id: str, own: Path) -> list[_OutboxFile]:
    pattern = str(directory / f"{glob.escape(f'progress_{session_id}')}.*{SUFFIX}")
    adopted: list[_OutboxFile] = []
    for name in glob.glob(pattern):
        path = Path(name)
        if path != own and (file := _claim(path)) is not None:
            adopted.append(file)
    adopted.sort(key=lambda file: file.entries[0].timestamp_ms if file.entries else 0)
    if adopted:
        log.warning(
            "session %s: %d unsent events left by an earlier tracker; sending them first",
            session_id,
            sum(len(file.entries) for file in adopted),
        )
    return adopted


def _claim(path: Path) -> _OutboxFile | None:
    """Lock a leftover file, or None if a live tracker holds it (or it vanished meanwhile)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # gone meanwhile, or not ours to read
        return None
    try:
        # The lock must be on the file that still has this name: its owner may have deleted it meanwhile.
        if _lock(fd) and os.fstat(fd).st_ino == os.stat(path).st_ino:
            return _OutboxFile(path, fd, _read(path))
    except OSError as error:
        log.warning("outbox %s cannot be read: %s", path, error)
    os.close(fd)
    return None


def _lock(fd: int) -> bool:
    if fcntl is None:  # pragma: no cover - Windows
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read(path: Path) -> list[EventDraft]:
    drafts: list[EventDraft] = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        try:
            drafts.append(_decode(line))
        except (ValueError, TypeError, KeyError) as error:
            # Only the last line can be torn (a crash in the middle of an append): nothing was lost with it
            # that the job had been told was safe.
            log.warning("outbox %s line %d is unreadable, skipped: %s", path, number, error)
    return drafts


def _encode(draft: EventDraft) -> bytes:
    return (
        orjson.dumps(
            {
                "publisher": draft.publisher,
                "sequence": draft.sequence,
                "session_id": draft.session_id,
                **draft.reported(),
            }
        )
        + b"\n"
    )


def _decode(line: bytes) -> EventDraft:
    fields: dict[str, Any] = orjson.loads(line)
    return EventDraft(**fields)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms that cannot open a directory
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RetrySchedule:
    """When to try the store again after a failure: ``first`` seconds, doubling up to ``longest``.

    While the store is down, events go straight to the outbox without waiting for a connection timeout.
    """

    def __init__(self, first: float = 0.5, longest: float = 10.0) -> None:
        self.first = first
        self.longest = longest
        self._delay = 0.0
        self._next_attempt = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self._next_attempt

    def failed(self) -> None:
        self._delay = min(self.longest, self._delay * 2 if self._delay else self.first)
        self._next_attempt = time.monotonic() + self._delay

    def succeeded(self) -> None:
        self._delay = 0.0
        self._next_attempt = 0.0
