"""``sse-progress sessions``: the session list in a terminal, once or live.

    sse-progress sessions --status stalled
    sse-progress sessions --json | jq -r 'select(.stalled) | .session_id'
    sse-progress sessions --watch            # one line per change: started, stalled, resumed, finished

The token is ``--token``, else ``$SSE_PROGRESS_TOKEN``, else an observe token minted with
``$SSE_PROGRESS_SECRET``. Exit status: 0 listed (``--watch``: until interrupted), 64 usage error, 69 the server
or its event store is unreachable, 1 the server refused the token (401/403), 78 a setting is unusable,
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

import httpx

from sse_progress.config import ConfigError, Settings
from sse_progress.exits import EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_OK, EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_USAGE
from sse_progress.follower.watch import default_url, format_eta
from sse_progress.protocol.session_index import FILTERS, MAX_PAGE
from sse_progress.protocol.tokens import Role, TokenAuthority

TOKEN_TTL = 86400
RECONNECT_SECONDS = 2.0
STATE_TEXT = {
    "pending": "aguardando",
    "running": "em andamento",
    "stalled": "TRAVADO",
    "success": "concluído",
    "error": "FALHOU",
    "cancelled": "cancelado",
}


class Refused(Exception):
    pass


class Unreachable(Exception):
    pass


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``sse-progress sessions``."""
    p.add_argument("--status", choices=FILTERS, default=None, help="only sessions in this state")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    p.add_argument("--watch", action="store_true", help="follow the changes live until interrupted")
    p.add_argument("--limit", type=int, default=100, help=f"sessions listed (1-{MAX_PAGE}, default 100)")
    p.add_argument("--url", default=None, help="the server (default: $SSE_PROGRESS_URL, else http://127.0.0.1:$PORT)")
    p.add_argument("--token", default=None, help="default: $SSE_PROGRESS_TOKEN, else minted with SSE_PROGRESS_SECRET")


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    if not 1 <= args.limit <= MAX_PAGE:
        print(f"sse-progress sessions: --limit must be from 1 to {MAX_PAGE}", file=sys.stderr)
        return EXIT_USAGE
    try:
        token = _token(args.token)
    except ConfigError as error:
        print(f"sse-progress sessions: {error}", file=sys.stderr)
        return EXIT_CONFIG
    base = (args.url or default_url()).rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        if args.watch:
            _watch(base, headers, args.status, args.json, out)
        else:
            _print_list(_fetch(base, headers, args.status, args.limit), args.json, out)
    except Refused as error:
        print(f"sse-progress sessions: the server refused the token: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except Unreachable as error:
        print(f"sse-progress sessions: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK


def _token(explicit: str | None) -> str | None:
    token = explicit or os.environ.get("SSE_PROGRESS_TOKEN")
    if token:
        return token
    settings = Settings.from_env()
    return TokenAuthority(settings.secrets).issue("*", Role.OBSERVE, TOKEN_TTL) if settings.secrets else None


def _check(response: httpx.Response) -> None:
    if response.status_code in (401, 403):
        raise Refused(_error_text(response))
    if response.status_code == 503:
        raise Unreachable(f"the server's event store is unavailable: {_error_text(response)}")
    if response.status_code != 200:
        raise Unreachable(f"unexpected answer {response.status_code}: {_error_text(response)}")


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


def _fetch(base: str, headers: dict[str, str], status: str | None, limit: int) -> list[dict[str, Any]]:
    params = {"limit": str(limit), **({"status": status} if status else {})}
    try:
        response = httpx.get(f"{base}/sessions", params=params, headers=headers, timeout=10)
    except httpx.HTTPError as error:
        raise Unreachable(f"cannot reach {base}: {error}") from None
    _check(response)
    sessions: list[dict[str, Any]] = response.json()["sessions"]
    # Running first (stalled ones at the top: they need someone), then the finished ones, newest first.
    order = {"stalled": 0, "running": 1, "pending": 1}
    return sorted(sessions, key=lambda row: order.get(row["state"], 2))


def _print_list(rows: list[dict[str, Any]], as_json: bool, out: TextIO) -> None:
    if as_json:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    out.write(f"{'SESSÃO':<24} {'ESTADO':<13} {'ETAPA':>7} {'%':>6} {'ETA':>8} {'IDADE':>7}  MENSAGEM\n")
    for row in rows:
        out.write(_line(row) + "\n")
    if not rows:
        out.write("(nenhuma sessão)\n")


def _line(row: dict[str, Any]) -> str:
    snapshot = row["snapshot"]
    step = f"{snapshot['etapa_atual']}/{snapshot['total_etapas']}"
    eta = format_eta(snapshot.get("eta_seconds")) if row["state"] in ("running", "pending") else ""
    return (
        f"{row['session_id']:<24} {STATE_TEXT.get(row['state'], row['state']):<13} {step:>7} "
        f"{snapshot['percentual']:>5.1f}% {eta:>8} {row['last_event_age_s']:>6.0f}s  {snapshot['mensagem']}"
    )


def _watch(base: str, headers: dict[str, str], status: str | None, as_json: bool, out: TextIO) -> None:
    connected_once = False
    while True:
        try:
            for record in _changes(base, headers):
                connected_once = True
                if status is None or record["state"] == status:
                    text = (
                        json.dumps(record, ensure_ascii=False) if as_json else f"{record['change']:<9} {_line(record)}"
                    )
                    out.write(text + "\n")
                    out.flush()
        except Unreachable:
            if not connected_once:
                raise  # never reached: say so; once it worked, a drop is a moment to wait through
        time.sleep(RECONNECT_SECONDS)


def _changes(base: str, headers: dict[str, str]) -> Iterator[dict[str, Any]]:
    try:
        with httpx.stream("GET", f"{base}/ops/events", headers=headers, timeout=httpx.Timeout(10, read=60)) as response:
            _check(response)
            for line in response.iter_lines():
                if line.startswith("data: "):
                    yield json.loads(line[6:])
    except httpx.HTTPError as error:
        raise Unreachable(f"cannot reach {base}: {error}") from None
