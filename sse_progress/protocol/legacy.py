"""The older system's progress format: its unbraced Redis names, its JSON, and how each maps to an event.

The older quote bot's tracker ``SET``s ``rpa:progress:<sid>`` (TTL 24 h) and may ``PUBLISH`` the same JSON on
``rpa:session:<sid>``; its pages read ``{"etapa_atual", "total_etapas", "percentual", "status", "mensagem",
"dados_extra", "timestamp", …}``. ``draft_from_legacy`` reads that JSON into an ``EventDraft`` (the bridge);
``legacy_json`` writes a stored envelope back in it (the tracker's dual-write). The mapping is documented in
docs/migrating-from-polling.md ("Field mapping").
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from sse_progress.protocol.events import EventDraft, InvalidEvent, is_valid_session_id

# How the bridge sees the older system's writes: keyspace notifications of SETs, and how long the first SET of a
# session waits for its PUBLISH before the key is read.
NOTIFY_SETTING = "notify-keyspace-events"
SETTLE_SECONDS = 0.02

LEGACY_TTL_SECONDS = 86400  # the older tracker's key lifetime: 24 h
# The publisher id of every bridged update: the same in every bridge process, so the engine's per-publisher
# sequence check drops an update that another bridge, or this one before a restart, already stored.
LEGACY_PUBLISHER = "legacy-bridge"
# What sse-progress writes into the legacy JSON's "backend" field: the bridge skips its own dual-writes.
OWN_BACKEND = "sse-progress"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The older system's status words (lower-cased) → the service's statuses. Anything else is refused.
STATUS_MAP = {
    "pending": "pending",
    "pendente": "pending",
    "aguardando": "pending",
    "iniciando": "pending",
    "queued": "pending",
    "running": "running",
    "executando": "running",
    "processando": "running",
    "em_andamento": "running",
    "in_progress": "running",
    "started": "running",
    "success": "success",
    "sucesso": "success",
    "concluido": "success",
    "concluído": "success",
    "completed": "success",
    "done": "success",
    "error": "error",
    "erro": "error",
    "failed": "error",
    "falha": "error",
    "cancelled": "cancelled",
    "canceled": "cancelled",
    "cancelado": "cancelled",
}


class LegacyKeys:
    """The older system's names: no hash tags, so they never collide with the service's braced keys."""

    def __init__(self, prefix: str = "rpa") -> None:
        self.prefix = prefix

    def snapshot(self, session_id: str) -> str:
        return f"{self.prefix}:progress:{session_id}"

    def channel(self, session_id: str) -> str:
        return f"{self.prefix}:session:{session_id}"

    def channel_pattern(self) -> str:
        return f"{self.prefix}:session:*"

    def snapshot_pattern(self) -> str:
        return f"{self.prefix}:progress:*"


class OwnUpdate(Exception):
    """A legacy write made by sse-progress itself (a tracker with ``legacy_keys=True``): already stored."""


def session_from_name(name: str, name_prefix: str) -> str | None:
    """The session id in a legacy channel or key name; None for another name or a braced (the service's own)."""
    if not name.startswith(name_prefix):
        return None
    rest = name[len(name_prefix) :]
    if rest.startswith("{"):
        return None
    return rest


def draft_from_legacy(session_id: str, raw: bytes | str, default_total: int) -> EventDraft:
    """One legacy update as an event draft; raises ``InvalidEvent`` naming the field, or ``OwnUpdate``.

    The draft's (publisher, sequence) is (``LEGACY_PUBLISHER``, the update's timestamp in microseconds): the
    same update read twice — from the channel and from the key, or by two bridges — is stored once, and an
    update older than one already stored is dropped rather than moving the bar backwards.
    """
    if not is_valid_session_id(session_id):
        raise InvalidEvent("session_id", "the name's session id must match ^[A-Za-z0-9_-]{1,64}$")
    try:
        update = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidEvent("json", "not JSON") from None
    if not isinstance(update, dict):
        raise InvalidEvent("json", "not a JSON object")
    if update.get("backend") == OWN_BACKEND:
        raise OwnUpdate(session_id)
    kind = update.get("type", "progress_update")
    if kind != "progress_update":
        raise InvalidEvent("type", f"{kind!r} is not a progress update")
    named = update.get("session_id", session_id)
    if named != session_id:
        raise InvalidEvent("session_id", f"{named!r} differs from the session in the key or channel name")
    timestamp = _timestamp(update.get("timestamp"))
    mensagem = update.get("mensagem")
    return EventDraft(
        session_id=session_id,
        etapa_atual=_integer(update.get("etapa_atual"), "etapa_atual"),
        total_etapas=_integer(update.get("total_etapas", default_total), "total_etapas"),
        status=_status(update.get("status", "running")),
        mensagem="" if mensagem is None else mensagem,
        dados_extra=update.get("dados_extra"),
        timestamp=timestamp.isoformat(),
        publisher=LEGACY_PUBLISHER,
        sequence=(timestamp - EPOCH) // timedelta(microseconds=1),
    )


def same_state(draft: EventDraft, envelope: dict[str, Any]) -> bool:
    """Whether a draft says what a stored envelope already says (the timestamp aside)."""
    return (
        envelope.get("etapa_atual") == draft.etapa_atual
        and envelope.get("total_etapas") == draft.total_etapas
        and envelope.get("status") == draft.status
        and envelope.get("mensagem") == draft.mensagem
        and envelope.get("dados_extra") == draft.dados_extra
    )


def legacy_json(envelope: bytes) -> bytes:
    """A stored envelope in the older system's shape, marked as written by sse-progress (the bridge skips it)."""
    event = orjson.loads(envelope)
    return orjson.dumps(
        {
            "type": "progress_update",
            "session_id": event["session_id"],
            "etapa_atual": event["etapa_atual"],
            "total_etapas": event["total_etapas"],
            "percentual": event["percentual"],
            "status": event["status"],
            "mensagem": event["mensagem"],
            "dados_extra": event["dados_extra"],
            "timestamp": event["timestamp"],
            "backend": OWN_BACKEND,
            "id": event["id"],
        }
    )


def _integer(value: object, field: str) -> int:
    # PHP and hand-written JSON often carry numbers as strings ("3") or floats (3.0).
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise InvalidEvent(field, "must be a whole number")


def _status(value: object) -> str:
    status = STATUS_MAP.get(value.strip().lower()) if isinstance(value, str) else None
    if status is None:
        raise InvalidEvent("status", f"{value!r} is not a known status ({', '.join(sorted(set(STATUS_MAP)))})")
    return status


def _timestamp(value: object) -> datetime:
    # The timestamp is the update's identity (its sequence number): without one, repeats cannot be told apart.
    if not isinstance(value, str):
        raise InvalidEvent("timestamp", "required: an ISO 8601 date-time (it identifies the update)")
    try:
        moment = datetime.fromisoformat(value)
        # The older tracker wrote datetime.now().isoformat(): local time without an offset.
        moment = moment.astimezone() if moment.utcoffset() is None else moment
    except (ValueError, OverflowError):
        raise InvalidEvent("timestamp", "must be an ISO 8601 date-time") from None
    if moment < EPOCH:
        raise InvalidEvent("timestamp", "must not be before 1970")
    return moment
