"""A Redis error as the sentence an operator reads in ``/readyz``, a log line or a command's one line."""

from __future__ import annotations

from sse_progress.engines.base import EngineUnavailable

TLS_VERIFY_HINT = (
    "the Redis server's certificate is not trusted; if it is self-signed (Heroku Redis, for one), "
    "set SSE_PROGRESS_REDIS_TLS_VERIFY=false"
)


def describe_store_error(error: BaseException) -> str:
    """``str(error)``, plus the setting that accepts a self-signed certificate when that is what failed."""
    text = str(error)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return f"{text} ({TLS_VERIFY_HINT})"
    return text


def unavailable_because(error: BaseException) -> EngineUnavailable:
    return EngineUnavailable(describe_store_error(error))
