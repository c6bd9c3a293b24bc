"""``sse-progress watch SESSION``: follow a session from a terminal, a script or a pipe.

    sse-progress watch abc123 --url https://progress.example.com --token "$TOKEN"
    sse-progress watch abc123 --json | jq -r .mensagem

A terminal gets a live progress bar (step, percentage, ETA, message); a pipe gets one plain line per event;
``--json`` prints each envelope as one JSON line. The follower (``sse_progress.follower.client.follow``) resumes after a
dropped connection or a server restart without repeating or losing an event.

Exit status: 0 success, 1 error, 2 cancelled (the session's terminal status), 3 ``--timeout`` elapsed first,
4 the server refused the token (401/403), 5 any other failure (an unusable setting, a server never reached:
``UNREACHED_ATTEMPTS`` connection attempts in a row, about 3 s, without any HTTP answer), 64 usage error (a
malformed session id, resume id or timeout included), 130 interrupted (Ctrl-C). Once the server has answered,
the watch reconnects for as long as it takes (a restart, a deploy), as ``follow`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TextIO
from urllib.parse import quote

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn

from sse_progress.config import ConfigError, Settings
from sse_progress.follower.client import FollowError, FollowTimeout, Reconnect, follow
from sse_progress.protocol.events import TERMINAL_STATUSES, is_valid_session_id
from sse_progress.protocol.tokens import Role, TokenAuthority

EXIT_SUCCESS = 0
EXIT_ERROR = 1
EXIT_CANCELLED = 2
EXIT_TIMEOUT = 3
EXIT_REFUSED = 4
EXIT_FAILURE = 5
EXIT_INTERRUPTED = 130
EXIT_CODES: dict[str, int] = {"success": EXIT_SUCCESS, "error": EXIT_ERROR, "cancelled": EXIT_CANCELLED}

PROG = "sse-progress watch"
# A wrong --url or a server not started yet should not look like a long wait: give up after about 3 s
# (1 s, then 2 s of backoff), enough for a server started just before the watch.
UNREACHED_ATTEMPTS = 3
# A minted token outlives the watch: the server checks it again on every reconnect.
MINTED_TOKEN_TTL = 86400
MINTED_TOKEN_MARGIN = 300


def default_url(env: Mapping[str, str] | None = None) -> str:
    """``$SSE_PROGRESS_URL``, else ``http://127.0.0.1:$PORT`` (``PORT`` defaulting to 8000)."""
    env = os.environ if env is None else env
    return env.get("SSE_PROGRESS_URL") or f"http://127.0.0.1:{env.get('PORT') or 8000}"


def resolve_token(
    explicit: str | None, session_id: str, timeout: float | None, env: Mapping[str, str] | None = None
) -> str | None:
    """``--token``, else ``$SSE_PROGRESS_TOKEN``, else a subscribe token minted with ``$SSE_PROGRESS_SECRET``.

    None when there is none of them (a server started with ``--insecure`` needs no token). Raises
    ``ConfigError`` when the environment holds an unusable setting.
    """
    env = os.environ if env is None else env
    token = explicit or env.get("SSE_PROGRESS_TOKEN")
    if token:
        return token
    settings = Settings.from_env(env)
    if not settings.secrets:
        return None
    ttl = MINTED_TOKEN_TTL if timeout is None else math.ceil(timeout) + MINTED_TOKEN_MARGIN
    return TokenAuthority(settings.secrets).issue(session_id, Role.SUBSCRIBE, ttl=ttl)


def format_eta(seconds: Any) -> str:
    """``41.5`` → ``0:42``; ``3725`` → ``1:02:05``; None (not known yet) → ``--:--``."""
    if not isinstance(seconds, int | float) or math.isnan(seconds) or seconds < 0:
        return "--:--"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _step(envelope: Mapping[str, Any]) -> tuple[int, int]:
    etapa, total = envelope.get("etapa_atual"), envelope.get("total_etapas")
    return (etapa if isinstance(etapa, int) else 0), (total if isinstance(total, int) and total > 0 else 1)


def _percent(envelope: Mapping[str, Any]) -> float:
    value = envelope.get("percentual")
    if isinstance(value, int | float):
        return float(value)
    etapa, total = _step(envelope)
    return round(100 * etapa / total, 1)


def describe(envelope: Mapping[str, Any]) -> str:
    """One line for a pipe or a log: ``[3/15]  20.0%  running  Tela 3 preenchida  ETA 0:42``."""
    etapa, total = _step(envelope)
    line = (
        f"[{etapa}/{total}] {_percent(envelope):5.1f}%  {envelope.get('status', '?')}  "
        f"{envelope.get('mensagem') or ''}  ETA {format_eta(envelope.get('eta_seconds'))}"
    )
    kind = envelope.get("type")
    return line if kind in (None, "progress_update") else f"{line}  ({kind})"


class Display(Protocol):
    def show(self, envelope: dict[str, Any]) -> None: ...

    def reconnecting(self, reconnect: Reconnect) -> None: ...

    def close(self, status: str | None) -> None: ...


class JsonLines:
    """``--json``: each envelope as one JSON line, non-ASCII characters as they are."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err

    def show(self, envelope: dict[str, Any]) -> None:
        self.out.write(json.dumps(envelope, ensure_ascii=False) + "\n")
        self.out.flush()

    def reconnecting(self, reconnect: Reconnect) -> None:
        _note(self.err, reconnect)

    def close(self, status: str | None) -> None:
        pass


class PlainLines(JsonLines):
    """Not a terminal: one plain line per event, no animation, no escape codes."""

    def show(self, envelope: dict[str, Any]) -> None:
        self.out.write(describe(envelope) + "\n")
        self.out.flush()


class ProgressBar:
    """A terminal: one live bar with the step, percentage, ETA and message; a closing line with the outcome."""

    def __init__(self, console: Console, session_id: str) -> None:
        self.console = console
        self.progress = Progress(
            SpinnerColumn(finished_text="•"),
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            TextColumn("{task.fields[step]}", markup=False),
            TextColumn("{task.fields[percent]}", markup=False),
            TextColumn("ETA {task.fields[eta]}", markup=False),
            TextColumn("{task.fields[mensagem]}", markup=False),
            TextColumn("[yellow]{task.fields[note]}"),
            console=console,
            transient=False,
        )
        self.task: TaskID = self.progress.add_task(
            session_id, total=None, step="", percent="", eta="--:--", mensagem="waiting for the first event…", note=""
        )
        self.last: dict[str, Any] | None = None
        self.progress.start()

    def show(self, envelope: dict[str, Any]) -> None:
        self.last = envelope
        etapa, total = _step(envelope)
        self.progress.update(
            self.task,
            total=total,
            completed=min(etapa, total),
            step=f"{etapa}/{total}",
            percent=f"{_percent(envelope):5.1f}%",
            eta=format_eta(envelope.get("eta_seconds")),
            mensagem=str(envelope.get("mensagem") or ""),
            note="",
        )

    def reconnecting(self, reconnect: Reconnect) -> None:
        self.progress.update(self.task, note=f"reconnecting in {reconnect.delay:.1f} s ({reconnect.reason})")

    def close(self, status: str | None) -> None:
        self.progress.update(self.task, note="")
        self.progress.stop()
        if status is None:
            return
        style = {"success": "green", "error": "red", "cancelled": "yellow"}.get(status, "")
        mensagem = str((self.last or {}).get("mensagem") or "")
        self.console.print(f"{status}: {mensagem}" if mensagem else status, style=style, markup=False, highlight=False)


def _note(err: TextIO, reconnect: Reconnect) -> None:
    err.write(f"{PROG}: connection lost ({reconnect.reason}); reconnecting in {reconnect.delay:.1f} s\n")
    err.flush()


class ServerUnreachable(Exception):
    """The server never answered: every connection attempt so far failed before any HTTP response."""


class Reachability:
    """Whether the server has answered anything yet (any HTTP response, even a 503), fed by an httpx hook."""

    def __init__(self, display: Display) -> None:
        self.display = display
        self.reached = False

    async def on_response(self, response: httpx.Response) -> None:
        self.reached = True

    def reconnecting(self, reconnect: Reconnect) -> None:
        """``follow``'s ``on_reconnect``: give up on a server never reached, else show the reconnect."""
        if not self.reached:
            if reconnect.attempt >= UNREACHED_ATTEMPTS:
                raise ServerUnreachable(reconnect.reason)
            return  # no "connection lost" for a connection that never was
        self.display.reconnecting(reconnect)


@dataclass(frozen=True)
class WatchOptions:
    """What to follow and how; ``run`` builds it from the command line."""

    session_id: str
    url: str
    token: str | None
    timeout: float | None = None
    json_lines: bool = False
    last_event_id: str | None = None


async def watch(
    options: WatchOptions, *, out: TextIO | None = None, err: TextIO | None = None, console: Console | None = None
) -> int:
    """Follow ``options.session_id`` until it ends, showing it on ``out``; returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    console = console or Console(file=out)
    display: Display
    if options.json_lines:
        display = JsonLines(out, err)
    elif console.is_terminal:
        display = ProgressBar(console, options.session_id)
    else:
        display = PlainLines(out, err)

    status: str | None = None
    last: dict[str, Any] | None = None
    reachability = Reachability(display)
    try:
        async with httpx.AsyncClient(event_hooks={"response": [reachability.on_response]}) as client:
            events = follow(
                options.url,
                options.session_id,
                options.token,
                last_event_id=options.last_event_id,
                timeout=options.timeout,
                client=client,
                on_reconnect=reachability.reconnecting,
            )
            async for envelope in events:
                last = envelope
                display.show(envelope)
        if last is not None and last.get("status") in TERMINAL_STATUSES:
            status = str(last["status"])
        else:
            # 204: the session had ended at or before --last-event-id; ask for its outcome.
            status = await _terminal_status(options)
    except FollowTimeout:
        display.close(None)
        where = "" if last is None else f" (last: step {'/'.join(map(str, _step(last)))}, {last.get('status')})"
        _error(err, f"the session did not end within {options.timeout:g} s{where}")
        return EXIT_TIMEOUT
    except ServerUnreachable as error:
        display.close(None)
        _error(err, f"cannot reach the server at {options.url}: {error}")
        return EXIT_FAILURE
    except FollowError as error:
        display.close(None)
        _error(err, _refusal(error))
        return EXIT_REFUSED if error.status in (401, 403) else EXIT_FAILURE
    except ValueError as error:
        display.close(None)
        _error(err, str(error))
        return EXIT_FAILURE
    except BaseException:
        display.close(None)
        raise
    display.close(status)
    return EXIT_CODES.get(status or "", EXIT_FAILURE)


async def _terminal_status(options: WatchOptions) -> str | None:
    headers = {"Authorization": f"Bearer {options.token}"} if options.token else {}
    url = f"{options.url.rstrip('/')}/sessions/{quote(options.session_id, safe='')}"
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            response = await client.get(url, headers=headers)
        status = response.json().get("data", {}).get("status") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return status if isinstance(status, str) else None


def _refusal(error: FollowError) -> str:
    hint = {
        401: "give --token, or set SSE_PROGRESS_TOKEN, or SSE_PROGRESS_SECRET to mint one",
        403: "the token is for another session or lacks the subscribe role",
    }.get(error.status)
    return f"the server refused: {error}" + (f" ({hint})" if hint else "")


def _error(err: TextIO, message: str) -> None:
    err.write(f"{PROG}: {message}\n")
    err.flush()


def run(args: argparse.Namespace) -> int:
    """Entry point of ``sse-progress watch`` (see ``cli.build_parser`` for the options)."""
    if not is_valid_session_id(args.session):
        _error(sys.stderr, "invalid session id: use 1-64 characters from A-Z a-z 0-9 _ -")
        return EXIT_FAILURE
    try:
        token = resolve_token(args.token, args.session, args.timeout)
    except ConfigError as error:
        _error(sys.stderr, str(error))
        return EXIT_FAILURE
    options = WatchOptions(
        session_id=args.session,
        url=args.url or default_url(),
        token=token,
        timeout=args.timeout,
        json_lines=args.json,
        last_event_id=args.last_event_id,
    )
    try:
        return asyncio.run(watch(options))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
