"""The event envelope: validation, ids, and the one place where its JSON is built.

An envelope is encoded in two steps so that the engine can finish it atomically: the publisher encodes a
*draft* (everything but ``id`` and ``eta_seconds``), and the engine appends ``eta_seconds`` (it knows when
the session started) and splices ``id`` in front (it learns the id when storing the event).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

STATUSES = ("pending", "running", "success", "error", "cancelled")
TERMINAL_STATUSES = frozenset({"success", "error", "cancelled"})
SESSION_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
EVENT_ID_PATTERN = re.compile(r"(\d{1,20})(?:-(\d{1,20}))?")
# Both parts of a Redis stream id are unsigned 64-bit integers. The largest id is never an event's (ids come from
# the clock) and Redis cannot read "after" it, so it is not accepted either.
MAX_ID_PART = 2**64 - 1
MAX_STEP = 2**53 - 1  # the largest integer every JSON reader (JavaScript's too) holds exactly
MAX_DADOS_EXTRA_DEPTH = 64  # far below the JSON encoder's recursion limit, with room for the envelope around it
# The integers every JSON reader of the envelope holds as integers: a wider one becomes a float somewhere.
INT64_RANGE = range(-(2**63), 2**63)

EventId = tuple[int, int]
ZERO_ID: EventId = (0, 0)


class InvalidEvent(ValueError):
    """A field of an event is missing, of the wrong type or out of range."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def is_valid_session_id(session_id: str) -> bool:
    return SESSION_ID_PATTERN.fullmatch(session_id) is not None


def parse_event_id(text: str) -> EventId | None:
    """``"1732530000000-3"`` → ``(1732530000000, 3)``; ``"5"`` → ``(5, 0)``; anything else → None."""
    match = EVENT_ID_PATTERN.fullmatch(text)
    if match is None:
        return None
    event_id = int(match.group(1)), int(match.group(2) or 0)
    if max(event_id) > MAX_ID_PART or event_id == (MAX_ID_PART, MAX_ID_PART):
        return None
    return event_id


def format_event_id(event_id: EventId) -> str:
    return f"{event_id[0]}-{event_id[1]}"


def percentual(etapa_atual: int, total_etapas: int, status: str) -> float:
    if status == "success":
        return 100.0
    return min(100.0, max(0.0, round(100 * etapa_atual / total_etapas, 1)))


def eta_seconds(etapa_atual: int, total_etapas: int, status: str, elapsed: float) -> float | None:
    """Seconds left, extrapolated from the time the steps so far have taken."""
    if status in TERMINAL_STATUSES:
        return 0.0
    if etapa_atual < 1:
        return None
    return round(max(0.0, elapsed) / etapa_atual * max(0, total_etapas - etapa_atual), 1)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True, slots=True)
class EventDraft:
    """A validated event as a job reports it, before the engine gives it an id."""

    session_id: str
    etapa_atual: int
    total_etapas: int
    status: str = "running"
    mensagem: str = ""
    dados_extra: dict[str, Any] | None = None
    timestamp: str = ""
    # (publisher id, sequence number): lets the engine drop a retried publish it already stored.
    publisher: str = ""
    sequence: int = -1

    def __post_init__(self) -> None:
        validate_fields(
            self.session_id,
            self.etapa_atual,
            self.total_etapas,
            self.status,
            self.mensagem,
            self.dados_extra,
        )
        if not self.timestamp:
            object.__setattr__(self, "timestamp", now_iso())
        elif not _is_aware_iso_timestamp(self.timestamp):
            raise InvalidEvent("timestamp", "must be an ISO 8601 date-time with an offset")

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def timestamp_ms(self) -> int:
        return int(datetime.fromisoformat(self.timestamp).timestamp() * 1000)

    def reported(self) -> dict[str, Any]:
        """What the job reported: the fields a publisher sends, over HTTP or into its outbox."""
        return {
            "etapa_atual": self.etapa_atual,
            "total_etapas": self.total_etapas,
            "status": self.status,
            "mensagem": self.mensagem,
            "dados_extra": self.dados_extra,
            "timestamp": self.timestamp,
        }

    def encode(self) -> bytes:
        """The envelope JSON without ``id`` and ``eta_seconds`` (both are added by the engine)."""
        return orjson.dumps(
            {
                "type": "progress_update",
                "session_id": self.session_id,
                "etapa_atual": self.etapa_atual,
                "total_etapas": self.total_etapas,
                "percentual": percentual(self.etapa_atual, self.total_etapas, self.status),
                "status": self.status,
                "mensagem": self.mensagem,
                "dados_extra": self.dados_extra,
                "timestamp": self.timestamp,
            }
        )


def validate_fields(
    session_id: object,
    etapa_atual: object,
    total_etapas: object,
    status: object,
    mensagem: object,
    dados_extra: object,
) -> None:
    if not isinstance(session_id, str) or not is_valid_session_id(session_id):
        raise InvalidEvent("session_id", "must match ^[A-Za-z0-9_-]{1,64}$")
    if not _is_int(etapa_atual) or not 0 <= etapa_atual <= MAX_STEP:  # type: ignore[operator]
        raise InvalidEvent("etapa_atual", f"must be an integer from 0 to {MAX_STEP}")
    if not _is_int(total_etapas) or not 1 <= total_etapas <= MAX_STEP:  # type: ignore[operator]
        raise InvalidEvent("total_etapas", f"must be an integer from 1 to {MAX_STEP}")
    if status not in STATUSES:
        raise InvalidEvent("status", f"must be one of {', '.join(STATUSES)}")
    if not isinstance(mensagem, str):
        raise InvalidEvent("mensagem", "must be a string")
    if not mensagem.isascii():
        try:
            mensagem.encode()
        except UnicodeEncodeError:
            raise InvalidEvent("mensagem", "must be valid Unicode text: no lone surrogates") from None
    if dados_extra is not None and not isinstance(dados_extra, dict):
        raise InvalidEvent("dados_extra", "must be a JSON object or null")
    if dados_extra is not None:
        _validate_dados_extra(dados_extra)


def _validate_dados_extra(dados_extra: dict[str, Any]) -> None:
    # The encoder refuses what JSON cannot carry and nesting past its recursion limit; refusing both here makes
    # them a validation error instead of a failure when the event is stored or sent.
    if _nesting_depth(dados_extra) > MAX_DADOS_EXTRA_DEPTH:
        raise InvalidEvent("dados_extra", f"nested too deeply: at most {MAX_DADOS_EXTRA_DEPTH} levels")
    wide = first_wide_integer(dados_extra, "dados_extra")
    if wide is not None:
        raise InvalidEvent(wide, "integer outside the 64-bit range (-2^63 to 2^63-1): send it as a string")
    try:
        orjson.dumps(dados_extra)
    except orjson.JSONEncodeError:
        raise InvalidEvent("dados_extra", "must hold only JSON values, with string keys") from None


def first_wide_integer(value: object, path: str) -> str | None:
    """The path (``dados_extra.itens[2].id``) of the first integer in ``value`` outside INT64_RANGE, if any."""
    pending: list[tuple[object, str]] = [(value, path)]
    while pending:
        item, where = pending.pop()
        if isinstance(item, dict):
            pending.extend((child, _member_path(where, key)) for key, child in reversed(item.items()))
        elif isinstance(item, list | tuple):
            pending.extend((child, f"{where}[{index}]") for index, child in reversed(list(enumerate(item))))
        elif isinstance(item, int) and not isinstance(item, bool) and item not in INT64_RANGE:
            return where
    return None


def _member_path(path: str, key: object) -> str:
    """``dados_extra.itens``, or ``dados_extra["a key"]`` for a key that is not a plain name."""
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}"
    spelled = orjson.dumps(key).decode() if isinstance(key, str) else repr(key)
    return f"{path}[{spelled}]"


def _nesting_depth(value: object) -> int:
    deepest = 0
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DADOS_EXTRA_DEPTH:
            return deepest
        pending.extend((child, depth + 1) for child in children)
    return deepest


def _is_aware_iso_timestamp(timestamp: object) -> bool:
    if not isinstance(timestamp, str):
        return False
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return False
    return moment.utcoffset() is not None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def finish_envelope(draft_json: bytes, eta: float | None) -> bytes:
    """Append ``eta_seconds`` to a draft; the result is the stored form (no ``id``)."""
    return draft_json[:-1] + b',"eta_seconds":' + orjson.dumps(eta) + b"}"


def with_id(stored_json: bytes, event_id: str) -> bytes:
    """Splice ``"id"`` in as the first key of a stored envelope."""
    return b'{"id":"' + event_id.encode() + b'",' + stored_json[1:]


def decode(envelope_json: bytes | str) -> dict[str, Any]:
    value = orjson.loads(envelope_json)
    if not isinstance(value, dict):
        raise ValueError("an envelope must be a JSON object")
    return value
