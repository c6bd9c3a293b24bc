"""Property tests of every validator of outside input: anything either passes or fails with the documented error.

The documented errors are ``InvalidEvent`` for an event's fields, ``None`` from ``parse_event_id``, ``False``
from ``is_valid_session_id``, and ``ApiError`` (401, or 400/422 for a publish body) for tokens and bodies. Valid
input round-trips: what is accepted comes out as it went in.
"""

from __future__ import annotations

import json
import math
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from itsdangerous import URLSafeSerializer
from starlette.requests import Request

from sse_progress.protocol.errors import ApiError
from sse_progress.protocol.events import (
    MAX_STEP,
    STATUSES,
    EventDraft,
    InvalidEvent,
    decode,
    format_event_id,
    is_valid_session_id,
    parse_event_id,
)
from sse_progress.protocol.tokens import ANY_SESSION, COOKIE_NAME, SALT, Role, TokenAuthority
from sse_progress.server.auth import token_from
from sse_progress.server.routes.publish import draft_from_body

MAX_ID_PART = 2**64 - 1
SESSION_ALPHABET = string.ascii_letters + string.digits + "_-"
SECRET = "property-secret"

session_ids = st.text(SESSION_ALPHABET, min_size=1, max_size=64)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)  # wider integers are refused (every reader would not hold them)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
)
lone_surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
aware_timestamps = st.builds(
    lambda moment, minutes: moment.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat(),
    st.datetimes(),
    st.integers(-23 * 60, 23 * 60),
)


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


# Anything a Python caller might pass as a field, including what JSON cannot carry.
any_value = (
    json_values
    | lone_surrogates
    | st.integers()
    | st.floats()
    | st.sets(st.integers(), max_size=2)
    | st.builds(object)
    | st.integers(1, 300).map(nested)
    | st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=2)
    | st.dictionaries(st.text(max_size=3), st.sets(st.integers()) | lone_surrogates, min_size=1, max_size=2)
)


id_parts = st.integers(0, 10**21) | st.sampled_from([MAX_ID_PART, MAX_ID_PART + 1])


@given(st.text() | id_parts.map(str) | st.builds("{}-{}".format, id_parts, id_parts))
def test_an_event_id_parses_to_a_storable_id_or_to_none(text: str) -> None:
    event_id = parse_event_id(text)
    if event_id is not None:
        assert all(0 <= part <= MAX_ID_PART for part in event_id)
        assert event_id != (MAX_ID_PART, MAX_ID_PART)  # Redis cannot read after it


@given(st.integers(0, MAX_ID_PART), st.integers(0, MAX_ID_PART))
def test_event_ids_round_trip(milliseconds: int, sequence: int) -> None:
    assume((milliseconds, sequence) != (MAX_ID_PART, MAX_ID_PART))
    assert parse_event_id(format_event_id((milliseconds, sequence))) == (milliseconds, sequence)
    assert parse_event_id(str(milliseconds)) == (milliseconds, 0)


@given(st.text() | session_ids | session_ids.map(lambda sid: sid + "\n"))
def test_a_session_id_is_valid_exactly_when_it_uses_the_documented_alphabet(text: str) -> None:
    documented = 1 <= len(text) <= 64 and all(char in SESSION_ALPHABET for char in text)
    assert is_valid_session_id(text) is documented


valid_fields = st.fixed_dictionaries(
    {
        "session_id": session_ids,
        "etapa_atual": st.integers(0, MAX_STEP),
        "total_etapas": st.integers(1, MAX_STEP),
        "status": st.sampled_from(STATUSES),
        "mensagem": st.text(),
        "dados_extra": st.none() | st.dictionaries(st.text(), json_values, max_size=4),
        "timestamp": aware_timestamps,
    }
)
deep_objects = st.integers(1, 300).map(nested)
naive_timestamps = st.datetimes().map(datetime.isoformat)
ODD_FIELD_VALUES = {
    "session_id": st.text() | any_value,
    "etapa_atual": st.integers() | any_value,
    "total_etapas": st.integers() | any_value,
    "status": st.text() | any_value,
    "mensagem": st.builds(str.__add__, st.text(), lone_surrogates) | any_value,
    "dados_extra": deep_objects | any_value,
    "timestamp": naive_timestamps | st.text() | aware_timestamps | any_value,
}


@given(valid_fields)
def test_valid_event_fields_round_trip_through_the_envelope(fields: dict[str, Any]) -> None:
    envelope = decode(EventDraft(**fields).encode())
    assert {key: envelope[key] for key in fields} == fields
    assert 0.0 <= envelope["percentual"] <= 100.0


@pytest.mark.parametrize("field", list(ODD_FIELD_VALUES))
@given(data=st.data())
def test_an_odd_event_field_makes_an_encodable_draft_or_raises_invalid_event_naming_it(
    field: str, data: st.DataObject
) -> None:
    fields = data.draw(valid_fields)
    fields[field] = data.draw(ODD_FIELD_VALUES[field], label=field)
    try:
        draft = EventDraft(**fields)
    except InvalidEvent as error:
        # The field itself, or a path inside it (dados_extra["k"][0] for an integer past 64 bits).
        assert error.field == field or error.field.startswith((f"{field}.", f"{field}["))
        return
    envelope = decode(draft.encode())
    if fields[field] or field != "timestamp":  # no timestamp means now
        assert envelope[field] == fields[field]
    assert isinstance(draft.timestamp_ms, int)
    assert datetime.fromisoformat(draft.timestamp).utcoffset() is not None


def json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()  # not orjson: it refuses the deep nesting sent here


valid_bodies = valid_fields.map(lambda fields: {key: value for key, value in fields.items() if key != "session_id"})
ODD_BODY_VALUES = {
    "etapa_atual": json_values,
    "total_etapas": json_values,
    "mensagem": json_values,
    "status": json_values,
    "dados_extra": json_values | deep_objects | st.dictionaries(st.text(max_size=3), st.integers(), min_size=1),
    "timestamp": json_values | naive_timestamps | aware_timestamps,
    "publisher": json_values | st.fixed_dictionaries({"id": st.text(), "sequence": st.integers()}),
    "an unknown field": json_values,
}


@given(valid_bodies)
def test_valid_publish_bodies_round_trip(body: dict[str, Any]) -> None:
    draft = draft_from_body("s1", orjson.dumps(body))
    assert {key: getattr(draft, key) for key in body} == body


@given(st.binary() | json_values.map(json_bytes) | st.dictionaries(st.text(max_size=12), json_values).map(json_bytes))
def test_any_publish_body_is_a_draft_or_a_400_or_422(body: bytes) -> None:
    try:
        draft = draft_from_body("s1", body)
    except ApiError as error:
        assert error.status in (400, 422), error.message
        return
    assert draft.encode()


@pytest.mark.parametrize("field", list(ODD_BODY_VALUES))
@given(data=st.data())
def test_an_odd_body_field_is_stored_as_sent_or_refused_with_a_422_naming_it(field: str, data: st.DataObject) -> None:
    body = data.draw(valid_bodies)
    body[field] = data.draw(ODD_BODY_VALUES[field], label=field)
    try:
        draft = draft_from_body("s1", json_bytes(body))
    except ApiError as error:
        assert error.status == 422 and error.message.startswith(field.split()[0]), error.message
        return
    envelope = decode(draft.encode())
    if field in envelope and field != "timestamp":
        assert envelope[field] == body[field]


@given(st.text() | st.binary().map(lambda raw: raw.decode("latin-1")))
def test_any_text_is_refused_as_a_token_with_401(text: str) -> None:
    authority = TokenAuthority((SECRET,))
    for attempt in (lambda: authority.verify(text), lambda: authority.check(text, "s1", Role.SUBSCRIBE)):
        with pytest.raises(ApiError) as refused:
            attempt()
        assert refused.value.status == 401


ODD_CLAIMS = {
    "s": json_values,
    "r": json_values | st.text(),
    "e": json_values | st.floats() | st.sampled_from([math.inf, -math.inf, math.nan, 10**400]),
}


@pytest.mark.parametrize("claim", list(ODD_CLAIMS))
@given(data=st.data())
def test_a_signed_token_with_an_odd_claim_is_valid_or_401(claim: str, data: st.DataObject) -> None:
    # A payload only the secret's holder could sign: an old token format, or a bug in issuing.
    payload: Any = {"s": "s1", "r": Role.SUBSCRIBE.value, "e": 2**40}
    payload[claim] = data.draw(ODD_CLAIMS[claim], label=claim)
    if data.draw(st.booleans(), label="payload is not an object"):
        payload = data.draw(json_values, label="payload")
    token = URLSafeSerializer(SECRET, salt=SALT, serializer=json).dumps(payload)
    try:
        claims = TokenAuthority((SECRET,)).verify(token)
    except ApiError as refused:
        assert refused.status == 401
        return
    assert claims.role in Role and isinstance(claims.expires, int)


@given(session=session_ids | st.just(ANY_SESSION), role=st.sampled_from(list(Role)), ttl=st.integers(1, 10**6))
def test_issued_tokens_round_trip(session: str, role: Role, ttl: int) -> None:
    authority = TokenAuthority((SECRET, "older-secret"))
    claims = authority.verify(authority.issue(session, role, ttl))
    assert (claims.session, claims.role) == (session, role)
    assert claims.expires >= datetime.now(UTC).timestamp()


def request_with(query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "query_string": query, "headers": headers or []})


header_values = st.binary(max_size=40).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b""))


@given(query=st.binary(max_size=60), authorization=header_values, cookie=header_values)
def test_token_lookup_never_fails_on_any_query_header_or_cookie(
    query: bytes, authorization: bytes, cookie: bytes
) -> None:
    token = token_from(request_with(query, [(b"authorization", authorization), (b"cookie", cookie)]))
    assert token is None or (isinstance(token, str) and token != "")


@given(session=session_ids, carrier=st.sampled_from(["query", "bearer", "cookie"]))
def test_a_token_is_found_in_each_carrier(session: str, carrier: str) -> None:
    token = TokenAuthority((SECRET,)).issue(session)
    if carrier == "query":
        request = request_with(urlencode({"token": token}).encode())
    elif carrier == "bearer":
        request = request_with(headers=[(b"authorization", f"Bearer {token}".encode())])
    else:
        request = request_with(headers=[(b"cookie", f"{COOKIE_NAME}={token}".encode())])
    assert token_from(request) == token
