"""Schemathesis against the live server (real Redis): every operation of /openapi.json, with valid tokens.

No input may get a 5xx, and every answer must match its documented status, content type, headers and schema;
every protected operation must refuse a missing or wrong token. Generated session ids are mixed with a running
and a finished session, and resume ids with ids at the edges of the Redis id range.

An SSE stream of a session that is still running never ends, so a request that would open one (no ``mode`` or
``mode=stream``) is sent to the finished session instead: its stream ends after the terminal event. Poll mode
and invalid requests go where they were generated.
"""

from __future__ import annotations

import zlib
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from sse_progress.config import Settings
from sse_progress.protocol.events import is_valid_session_id
from sse_progress.protocol.tokens import ANY_SESSION, COOKIE_NAME, Role, TokenAuthority
from sse_progress.server.app import create_app
from sse_progress.server.openapi import build_schema
from tests.support.processes import SECRET, LiveServer

EVENTS_PATH = "/sessions/{session_id}/events"
HISTORY_PATH = "/sessions/{session_id}/history"
# /ops/events keeps the default (refused): with a valid token it is an endless stream, tested in test_session_index.
ROLE_NEEDED = {
    ("POST", EVENTS_PATH): Role.PUBLISH,
    ("GET", "/stats"): Role.ADMIN,
    ("GET", "/sessions"): Role.OBSERVE,
    ("GET", "/ops/figures"): Role.OBSERVE,
}
CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    missing_required_header,
    unsupported_method,
    ignored_auth,
]
# JSON Schema cannot say all that these check, so a schema-valid request may rightly get a 422: JSON Schema counts
# 3.0 as an integer (the server wants 3), and a pattern cannot bound an event id to 64 bits.
REFUSES_SOME_SCHEMA_VALID_INPUT = {("POST", EVENTS_PATH), ("GET", HISTORY_PATH)}

RUNNING_SESSION = "fuzz-running"
FINISHED_SESSION = "fuzz-finished"

MAX_ID_PART = 2**64 - 1
id_parts = st.integers(0, 10**20) | st.sampled_from([MAX_ID_PART, MAX_ID_PART + 1])
edge_event_ids = id_parts.map(str) | st.builds("{}-{}".format, id_parts, id_parts)
EVENT_ID_QUERY = {EVENTS_PATH: "last_event_id", HISTORY_PATH: "after"}


def documented_schema() -> dict[str, Any]:
    """What ``GET /openapi.json`` serves; built in-process so that pytest can collect one test per operation."""
    return build_schema(create_app(Settings(secrets=("unused",))).routes)


api_schema = schemathesis.openapi.from_dict(documented_schema())


@api_schema.hook
def before_generate_path_parameters(context: schemathesis.HookContext, strategy: Any) -> Any:
    """Mix the prepared sessions into the generated ids, so requests also reach existing state."""
    if "{session_id}" not in context.operation.path:
        return strategy
    return strategy | st.sampled_from([{"session_id": RUNNING_SESSION}, {"session_id": FINISHED_SESSION}])


@api_schema.hook
def flatmap_query(context: schemathesis.HookContext, query: dict[str, Any] | None) -> Any:
    """Ids near the edges of the Redis id range, which a regex-generated id rarely reaches."""
    name = EVENT_ID_QUERY.get(context.operation.path)
    if name is None or context.operation.method.upper() != "GET":
        return st.just(query)
    return st.just(query) | edge_event_ids.map(lambda event_id: {**(query or {}), name: event_id})


@pytest.fixture(scope="module")
def prepared_sessions(server: LiveServer) -> None:
    """A session in progress and a finished one."""
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for session_id, last_status in ((RUNNING_SESSION, "running"), (FINISHED_SESSION, "success")):
            token = server.token(session_id, Role.PUBLISH)
            for etapa, status in ((1, "running"), (2, last_status)):
                response = http.post(
                    f"/sessions/{session_id}/events",
                    json={"etapa_atual": etapa, "total_etapas": 2, "status": status, "mensagem": "passo"},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert response.status_code in (201, 409), response.text


def test_the_server_serves_the_fuzzed_schema(server: LiveServer) -> None:
    response = httpx.get(server.url + "/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json() == documented_schema()
    schemathesis.openapi.from_dict(response.json()).validate()  # against the OpenAPI 3.1 meta-schema


def opens_endless_stream(case: schemathesis.Case) -> bool:
    if case.method != "GET" or case.path != EVENTS_PATH or (case.query or {}).get("mode", "stream") != "stream":
        return False
    session_id = (case.path_parameters or {}).get("session_id")
    return isinstance(session_id, str) and is_valid_session_id(session_id) and session_id != FINISHED_SESSION


def target_session(case: schemathesis.Case) -> str:
    """The session a case asks for once an endless stream is retargeted to the finished session."""
    if opens_endless_stream(case):
        return FINISHED_SESSION
    return str((case.path_parameters or {}).get("session_id", ANY_SESSION))


@api_schema.auth(refresh_interval=None)
class SessionTokens:
    """A valid token for every case: for its session, of the role its operation needs, in one of three carriers.

    Registered as schemathesis' auth, so its ``ignored_auth`` check also sends each operation without a token
    and with a wrong one, expecting 401 or 403.
    """

    authority = TokenAuthority((SECRET,))

    def get(self, case: schemathesis.Case, context: schemathesis.AuthContext) -> str | None:
        if not case.operation.definition.raw.get("security"):
            return None
        role = ROLE_NEEDED.get((case.method, case.path), Role.SUBSCRIBE)
        return self.authority.issue(target_session(case), role)

    def set(self, case: schemathesis.Case, token: str, context: schemathesis.AuthContext) -> None:
        session_id = target_session(case)
        if case.path_parameters and "session_id" in case.path_parameters:
            case.path_parameters["session_id"] = session_id
        carrier = zlib.crc32(session_id.encode(errors="replace")) % 3
        if carrier == 0:
            case.query = {**(case.query or {}), "token": token}
        elif carrier == 1:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
        else:
            case.cookies = {**(case.cookies or {}), COOKIE_NAME: token}


@api_schema.parametrize()
@settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_no_input_gets_a_server_error_or_an_undocumented_answer(
    case: schemathesis.Case, server: LiveServer, prepared_sessions: None
) -> None:
    if opens_endless_stream(case):  # a case without a token (401 at once); retargeted all the same
        case.path_parameters["session_id"] = FINISHED_SESSION
    checks = CHECKS
    if (case.method, case.path) in REFUSES_SOME_SCHEMA_VALID_INPUT:
        checks = [check for check in CHECKS if check is not positive_data_acceptance]
    case.call_and_validate(base_url=server.url, checks=checks, timeout=10)


BEYOND_REDIS_IDS = ["18446744073709551616", "1-18446744073709551616", "18446744073709551615-18446744073709551615"]


@pytest.mark.parametrize("resume", BEYOND_REDIS_IDS)
def test_a_resume_id_redis_cannot_hold_gets_a_reset_not_a_5xx(
    server: LiveServer, prepared_sessions: None, resume: str
) -> None:
    token = server.token(RUNNING_SESSION)
    poll = httpx.get(
        f"{server.url}/sessions/{RUNNING_SESSION}/events",
        params={"mode": "poll", "token": token},
        headers={"Last-Event-ID": resume},
    )
    assert poll.status_code == 200 and "event: reset" in poll.text
    history = httpx.get(f"{server.url}/sessions/{RUNNING_SESSION}/history", params={"after": resume, "token": token})
    assert history.status_code == 422 and history.json()["error"].startswith("after:")


def test_dados_extra_nested_past_the_limit_is_a_422_not_a_5xx(server: LiveServer, session_id: str) -> None:
    body = '{"etapa_atual": 1, "total_etapas": 2, "dados_extra": ' + '{"a": ' * 300 + "1" + "}" * 300 + "}"
    response = httpx.post(
        f"{server.url}/sessions/{session_id}/events",
        content=body,
        headers={"Authorization": f"Bearer {server.token(session_id, Role.PUBLISH)}"},
    )
    assert response.status_code == 422 and response.json()["error"].startswith("dados_extra:")
