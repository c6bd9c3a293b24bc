"""Frames: an event as one transport delivers it, encoded once and shared by every client.

The envelope JSON never contains a raw newline (JSON escapes control characters inside strings), so one
``data:`` line carries it and no field of an event can add or alter an SSE field.
"""

from __future__ import annotations

import random
from typing import Any, Literal

import orjson

from sse_progress.protocol.events import STATUSES, TERMINAL_STATUSES, EventId, decode, parse_event_id

FrameKind = Literal["progress_update", "snapshot", "reset"]


class ForeignEnvelope(ValueError):
    """Bytes on a session's key or channel that are not an envelope this service wrote; says why."""


def parse_envelope(envelope_json: bytes, session_id: str) -> tuple[dict[str, Any], str, EventId]:
    """The decoded envelope of ``session_id``, its id as written and as a pair. The one test of "is this our
    envelope": what the engine stores (see ``EventDraft.encode``), for this session, with a valid id.

    Anything less — a bare ``{"id": …}``, another session's event, a step that is not a number — would reach
    clients as an event they cannot show, or end their stream with a forged status."""
    try:
        envelope = decode(envelope_json)
    except ValueError as error:  # orjson's decode error is a ValueError too
        raise ForeignEnvelope(f"not a JSON object ({error})") from None
    id_text = envelope.get("id")
    if not isinstance(id_text, str):
        raise ForeignEnvelope("no event id (a JSON object without a string 'id')")
    event_id = parse_event_id(id_text)
    if event_id is None:
        raise ForeignEnvelope(f"invalid event id {id_text[:40]!r}")
    if envelope.get("type") != "progress_update":
        raise ForeignEnvelope("not a progress_update envelope ('type')")
    if envelope.get("session_id") != session_id:
        raise ForeignEnvelope("an envelope of another session ('session_id')")
    if envelope.get("status") not in STATUSES:
        raise ForeignEnvelope("no valid 'status'")
    for field in ("etapa_atual", "total_etapas"):
        value = envelope.get(field)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ForeignEnvelope(f"'{field}' is not an integer")
    return envelope, id_text, event_id


class Frame:
    """One event ready for the wire. Each encoding (``sse``, ``sse_chunk``, ``ws_message``, ``text``) is computed
    at most once per event, by the first client that needs it, and shared by all."""

    __slots__ = ("_sse", "_sse_chunk", "_text", "_ws_message", "data", "id", "id_text", "kind", "status")

    def __init__(self, event_id: EventId, id_text: str, kind: FrameKind, data: bytes, status: str) -> None:
        self.id = event_id
        self.id_text = id_text
        self.kind = kind
        self.data = data
        self.status = status
        self._sse: bytes | None = None
        self._sse_chunk: bytes | None = None
        self._ws_message: bytes | None = None
        self._text: str | None = None

    @classmethod
    def from_envelope(cls, envelope_json: bytes, session_id: str, kind: FrameKind = "progress_update") -> Frame:
        """A frame of a stored envelope (with ``id``); snapshot and reset frames carry their kind as ``type``.

        Raises ``ForeignEnvelope`` for anything this service did not write for ``session_id``."""
        envelope, id_text, event_id = parse_envelope(envelope_json, session_id)
        if kind != "progress_update":
            envelope["type"] = kind
            envelope_json = orjson.dumps(envelope)
        status = envelope.get("status", "")
        return cls(event_id, id_text, kind, envelope_json, status if isinstance(status, str) else "")

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def sse(self) -> bytes:
        if self._sse is None:
            self._sse = b"".join(
                (b"id: ", self.id_text.encode(), b"\nevent: ", self.kind.encode(), b"\ndata: ", self.data, b"\n\n")
            )
        return self._sse

    @property
    def sse_chunk(self) -> bytes:
        """``sse`` as one HTTP/1.1 chunk: the bytes a stream writes straight to its socket."""
        if self._sse_chunk is None:
            self._sse_chunk = http_chunk(self.sse)
        return self._sse_chunk

    @property
    def ws_message(self) -> bytes:
        """``data`` as one unmasked, uncompressed WebSocket text frame: the same bytes for every client."""
        if self._ws_message is None:
            self._ws_message = websocket_text_frame(self.data)
        return self._ws_message

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self.data.decode()
        return self._text

    def __repr__(self) -> str:
        return f"Frame({self.id_text}, {self.kind}, {self.status})"


def retry_line(milliseconds: int) -> bytes:
    return b"retry: %d\n\n" % milliseconds


SHUTDOWN_RETRY_MS = (250, 2000)


def shutdown_retry_line() -> bytes:
    """The last words of a stream ended by a shutdown: a random short delay spreads the reconnects, so the
    remaining instances are not hit by every client at once."""
    return retry_line(random.randint(*SHUTDOWN_RETRY_MS))


# A browser's EventSource gives up for good on any answer but 200 (or 204, which means "stop"): a transient
# problem is answered with an empty 200 stream that asks it to come back, at a random moment within a window so
# that the clients refused together do not return together.
STORE_UNAVAILABLE_RETRY_MS = (2000, 5000)
CONNECTION_LIMIT_RETRY_MS = (5000, 15000)


def try_again_body(problem: str, window_ms: tuple[int, int]) -> bytes:
    """An empty stream saying why (an SSE comment) and when to reconnect (a jittered ``retry:``)."""
    return b": %s; reconnect shortly\n%s" % (problem.encode(), retry_line(random.randint(*window_ms)))


HEARTBEAT = b": ping\n\n"


def http_chunk(data: bytes) -> bytes:
    """``data`` framed as one HTTP/1.1 chunk (RFC 9112 7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


HEARTBEAT_CHUNK = http_chunk(HEARTBEAT)


def websocket_text_frame(payload: bytes) -> bytes:
    """One final text frame from server to client (RFC 6455 5.2): unmasked, so the same for every client; RSV1
    clear, which permessage-deflate allows for a message sent uncompressed (RFC 7692 6.1)."""
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return header + payload
