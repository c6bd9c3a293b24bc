"""Logging setup: plain text or one JSON object per line; tokens never reach a log."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

TOKEN_IN_QUERY = re.compile(r"(token=)[^&\s\"]+")
connections_log = logging.getLogger("sse_progress.connections")


def redact(text: str) -> str:
    return TOKEN_IN_QUERY.sub(r"\1[redacted]", text)


class RedactTokens(logging.Filter):
    """Access logs print request paths, and browsers must put tokens in the query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        record.msg = redact(str(record.msg))
        return True


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
        return json.dumps(entry, ensure_ascii=False)


def log_config(log_format: str, level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the server and uvicorn, given to uvicorn as ``log_config``."""
    formatter = (
        {"()": "sse_progress.logs.JsonFormatter"}
        if log_format == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    handler = {"class": "logging.StreamHandler", "formatter": "default", "filters": ["redact"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": "sse_progress.logs.RedactTokens"}},
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.access": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"handlers": ["default"], "level": level, "propagate": False},
            "sse_progress": {"handlers": ["default"], "level": level, "propagate": False},
        },
    }
