"""Logging setup: plain text or one JSON object per line; tokens never reach a log."""

from __future__ import annotations

import json
import logging
import re
from typing import Any
from urllib.parse import unquote_plus

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "[redacted]"
# A query parameter as it appears in a logged path; its name is compared once percent-decoded, as the server
# reads it (``?%74oken=`` is ``?token=``).
# Both patterns start only where a run starts (the lookbehind) and never give back what a run took (possessive
# quantifiers): tried at every offset of a long run, as a plain pattern would be, a 60 KB path took 24 s of the
# event loop to log.
QUERY_PARAMETER = re.compile(r"(?<![^?&;\s\"=])(?P<name>[^?&;\s\"=]++)=(?P<value>[^&;\s\"]*+)")
# A signed token (base64url payload "." base64url signature) wherever it appears, whatever carried it.
TOKEN_SHAPED = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{20,}+\.[A-Za-z0-9_-]{20,}+")
# Every C0 and C1 control character and the Unicode line breaks: none may start a new line in a text log.
CONTROL_CHARACTERS = {
    code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    for code in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
} | {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
JSON_LINE_BREAKS = {code: f"\\u{code:04x}" for code in (0x85, 0x2028, 0x2029)}
connections_log = logging.getLogger("sse_progress.connections")


def redact(text: str) -> str:
    """``text`` without tokens: the value of any parameter named ``token`` (once decoded), and anything shaped
    like one."""
    return TOKEN_SHAPED.sub(REDACTED, QUERY_PARAMETER.sub(_redact_token_parameter, text))


def _redact_token_parameter(parameter: re.Match[str]) -> str:
    if unquote_plus(parameter["name"]).strip().lower() != "token":
        return parameter[0]
    return f"{parameter['name']}={REDACTED}"


def escape_control_characters(text: str) -> str:
    """A request can carry CR, LF and other control characters (``%0A`` in a query): escaped, they cannot forge
    a log line."""
    return text.translate(CONTROL_CHARACTERS)


class RedactTokens(logging.Filter):
    """Access logs print request paths, and browsers must put tokens in the query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        record.msg = redact(str(record.msg))
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = {key: redact(v) if isinstance(v, str) else v for key, v in fields.items()}
        return True


class TextFormatter(logging.Formatter):
    """One record, one line: control characters in the message (values taken from requests) are escaped.

    A traceback, added after the message, keeps its lines.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_control_characters(record.message)
        return super().formatMessage(record)


def log_connection_opened(session_id: str, transport: str, resume: str | None) -> None:
    """The line every stream logs when it starts, with where it resumes from (``null``: the snapshot)."""
    if not connections_log.isEnabledFor(logging.INFO):  # skip building the record in a connect storm
        return
    connections_log.info(
        "opened %s stream of session %s, resuming after %s",
        transport,
        session_id,
        resume or "nothing (snapshot)",
        extra={"fields": {"session_id": session_id, "transport": transport, "resume": resume}},
    )


def log_connection_closed(session_id: str, transport: str, duration: float, events_sent: int, reason: str) -> None:
    """The one line every stream (SSE or WebSocket) logs when it ends; ``fields`` become JSON keys."""
    connections_log.info(
        "closed %s stream of session %s after %.1fs, %d events sent (%s)",
        transport,
        session_id,
        duration,
        events_sent,
        reason,
        extra={
            "fields": {
                "session_id": session_id,
                "transport": transport,
                "duration": round(duration, 3),
                "events_sent": events_sent,
                "reason": reason,
            }
        },
    )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        # JSON escapes C0 controls itself; these three are valid in its strings yet end a line for many readers.
        return json.dumps(entry, ensure_ascii=False).translate(JSON_LINE_BREAKS)


def log_config(log_format: str, level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the server and uvicorn, given to uvicorn as ``log_config``."""
    formatter = (
        {"()": "sse_progress.server.logs.JsonFormatter"}
        if log_format == "json"
        else {"()": "sse_progress.server.logs.TextFormatter", "fmt": TEXT_FORMAT}
    )
    handler = {"class": "logging.StreamHandler", "formatter": "default", "filters": ["redact"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": "sse_progress.server.logs.RedactTokens"}},
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.access": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"handlers": ["default"], "level": level, "propagate": False},
            "sse_progress": {"handlers": ["default"], "level": level, "propagate": False},
        },
    }
