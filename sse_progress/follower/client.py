"""Follow a session from Python: an async iterator of envelopes that survives dropped connections.

    from contextlib import aclosing

    from sse_progress.follower.client import FollowError, follow

    async with aclosing(follow("https://progress.example.com", session_id, token)) as events:
        async for envelope in events:
            print(envelope["type"], envelope["etapa_atual"], envelope["total_etapas"], envelope["mensagem"])

The follower speaks the SSE transport of ``docs/protocol.md``. Each envelope is the JSON object of one frame:
``type`` is ``progress_update`` for an event, ``snapshot`` for the latest state when the follow started with no
resume id, or ``reset`` when the server could not resume from the id the follower sent (the caller should then
replace its state with the envelope). Guarantees:

* envelopes come in id order and no id is yielded twice, across reconnects and server restarts: after a lost
  connection the follower reconnects with ``Last-Event-ID`` set to the id of the last envelope it yielded and
  drops anything not newer (ids are compared as ``(ms, seq)`` integer pairs);
* it reconnects after the server's ``retry:`` delay (else ``reconnect_delay``), doubling the delay on each
  consecutive failure up to ``max_reconnect_delay``; a ``Retry-After`` header (``503``, ``429``) is honoured;
* it ends after yielding the terminal envelope (``status`` ``success``, ``error`` or ``cancelled``), or at once
  when the server answers ``204`` (the session ended at or before the resume id, or it expired);
* a refusal that a retry cannot fix (``400``, ``401``, ``403``, any ``4xx`` but 408, 425 and 429) raises
  ``FollowError`` with the status and the server's ``error`` message, without retrying;
* a ``reset`` is yielded whatever its id: when the store went back in time (Redis restored from an older
  backup, or restarted empty with its clock behind) its id is older than the last one yielded, and the ids
  that follow continue from it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import quote

import httpx
from httpx_sse import EventSource, SSEError, aconnect_sse

from sse_progress.protocol.events import TERMINAL_STATUSES, EventId, parse_event_id

__all__ = ["FollowError", "FollowTimeout", "Reconnect", "follow"]

log = logging.getLogger("sse_progress.client")

Envelope = dict[str, Any]
T = TypeVar("T")

FRAME_KINDS: Final = frozenset({"progress_update", "snapshot", "reset"})
# Statuses worth retrying: the server (or a proxy in front of it) is starting, overloaded or restarting.
RETRYABLE_STATUSES: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
# A connection that stayed up this long was healthy, even if the session was quiet: the backoff starts over.
HEALTHY_SECONDS: Final = 10.0
MAX_RETRY_AFTER_SECONDS: Final = 300.0


class FollowError(Exception):
    """The server refused to stream the session and retrying will not help (bad token, bad session id, ...).

    ``status`` is the HTTP status (``401`` missing, invalid or expired token; ``403`` a token for another
    session or role; ``400`` an invalid session id); ``error`` is the server's explanation (the ``error``
    field of its JSON body) or, if the body is not the server's JSON, a short description.
    """

    def __init__(self, status: int, error: str) -> None:
        super().__init__(f"HTTP {status}: {error}")
        self.status = status
        self.error = error


class FollowTimeout(TimeoutError):
    """The ``timeout`` given to ``follow`` elapsed before the session ended."""


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Passed to ``on_reconnect`` before the follower waits ``delay`` seconds and connects again."""

    attempt: int
    """Consecutive failed attempts so far (1 for the first reconnect after a healthy connection)."""
    delay: float
    """Seconds the follower waits before connecting again."""
    reason: str
    """Why the previous connection ended, for humans: ``"stream ended"``, ``"ConnectError: ..."``, ``"HTTP 503"``."""
    last_event_id: str | None
    """The resume id the next connection sends as ``Last-Event-ID``."""


def _event_url(base_url: str, session_id: str) -> str:
    return f"{base_url.rstrip('/')}/sessions/{quote(session_id, safe='')}/events"


def _error_message(response: httpx.Response, body: bytes) -> str:
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, str):
        return error
    text = body.decode("utf-8", "replace").strip()
    return text[:200] if text else (response.reason_phrase or "no explanation given")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        seconds = float(value)
    except ValueError:
        return None  # absent, or an HTTP date: the backoff applies
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


class _Follower:
    """The state of one ``follow`` call: resume point, backoff, deadline."""

    def __init__(
        self,
        url: str,
        token: str | None,
        last_event_id: str | None,
        timeout: float | None,
        reconnect_delay: float,
        max_reconnect_delay: float,
        read_timeout: float,
        on_reconnect: Callable[[Reconnect], None] | None,
    ) -> None:
        if reconnect_delay < 0 or max_reconnect_delay < 0:
            raise ValueError("reconnect_delay and max_reconnect_delay must be >= 0")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be > 0 seconds, or None to wait for the end of the session")
        self.url = url
        self.token = token
        self.retry = reconnect_delay  # replaced by the server's `retry:`
        self.max_delay = max_reconnect_delay
        self.http_timeout = httpx.Timeout(10.0, read=read_timeout)
        self.on_reconnect = on_reconnect
        self.timeout = timeout
        self.deadline: float | None = None
        self.failures = 0
        # The resume id we send, and the floor below which (inclusive) nothing is yielded.
        self.resume: str | None = None
        self.floor: EventId | None = None
        if last_event_id is not None and last_event_id != "":
            if last_event_id == "earliest":
                self.resume, self.floor = "0", (0, 0)
            else:
                floor = parse_event_id(last_event_id)
                if floor is None:
                    raise ValueError(
                        f"last_event_id must be an event id such as 1732530000000-0, got {last_event_id!r}"
                    )
                self.resume, self.floor = last_event_id, floor

    # ------------------------------------------------------------------------------------------------ time

    def start_clock(self) -> None:
        if self.timeout is not None:
            self.deadline = asyncio.get_running_loop().time() + self.timeout

    def remaining(self) -> float | None:
        if self.deadline is None:
            return None
        remaining = self.deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise FollowTimeout(f"the session did not end within {self.timeout:g} s")
        return remaining

    async def bounded(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` in this task, raising ``FollowTimeout`` if the overall deadline passes first."""
        if self.deadline is None:
            return await awaitable
        try:
            async with asyncio.timeout_at(self.deadline) as scope:
                return await awaitable
        except TimeoutError:
            if scope.expired():
                raise FollowTimeout(f"the session did not end within {self.timeout:g} s") from None
            raise

    # --------------------------------------------------------------------------------------------- frames

    def accept(self, kind: str, event_id: EventId) -> bool:
        """Whether a frame is new. A ``reset`` replaces the state, so it is new even when its id goes back."""
        if self.floor is None or event_id > self.floor:
            return True
        return kind == "reset" and event_id != self.floor

    def advance(self, id_text: str, event_id: EventId) -> None:
        self.resume, self.floor = id_text, event_id

    def streaming(self) -> None:
        """The server accepted a stream. If we had no resume id, the next connection must not ask for a snapshot.

        Without a resume id the server sends the latest state, so a follower that lost its first connection
        before any event (the session had none yet) would skip the events published while it reconnected.
        From now on it asks for the whole history instead: ``0``, until it has an id of its own.
        """
        if self.resume is None:
            self.resume = "0"

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.resume is not None:
            headers["Last-Event-ID"] = self.resume
        return headers

    # -------------------------------------------------------------------------------------------- backoff

    async def pause(self, reason: str, healthy: bool, retry_after: float | None = None) -> None:
        """Wait before the next attempt: the server's ``retry:``, doubled per consecutive failure, capped."""
        self.failures = 1 if healthy else self.failures + 1
        delay = min(self.max_delay, self.retry * 2 ** (self.failures - 1))
        delay *= 1 + random.uniform(0, 0.1)  # spread the reconnects of many followers after a restart
        if retry_after is not None:
            delay = max(delay, retry_after)
        remaining = self.remaining()
        if remaining is not None and delay >= remaining:
            # Waiting would outlive the deadline: sleep until it and report the timeout.
            await asyncio.sleep(remaining)
            raise FollowTimeout(f"the session did not end within {self.timeout:g} s")
        log.info("connection to %s ended (%s); reconnecting in %.2f s", self.url, reason, delay)
        if self.on_reconnect is not None:
            self.on_reconnect(Reconnect(self.failures, delay, reason, self.resume))
        await asyncio.sleep(delay)


def follow(
    base_url: str,
    session_id: str,
    token: str | None,
    *,
    last_event_id: str | None = None,
    timeout: float | None = None,
    reconnect_delay: float = 1.0,
    max_reconnect_delay: float = 15.0,
    read_timeout: float = 60.0,
    client: httpx.AsyncClient | None = None,
    on_reconnect: Callable[[Reconnect], None] | None = None,
) -> AsyncGenerator[Envelope, None]:
    """Yield the envelopes of session ``session_id`` from the server at ``base_url`` until the session ends.

    :param base_url: the server's origin and path prefix, e.g. ``https://progress.example.com``.
    :param token: a ``subscribe`` (or ``publish``/``admin``) token, sent as ``Authorization: Bearer``; ``None``
        for a server started with ``--insecure``.
    :param last_event_id: where to start. ``None``: the latest state as a ``snapshot`` envelope, then live
        events. ``"0"`` or ``"earliest"``: the whole retained history, then live events. An event id: every
        event after it (nothing at all if the session ended at or before it).
    :param timeout: overall seconds to wait for the end of the session; then ``FollowTimeout`` is raised.
        ``None`` waits as long as it takes.
    :param reconnect_delay: seconds before reconnecting until the server sends its ``retry:`` value.
    :param max_reconnect_delay: cap of the exponential backoff between consecutive failed attempts.
    :param read_timeout: a connection silent for this long is considered dead and replaced (the server sends a
        heartbeat every ``SSE_PROGRESS_HEARTBEAT`` seconds, 15 by default).
    :param client: an ``httpx.AsyncClient`` to use (proxies, TLS settings, connection reuse); by default the
        follower opens and closes its own.
    :param on_reconnect: called with a ``Reconnect`` before each wait for a new connection (for status lines).
    :raises FollowError: the server refused the request with a status a retry cannot fix.
    :raises FollowTimeout: ``timeout`` elapsed first.
    :raises ValueError: (at once, not on iteration) ``last_event_id`` is not an event id, ``"0"`` or
        ``"earliest"``, or a delay or timeout is negative.

    Close the iterator (``contextlib.aclosing``) if you stop before the end, so that the connection is closed
    at once rather than when the iterator is garbage-collected.
    """
    state = _Follower(
        _event_url(base_url, session_id),
        token,
        last_event_id,
        timeout,
        reconnect_delay,
        max_reconnect_delay,
        read_timeout,
        on_reconnect,
    )
    return _run(state, client)


async def _run(state: _Follower, client: httpx.AsyncClient | None) -> AsyncGenerator[Envelope, None]:
    state.start_clock()
    async with AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(httpx.AsyncClient())
        while True:
            opened_at: float | None = None
            delivered = False
            retry_after: float | None = None
            try:
                async with AsyncExitStack() as connection:
                    source: EventSource = await state.bounded(
                        connection.enter_async_context(
                            aconnect_sse(client, "GET", state.url, headers=state.headers(), timeout=state.http_timeout)
                        )
                    )
                    response = source.response
                    if response.status_code == 204:
                        return  # the session ended at or before our resume id, or expired: nothing left to send
                    if response.status_code != 200:
                        body = await state.bounded(response.aread())
                        if response.status_code not in RETRYABLE_STATUSES:
                            raise FollowError(response.status_code, _error_message(response, body))
                        retry_after = _retry_after(response)
                        raise httpx.HTTPStatusError(
                            f"HTTP {response.status_code}", request=response.request, response=response
                        )
                    state.streaming()
                    opened_at = asyncio.get_running_loop().time()
                    events = source.aiter_sse()
                    connection.push_async_callback(events.aclose)
                    while True:
                        try:
                            sse = await state.bounded(anext(events))
                        except StopAsyncIteration:
                            break
                        if sse.retry is not None:
                            state.retry = sse.retry / 1000
                        if not sse.data or sse.event not in FRAME_KINDS:
                            continue  # the `retry:` line, a heartbeat, or a frame kind from a newer server
                        envelope = _decode(sse.data, sse.event, sse.id)
                        id_text = str(envelope["id"])
                        event_id = parse_event_id(id_text)
                        if event_id is None:
                            raise FollowError(200, f"the server sent a frame with an invalid id {id_text!r}")
                        if not state.accept(sse.event, event_id):
                            continue  # seen already: replayed after a reconnect
                        state.advance(id_text, event_id)
                        delivered = True
                        yield envelope
                        if envelope.get("status") in TERMINAL_STATUSES:
                            return
                reason = "stream ended"
            except (httpx.TransportError, httpx.HTTPStatusError, SSEError) as error:
                reason = _describe(error)
            lasted = 0.0 if opened_at is None else asyncio.get_running_loop().time() - opened_at
            healthy = delivered or lasted >= HEALTHY_SECONDS
            await state.pause(reason, healthy, retry_after)


def _decode(data: str, kind: str, id_text: str) -> Envelope:
    try:
        envelope = json.loads(data)
    except ValueError:
        raise FollowError(200, f"the server sent a {kind} frame that is not JSON: {data[:120]!r}") from None
    if not isinstance(envelope, dict):
        raise FollowError(200, f"the server sent a {kind} frame that is not a JSON object")
    envelope.setdefault("id", id_text)
    envelope.setdefault("type", kind)
    return envelope


def _describe(error: BaseException) -> str:
    if isinstance(error, httpx.HTTPStatusError):
        return f"HTTP {error.response.status_code}"
    detail = str(error)
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__
