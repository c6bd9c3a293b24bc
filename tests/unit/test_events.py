"""The envelope: validation, percentual, ETA, ids, and SSE frame encoding."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sse_progress.protocol.events import (
    EventDraft,
    InvalidEvent,
    eta_seconds,
    finish_envelope,
    is_valid_session_id,
    parse_event_id,
    percentual,
    with_id,
)
from sse_progress.protocol.frames import Frame


def test_percentual_rounds_clamps_and_is_100_on_success() -> None:
    assert percentual(3, 15, "running") == 20.0
    assert percentual(1, 3, "running") == 33.3
    assert percentual(20, 15, "running") == 100.0
    assert percentual(2, 15, "success") == 100.0


def test_eta_is_null_before_the_first_step_and_zero_when_terminal() -> None:
    assert eta_seconds(0, 15, "running", 10.0) is None
    assert eta_seconds(3, 15, "running", 0.0) is None  # a first event at step 3 says nothing of the pace
    assert eta_seconds(3, 15, "running", 12.0) == 48.0
    assert eta_seconds(3, 15, "error", 12.0) == 0.0


def test_event_ids_compare_as_integer_pairs_not_strings() -> None:
    earlier, later = parse_event_id("999-5"), parse_event_id("1000-0")
    assert earlier is not None and later is not None
    assert earlier < later  # as strings "999-5" > "1000-0"
    assert parse_event_id("1732530000000-3") == (1732530000000, 3)
    assert parse_event_id("17") == (17, 0)
    for invalid in ("", "abc", "1-2-3", "-1", "1.5"):
        assert parse_event_id(invalid) is None


@pytest.mark.parametrize("session_id", ["abc123", "A_b-C", "x" * 64])
def test_valid_session_ids(session_id: str) -> None:
    assert is_valid_session_id(session_id)


@pytest.mark.parametrize("session_id", ["", "x" * 65, "a.b", "a b", "ç", "a/b", "a\n"])
def test_invalid_session_ids(session_id: str) -> None:
    assert not is_valid_session_id(session_id)


@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("etapa_atual", {"etapa_atual": -1}),
        ("etapa_atual", {"etapa_atual": True}),
        ("total_etapas", {"total_etapas": 0}),
        ("status", {"status": "done"}),
        ("mensagem", {"mensagem": 3}),
        ("dados_extra", {"dados_extra": [1, 2]}),
        ("dados_extra.itens[1].id", {"dados_extra": {"itens": [{}, {"id": 2**63}]}}),
        ("dados_extra.n", {"dados_extra": {"n": -(2**63) - 1}}),
    ],
)
def test_draft_validation_names_the_field(field: str, changes: dict[str, object]) -> None:
    fields: dict[str, object] = {"session_id": "s1", "etapa_atual": 1, "total_etapas": 15, **changes}
    with pytest.raises(InvalidEvent) as raised:
        EventDraft(**fields)  # type: ignore[arg-type]
    assert raised.value.field == field


def test_envelope_keeps_the_wire_field_names_in_order_and_unicode_unescaped() -> None:
    draft = EventDraft("s1", 3, 15, mensagem="Processando tela 3 — cotação", dados_extra={"a": 1})
    envelope = with_id(finish_envelope(draft.encode(), 41.5), "1732530000000-0")
    decoded = orjson.loads(envelope)
    assert list(decoded) == [
        "id", "type", "session_id", "etapa_atual", "total_etapas", "percentual", "status", "mensagem",
        "dados_extra", "timestamp", "eta_seconds",
    ]  # fmt: skip
    assert decoded["eta_seconds"] == 41.5 and decoded["percentual"] == 20.0
    assert "cotação".encode() in envelope and b"\n" not in envelope


def _parse_sse(stream: bytes) -> list[dict[str, str]]:
    """A minimal parser following the WHATWG event-stream rules (lines split on CR, LF or CRLF)."""
    events, current = [], {}
    for line in stream.decode().replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line == "":
            if current:
                events.append(current)
            current = {}
            continue
        name, _, value = line.partition(":")
        current[name] = current.get(name, "") + value.removeprefix(" ")
    return events


@given(
    mensagem=st.lists(
        st.sampled_from(["\n", "\r", "data:", "id:", "event:", "retry:", ":", " ", "x", "é", "\x00"])
    ).map("".join),
    extra=st.dictionaries(st.text(max_size=5), st.text(max_size=20), max_size=3),
)
def test_no_message_content_can_add_or_alter_sse_fields(mensagem: str, extra: dict[str, str]) -> None:
    draft = EventDraft("s1", 1, 15, mensagem=mensagem, dados_extra=extra)
    envelope = with_id(finish_envelope(draft.encode(), None), "5-0")
    frame = Frame.from_envelope(envelope, "s1")
    events = _parse_sse(frame.sse)
    assert len(events) == 1
    assert set(events[0]) == {"id", "event", "data"}
    assert events[0]["id"] == "5-0" and events[0]["event"] == "progress_update"
    assert orjson.loads(events[0]["data"])["mensagem"] == mensagem


def test_a_frame_is_encoded_once_and_shared() -> None:
    draft = EventDraft("s1", 1, 15)
    frame = Frame.from_envelope(with_id(finish_envelope(draft.encode(), None), "5-0"), "s1")
    assert frame.sse is frame.sse
    assert frame.text is frame.text
