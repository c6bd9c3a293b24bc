"""The OpenAPI document as built from the route docstrings: shorthands expanded, every reference resolvable."""

from __future__ import annotations

from typing import Any

from sse_progress.config import Settings
from sse_progress.server.app import create_app
from sse_progress.server.openapi import build_schema

REF_PREFIX = "#/components/"


def _schema() -> dict[str, Any]:
    return build_schema(create_app(Settings(secrets=("unused",))).routes)


def _resolve(schema: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    ref = response.get("$ref")
    if ref is None:
        return response
    assert ref.startswith(REF_PREFIX), ref
    kind, name = ref.removeprefix(REF_PREFIX).split("/")
    resolved: dict[str, Any] = schema["components"][kind][name]
    return resolved


def test_an_answer_written_as_its_description_alone_gets_the_error_body() -> None:
    schema = _schema()
    conflict = schema["paths"]["/sessions/{session_id}/events"]["post"]["responses"]["409"]
    assert conflict == {
        "description": "the session already ended; it accepts no more events",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    for operations in schema["paths"].values():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                assert isinstance(response, dict), (status, response)
                assert "description" in _resolve(schema, response), (status, response)


def test_an_answer_written_as_a_shared_answers_name_refers_to_it() -> None:
    schema = _schema()
    history = schema["paths"]["/sessions/{session_id}/history"]["get"]["responses"]
    assert history["404"] == {"$ref": "#/components/responses/NotFound"}
    assert history["422"]["description"] == "`after` is not an event id"


def test_every_answer_that_says_when_to_retry_documents_retry_after() -> None:
    schema = _schema()
    publish = schema["paths"]["/sessions/{session_id}/events"]["post"]["responses"]
    for status in ("429", "503", "507"):
        assert "Retry-After" in _resolve(schema, publish[status])["headers"], status
