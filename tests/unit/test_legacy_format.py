"""The older system's JSON ↔ events: the field mapping the bridge applies and the shape of the dual-write."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import orjson
import pytest

from sse_progress.protocol.events import InvalidEvent
from sse_progress.protocol.legacy import LEGACY_PUBLISHER, OwnUpdate, draft_from_legacy, legacy_json, session_from_name


def update(**fields: object) -> bytes:
    return json.dumps({"etapa_atual": 3, "timestamp": "2026-11-29T10:00:00.123456+00:00", **fields}).encode()


def test_percentual_is_recomputed_and_total_defaults_to_the_bots() -> None:
    draft = draft_from_legacy("abc", update(percentual=60), 15)
    envelope = orjson.loads(draft.encode())
    assert (envelope["total_etapas"], envelope["percentual"]) == (15, 20.0)


@pytest.mark.parametrize(
    ("old", "new"),
    [("executando", "running"), ("CONCLUIDO", "success"), ("erro", "error"), ("cancelado", "cancelled"),
     ("iniciando", "pending"), ("completed", "success"), ("failed", "error")],
)  # fmt: skip
def test_the_older_status_words_are_mapped(old: str, new: str) -> None:
    assert draft_from_legacy("abc", update(status=old), 15).status == new


def test_numbers_as_text_and_a_missing_message_are_accepted() -> None:
    draft = draft_from_legacy("abc", update(etapa_atual="4", total_etapas=10.0, mensagem=None), 15)
    assert (draft.etapa_atual, draft.total_etapas, draft.mensagem) == (4, 10, "")


def test_the_same_update_gets_the_same_publisher_and_sequence() -> None:
    first, again = (draft_from_legacy("abc", update(), 15) for _ in range(2))
    later = draft_from_legacy("abc", update(timestamp="2026-11-29T10:00:00.123457+00:00"), 15)
    assert (first.publisher, first.sequence) == (again.publisher, again.sequence) == (LEGACY_PUBLISHER, first.sequence)
    assert later.sequence == first.sequence + 1


def test_a_timestamp_without_offset_is_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/Sao_Paulo")  # the bot's zone, three hours behind UTC
    time.tzset()
    try:
        draft = draft_from_legacy("abc", update(timestamp="2026-11-29T10:00:00"), 15)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert datetime.fromisoformat(draft.timestamp) == datetime(2026, 11, 29, 13, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "field"),
    [(b"nope", "json"), (b"[]", "json"), (update(status="x"), "status"), (update(timestamp=None), "timestamp"),
     (update(etapa_atual=True), "etapa_atual"), (update(session_id="other"), "session_id"),
     (update(type="pong"), "type"), (update(dados_extra=[1]), "dados_extra"), (update(total_etapas=0), "total_etapas")],
)  # fmt: skip
def test_malformed_updates_name_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(InvalidEvent) as refused:
        draft_from_legacy("abc", raw, 15)
    assert refused.value.field == field


def test_the_dual_write_shape_is_the_older_json_marked_as_ours() -> None:
    envelope = b'{"id":"1-0",' + draft_from_legacy("abc", update(mensagem="Tela 3"), 15).encode()[1:]
    old = orjson.loads(legacy_json(envelope))
    assert old["type"] == "progress_update" and old["percentual"] == 20.0 and old["mensagem"] == "Tela 3"
    with pytest.raises(OwnUpdate):
        draft_from_legacy("abc", legacy_json(envelope), 15)


def test_braced_names_are_the_services_own() -> None:
    assert session_from_name("rpa:session:abc", "rpa:session:") == "abc"
    assert session_from_name("rpa:session:{abc}", "rpa:session:") is None
