"""The sse-progress command: serve, demo, token, publish, watch.

Each command is a function taking the parsed arguments and returning its exit status, and a block in
``build_parser`` that declares its options; the argument types below validate values at parse time, so a
malformed value is a usage error (exit 64) wherever it is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import logging.config
import os
import secrets
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import orjson

from sse_progress.config import ConfigError, Settings
from sse_progress.demo import SCREENS, run_simulated_quote
from sse_progress.engines import MemoryEngine, SessionTerminal
from sse_progress.engines.redis.errors import describe_store_error
from sse_progress.exits import EXIT_CONFIG, EXIT_OK, EXIT_REFUSED, EXIT_STATUSES, EXIT_UNAVAILABLE, EXIT_USAGE
from sse_progress.follower import sessions as sessions_cli
from sse_progress.ports import cannot_listen
from sse_progress.protocol.events import (
    MAX_STEP,
    STATUSES,
    EventDraft,
    InvalidEvent,
    is_valid_session_id,
    parse_event_id,
)
from sse_progress.protocol.legacy import NOTIFY_SETTING, SETTLE_SECONDS
from sse_progress.protocol.tokens import Role, TokenAuthority
from sse_progress.publisher.core import new_session_id

APP_FACTORY = "sse_progress.server.app:create_app"
EXAMPLES_ROOT = Path(__file__).resolve().parent.parent
RPA_JOB = EXAMPLES_ROOT / "examples" / "rpa_quote" / "job.py"
RPA_CHROMIUM = os.environ.get("SSE_PROGRESS_CHROMIUM") or "/usr/bin/chromium"
# What `pip install 'sse-progress[server]'` adds; serve, demo and bridge need them, the rest of the CLI does not.
SERVER_MODULES = ("starlette", "uvicorn", "sse_starlette", "prometheus_client")

WATCH_EXIT_STATUSES = """exit status (the session's end, for scripts):
  0 success
  1 error
  2 cancelled
  3 --timeout elapsed
  4 token refused (401/403)
  5 other failure (also: the server never answered, 3 attempts in about 3 s)
  64 usage error
  130 interrupted"""

log = logging.getLogger("sse_progress.cli")


class _ArgumentParser(argparse.ArgumentParser):
    """Exits with EXIT_USAGE on a usage error; subcommand parsers are created with the same class."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends "(default: X)" to an option's help when it has a default worth showing and does not name it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.default not in (None, False, "", argparse.SUPPRESS) and action.option_strings
        if shown and "default" not in text:
            text += " (default: %(default)s)"
        return text


# ----------------------------------------------------------------------------------------- argument types
# Raising ArgumentTypeError makes argparse report "argument X: ..." and exit through _ArgumentParser.error.


def session_id_argument(text: str) -> str:
    if not is_valid_session_id(text):
        raise argparse.ArgumentTypeError(f"invalid session id {text!r}: use 1-64 characters from A-Z a-z 0-9 _ -")
    return text


def session_or_all_argument(text: str) -> str:
    return text if text == "*" else session_id_argument(text)


def int_argument(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            limit = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"must be an integer {limit}, got {value}")
        return value

    return parse


def seconds_argument(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def resume_id_argument(text: str) -> str:
    if text != "earliest" and parse_event_id(text) is None:
        raise argparse.ArgumentTypeError(f"not an event id such as 1732530000000-0 (or 0, or earliest): {text!r}")
    return text


port_argument = int_argument(0, 65535)


# -------------------------------------------------------------------------------------------------- helpers


def _default_port() -> str:
    # A string: argparse checks a string default with the option's type, so a bad $PORT is a usage error (64)
    # naming --port, not a traceback while the parser is built.
    return os.environ.get("PORT") or "8000"


def _fail(code: int, message: str) -> int:
    print(f"sse-progress: {message}", file=sys.stderr)
    return code


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as error:
        print(f"sse-progress: {error}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def display_url(url: str | None) -> str:
    """The engine a URL selects, for a log line: the password replaced by ``***``."""
    if not url or url.startswith("memory://"):
        return "memory (embedded, this process only)"
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# ------------------------------------------------------------------------------------------------- commands


def server_missing() -> str | None:
    """One line naming what to install when the server extra is absent; None when it is installed."""
    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return f"this command runs the server, which is not installed ({', '.join(missing)} missing): " + (
        "pip install 'sse-progress[server]'"
    )


def needs_server(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``command`` exits 69 with one line saying what to install when the server extra is absent."""

    def checked(args: argparse.Namespace) -> int:
        if missing := server_missing():
            return _fail(EXIT_UNAVAILABLE, missing)
        return command(args)

    checked.__name__ = command.__name__
    return checked


@needs_server
def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from sse_progress.server.logs import log_config
    from sse_progress.server.sockets import HTTP_PROTOCOL

    if args.redis_url:
        os.environ["REDIS_URL"] = args.redis_url
    if args.insecure:
        os.environ["SSE_PROGRESS_INSECURE"] = "1"
    settings = _settings()
    if not settings.secrets and not settings.insecure:
        return _fail(
            EXIT_CONFIG,
            "refusing to start without a secret. Set SSE_PROGRESS_SECRET to a long random value\n"
            f"  (for example: export SSE_PROGRESS_SECRET={secrets.token_urlsafe(32)})\n"
            "  or pass --insecure to disable token checks (never in production).",
        )
    if args.workers > 1 and not settings.redis_url:
        return _fail(EXIT_USAGE, "--workers > 1 needs REDIS_URL (the embedded engine lives in one process)")
    if problem := cannot_listen(args.host, args.port):
        return _fail(EXIT_UNAVAILABLE, problem)
    if settings.insecure:
        print("WARNING: --insecure: token checks are DISABLED; anyone can read and publish.", file=sys.stderr)
    logging_config = log_config(settings.log_format)
    logging.config.dictConfig(logging_config)
    log.info(
        "engine: %s; listening on http://%s:%d with %d worker(s)",
        display_url(settings.redis_url),
        f"[{args.host}]" if ":" in args.host else args.host,
        args.port,
        args.workers,
    )
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=logging_config,
        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
        proxy_headers=True,
        forwarded_allow_ips=args.forwarded_allow_ips,
        ws_max_size=64 * 1024,
        http=HTTP_PROTOCOL,
    )
    return EXIT_OK


def _rpa_missing() -> str | None:
    """What ``demo --rpa`` lacks, as the one command that fixes it; None when the bot can run."""
    if not RPA_JOB.is_file():
        return "--rpa runs examples/rpa_quote from a checkout of the repository: clone it and run ./scripts/demo --rpa"
    if importlib.util.find_spec("playwright") is None:
        return f"--rpa needs Playwright in this Python: {sys.executable} -m pip install 'playwright>=1.45'"
    if not os.access(RPA_CHROMIUM, os.X_OK) and not shutil.which(RPA_CHROMIUM):
        return f"--rpa needs Chromium at {RPA_CHROMIUM}: apt-get install chromium (or set SSE_PROGRESS_CHROMIUM)"
    return None


@needs_server
def demo(args: argparse.Namespace) -> int:
    import uvicorn
    from starlette.applications import Starlette

    from sse_progress.server.app import create_app

    if args.rpa and (missing := _rpa_missing()):
        return _fail(EXIT_UNAVAILABLE, missing)
    if problem := cannot_listen(args.host, args.port):
        return _fail(EXIT_UNAVAILABLE, problem)

    # $SSE_PROGRESS_SECRET when set, so that tokens from `sse-progress token` (and watch's) work here too.
    demo_secrets = _settings().secrets or (secrets.token_urlsafe(32),)
    settings = Settings.from_env({"SSE_PROGRESS_HEARTBEAT": "15"}).with_overrides(secrets=demo_secrets)
    engine = MemoryEngine(history=settings.history, ttl=settings.ttl)
    app = create_app(settings, engine)
    authority = TokenAuthority(demo_secrets)
    session_id = args.session or new_session_id()
    token = authority.issue(session_id, Role.SUBSCRIBE, ttl=86400)
    observe_token = authority.issue("*", Role.OBSERVE, ttl=86400)
    base = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"

    inner_lifespan = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with inner_lifespan(app):
            if args.rpa:
                publisher_token = authority.issue(session_id, Role.PUBLISH, ttl=86400)
                job = asyncio.create_task(run_rpa_example(engine, base, session_id, publisher_token))
            else:
                job = asyncio.create_task(run_simulated_quote(engine, session_id, args.step_seconds))
            what = "the Playwright quote bot is starting" if args.rpa else "a simulated 15-step quote job is running"
            print(
                f"\nsse-progress demo: {what} as session {session_id}\n\n"
                f"  Open the page:   {base}/?session={session_id}&token={token}\n"
                f"  Or follow it:    curl -N '{base}/sessions/{session_id}/events"
                f"?token={token}&last_event_id=earliest'\n"
                f"  Snapshot (JSON): curl '{base}/sessions/{session_id}?token={token}'\n"
                f"  Operator page:   {base}/ops?token={observe_token}\n\n"
                "Press Ctrl-C to stop.\n",
                flush=True,
            )
            try:
                yield
            finally:
                job.cancel()

    app.router.lifespan_context = lifespan
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2)
    return EXIT_OK


async def run_rpa_example(engine: MemoryEngine, base_url: str, session_id: str, publisher_token: str) -> None:
    """Start the example bot once the server accepts connections; it publishes over HTTP. A bot that dies
    without ending its session is reported on the terminal and ends the session as an error, so the page and
    every follower stop waiting."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection(host, int(port))
            writer.close()
            break
        except OSError:
            await asyncio.sleep(0.05)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "examples.rpa_quote.job", "--progress-tracker", "http", "--session", session_id,
        "--progress-url", base_url, "--progress-token", publisher_token,
        cwd=EXAMPLES_ROOT,
    )  # fmt: skip
    try:
        status = await process.wait()
    finally:
        if process.returncode is None:
            process.terminate()
    if status == 0:
        print("sse-progress demo: the quote bot finished. Press Ctrl-C to stop.", flush=True)
        return
    print(f"sse-progress demo: the quote bot exited with status {status} (its output is above)", flush=True)
    with contextlib.suppress(SessionTerminal):  # the bot reported its own failure already
        await engine.publish(
            EventDraft(
                session_id=session_id,
                etapa_atual=0,
                total_etapas=len(SCREENS),
                status="error",
                mensagem=f"O robô parou (código {status})",
            )
        )


def token(args: argparse.Namespace) -> int:
    settings = _settings()
    if not settings.secrets:
        return _fail(EXIT_CONFIG, "set SSE_PROGRESS_SECRET (the server's secret) to make a token")
    if args.session == "*" and not (args.publish or args.admin or args.observe):
        _usage_error(args, "a subscriber token names one session; * needs --publish, --admin or --observe")
    role = (
        Role.ADMIN if args.admin else Role.PUBLISH if args.publish else Role.OBSERVE if args.observe else Role.SUBSCRIBE
    )
    print(TokenAuthority(settings.secrets).issue(args.session, role, ttl=args.ttl))
    return EXIT_OK


def publish(args: argparse.Namespace) -> int:
    import httpx
    import redis.exceptions

    from sse_progress.publisher.sinks import HttpPublishError, HttpSink, RedisSink

    try:
        draft = EventDraft(
            session_id=args.session,
            etapa_atual=args.etapa,
            total_etapas=args.total,
            status=args.status,
            mensagem=args.mensagem,
        )
    except InvalidEvent as error:
        _usage_error(args, str(error))
    settings = _settings()
    redis_url = args.redis_url or settings.redis_url
    target = args.url or display_url(redis_url)
    try:
        if args.url:
            token = args.token or os.environ.get("SSE_PROGRESS_TOKEN")
            if not token and settings.secrets:
                token = TokenAuthority(settings.secrets).issue(args.session, Role.PUBLISH, ttl=300)
            if not token:
                return _fail(EXIT_CONFIG, "--url needs --token, SSE_PROGRESS_TOKEN or SSE_PROGRESS_SECRET")
            envelope = HttpSink(args.url, token).send(draft)
        elif redis_url:
            envelope = RedisSink(
                redis_url, settings.prefix, settings.history, settings.ttl, settings.redis_verify_tls
            ).send(draft)
        else:
            _usage_error(args, "give --url (a running server) or --redis-url / REDIS_URL")
    except SessionTerminal:
        return _fail(EXIT_REFUSED, f"session {args.session} already ended")
    except HttpPublishError as error:
        return _fail(EXIT_REFUSED, str(error))
    except (OSError, httpx.TransportError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
        return _fail(EXIT_UNAVAILABLE, f"cannot reach {target}: {describe_store_error(error)}")
    # One formatting whatever the path: the envelope as stored, compact JSON.
    print(orjson.dumps(orjson.loads(envelope)).decode())
    return EXIT_OK


@needs_server
def bridge(args: argparse.Namespace) -> int:
    from sse_progress.server.bridge import run_bridge

    return run_bridge(args)


def watch(args: argparse.Namespace) -> int:
    from sse_progress.follower.watch import run

    return run(args)


def _usage_error(args: argparse.Namespace, message: str) -> NoReturn:
    """A value argparse cannot judge alone (it depends on other options), reported like argparse's own."""
    parser: argparse.ArgumentParser = args.parser
    parser.error(message)


# --------------------------------------------------------------------------------------------------- parser


def _command(commands: Any, name: str, func: Callable[[argparse.Namespace], int], **kwargs: Any) -> Any:
    """Declare a subcommand: its parser shares the help formatter and knows itself for late usage errors."""
    parser = commands.add_parser(name, formatter_class=_HelpFormatter, **kwargs)
    parser.set_defaults(func=func, parser=parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="sse-progress",
        description="Live progress of long-running jobs over SSE, WebSocket and polling.",
        epilog=EXIT_STATUSES + "\n\nwatch has its own exit statuses: sse-progress watch --help",
        formatter_class=_HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = _command(commands, "serve", serve, help="run the server (uvicorn)", epilog=EXIT_STATUSES)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for every interface")
    p.add_argument("--port", type=port_argument, default=_default_port(), help="default: $PORT, else 8000")
    p.add_argument("--workers", type=int_argument(1), default=1, help="processes; more than 1 needs REDIS_URL")
    p.add_argument("--redis-url", default=None, help="default: $REDIS_URL; unset: the embedded engine")
    p.add_argument("--insecure", action="store_true", help="disable token checks (development only)")
    p.add_argument(
        "--timeout-graceful-shutdown", type=int_argument(0), default=10,
        help="seconds open streams get to end after SIGTERM",
    )  # fmt: skip
    p.add_argument(
        "--forwarded-allow-ips", default="127.0.0.1",
        help="addresses whose X-Forwarded-For/-Proto are trusted (a proxy's); * for any",
    )  # fmt: skip

    p = _command(commands, "demo", demo, help="run a self-contained demo: embedded engine and a simulated job")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=port_argument, default=_default_port(), help="default: $PORT, else 8000")
    p.add_argument("--session", type=session_id_argument, default=None, help="session id (default: a random one)")
    p.add_argument("--step-seconds", type=seconds_argument, default=1.0, help="average time per simulated screen")
    p.add_argument("--rpa", action="store_true", help="run the Playwright example bot (examples/rpa_quote)")

    p = _command(
        commands, "token", token, help="print a token for a session (uses SSE_PROGRESS_SECRET)", epilog=EXIT_STATUSES
    )
    p.add_argument(
        "session", type=session_or_all_argument, help="session id, or * (with --publish or --admin) for every session"
    )
    role = p.add_mutually_exclusive_group()
    role.add_argument("--publish", action="store_true", help="a publisher token")
    role.add_argument("--admin", action="store_true", help="an admin token (/stats)")
    role.add_argument("--observe", action="store_true", help="an observe token for * (/sessions, /ops)")
    p.add_argument("--ttl", type=int_argument(1), default=3600, help="seconds until the token expires")

    p = _command(commands, "publish", publish, help="publish one event", epilog=EXIT_STATUSES)
    p.add_argument("session", type=session_id_argument, help="session id (1-64 of A-Z a-z 0-9 _ -)")
    p.add_argument("--etapa", type=int_argument(0, MAX_STEP), required=True, help="the step reached (0 = not started)")
    p.add_argument("--total", type=int_argument(1, MAX_STEP), default=15, help="the number of steps")
    p.add_argument("--mensagem", default="", help="the message shown with the step")
    p.add_argument("--status", choices=STATUSES, default="running", help="success, error, cancelled end the session")
    p.add_argument("--url", default=None, help="a running server to publish through (else Redis directly)")
    p.add_argument("--token", default=None, help="with --url: default $SSE_PROGRESS_TOKEN, else minted")
    p.add_argument("--redis-url", default=None, help="default: $REDIS_URL")

    p = _command(
        commands, "watch", watch,
        help="follow a session: a progress bar, plain lines when piped, or --json",
        epilog=WATCH_EXIT_STATUSES,
    )  # fmt: skip
    p.add_argument("session", type=session_id_argument, help="session id")
    p.add_argument("--url", default=None, help="the server (default: $SSE_PROGRESS_URL, else http://127.0.0.1:$PORT)")
    p.add_argument("--token", default=None, help="default: $SSE_PROGRESS_TOKEN, else minted with SSE_PROGRESS_SECRET")
    p.add_argument(
        "--timeout", type=seconds_argument, default=None, help="give up after SECONDS (exit 3)", metavar="SECONDS"
    )
    p.add_argument("--json", action="store_true", help="print each event as one JSON line instead of a bar")
    p.add_argument(
        "--last-event-id", type=resume_id_argument, default=None,
        help="resume after this event id; 0 or earliest replays the history (default: the latest state)",
    )  # fmt: skip

    p = _command(
        commands, "bridge", bridge, epilog=EXIT_STATUSES,
        help="turn the older system's unbraced Redis writes into events",
    )  # fmt: skip
    p.add_argument("--redis-url", default=None, help="default: $REDIS_URL (one Redis; not a cluster)")
    p.add_argument("--channel-pattern", default=None, help="default: <prefix>:session:* ($SSE_PROGRESS_PREFIX)")
    p.add_argument("--key-pattern", default=None, help="default: <prefix>:progress:*")
    p.add_argument(
        "--total-etapas", type=int_argument(1, MAX_STEP), default=15, help="for updates without total_etapas"
    )
    p.add_argument(
        "--settle-ms", type=int_argument(0, 10_000), default=int(SETTLE_SECONDS * 1000),
        help="how long the first SET of a session waits for its PUBLISH before the key is read",
    )  # fmt: skip
    p.add_argument(
        "--no-configure-redis", action="store_true", help=f"never CONFIG SET {NOTIFY_SETTING} (log what to set)"
    )
    p.add_argument("--metrics-port", type=port_argument, default=None, help="serve /metrics on this port")
    p.add_argument("--metrics-host", default="127.0.0.1", help="the address /metrics listens on")

    p = _command(
        commands, "sessions", sessions_cli.run, epilog=EXIT_STATUSES,
        help="list sessions (running, stalled, finished); --watch follows the changes live",
    )  # fmt: skip
    sessions_cli.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
