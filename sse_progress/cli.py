"""``sse-progress``: serve, demo, token, publish, watch."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import NoReturn

import uvicorn
from starlette.applications import Starlette

from . import sessions_cli
from .auth import Role, TokenAuthority
from .config import ConfigError, Settings
from .engines import MemoryEngine, SessionTerminal
from .events import EventDraft, InvalidEvent, is_valid_session_id
from .logs import log_config
from .tracker import new_session_id

APP_FACTORY = "sse_progress.app:create_app"
EXAMPLES_ROOT = Path(__file__).resolve().parent.parent
# sysexits.h's EX_USAGE: argparse's own 2 would read as "cancelled" to a script that runs `watch`.
EXIT_USAGE = 64


class _ArgumentParser(argparse.ArgumentParser):
    """Exits with EXIT_USAGE on a usage error; subcommand parsers are created with the same class."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _default_port() -> int:
    return int(os.environ.get("PORT") or 8000)


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as error:
        sys.exit(f"sse-progress: {error}")


def serve(args: argparse.Namespace) -> int:
    if args.redis_url:
        os.environ["REDIS_URL"] = args.redis_url
    if args.insecure:
        os.environ["SSE_PROGRESS_INSECURE"] = "1"
    settings = _settings()
    if not settings.secrets and not settings.insecure:
        print(
            "sse-progress: refusing to start without a secret. Set SSE_PROGRESS_SECRET to a long random value\n"
            f"  (for example: export SSE_PROGRESS_SECRET={secrets.token_urlsafe(32)})\n"
            "  or pass --insecure to disable token checks (never in production).",
            file=sys.stderr,
        )
        return 2
    if settings.insecure:
        print("WARNING: --insecure: token checks are DISABLED; anyone can read and publish.", file=sys.stderr)
    if args.workers > 1 and not settings.redis_url:
        print("sse-progress: --workers > 1 needs REDIS_URL (the embedded engine lives in one process)", file=sys.stderr)
        return 2
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=log_config(settings.log_format),
        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
        proxy_headers=True,
        forwarded_allow_ips=args.forwarded_allow_ips,
        ws_max_size=64 * 1024,
    )
    return 0


def demo(args: argparse.Namespace) -> int:
    from .app import create_app
    from .demo import run_simulated_quote

    if args.rpa and not (EXAMPLES_ROOT / "examples" / "rpa_quote" / "job.py").is_file():
        print("sse-progress: --rpa runs examples/rpa_quote from a checkout of the repository", file=sys.stderr)
        return 2

    secret = secrets.token_urlsafe(32)
    settings = Settings.from_env({"SSE_PROGRESS_HEARTBEAT": "15"}).with_overrides(secrets=(secret,))
    engine = MemoryEngine(history=settings.history, ttl=settings.ttl)
    app = create_app(settings, engine)
    authority = TokenAuthority((secret,))
    session_id = args.session or new_session_id()
    token = authority.issue(session_id, Role.SUBSCRIBE, ttl=86400)
    base = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"

    inner_lifespan = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with inner_lifespan(app):
            if args.rpa:
                publisher_token = authority.issue(session_id, Role.PUBLISH, ttl=86400)
                job = asyncio.create_task(run_rpa_example(base, session_id, publisher_token))
            else:
                job = asyncio.create_task(run_simulated_quote(engine, session_id, args.step_seconds))
            print(
                f"\nsse-progress demo: {'the Playwright quote bot' if args.rpa else 'a simulated 15-step quote job'}"
                f" is running as session {session_id}\n\n"
                f"  Open the page:   {base}/?session={session_id}&token={token}\n"
                f"  Or follow it:    curl -N '{base}/sessions/{session_id}/events"
                f"?token={token}&last_event_id=earliest'\n"
                f"  Snapshot (JSON): curl '{base}/sessions/{session_id}?token={token}'\n\n"
                "Press Ctrl-C to stop.\n",
                flush=True,
            )
            try:
                yield
            finally:
                job.cancel()

    app.router.lifespan_context = lifespan
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2)
    return 0


async def run_rpa_example(base_url: str, session_id: str, publisher_token: str) -> None:
    """Start the example bot once the server accepts connections; it publishes over HTTP."""
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
        await process.wait()
    finally:
        if process.returncode is None:
            process.terminate()


def token(args: argparse.Namespace) -> int:
    settings = _settings()
    if not settings.secrets:
        print("sse-progress: set SSE_PROGRESS_SECRET (the server's secret) to make a token", file=sys.stderr)
        return 2
    if args.session != "*" and not is_valid_session_id(args.session):
        print("sse-progress: invalid session id: use 1-64 characters from A-Z a-z 0-9 _ -", file=sys.stderr)
        return 2
    role = (
        Role.ADMIN if args.admin else Role.PUBLISH if args.publish else Role.OBSERVE if args.observe else Role.SUBSCRIBE
    )
    print(TokenAuthority(settings.secrets).issue(args.session, role, ttl=args.ttl))
    return 0


def publish(args: argparse.Namespace) -> int:
    from .sinks import HttpPublishError, HttpSink, RedisSink

    settings = _settings()
    try:
        draft = EventDraft(
            session_id=args.session,
            etapa_atual=args.etapa,
            total_etapas=args.total,
            status=args.status,
            mensagem=args.mensagem,
        )
    except InvalidEvent as error:
        print(f"sse-progress: {error}", file=sys.stderr)
        return 2
    redis_url = args.redis_url or settings.redis_url
    try:
        if args.url:
            token = args.token or os.environ.get("SSE_PROGRESS_TOKEN")
            if not token and settings.secrets:
                token = TokenAuthority(settings.secrets).issue(args.session, Role.PUBLISH, ttl=300)
            if not token:
                print("sse-progress: --url needs --token, SSE_PROGRESS_TOKEN or SSE_PROGRESS_SECRET", file=sys.stderr)
                return 2
            envelope = HttpSink(args.url, token).send(draft)
        elif redis_url:
            envelope = RedisSink(
                redis_url, settings.prefix, settings.history, settings.ttl, settings.redis_verify_tls
            ).send(draft)
        else:
            print("sse-progress: give --url (a running server) or --redis-url / REDIS_URL", file=sys.stderr)
            return 2
    except SessionTerminal:
        print(f"sse-progress: session {args.session} already ended", file=sys.stderr)
        return 1
    except (HttpPublishError, OSError) as error:
        print(f"sse-progress: {error}", file=sys.stderr)
        return 1
    print(envelope.decode())
    return 0


def watch(args: argparse.Namespace) -> int:
    from .watch import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="sse-progress", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("serve", help="run the server (uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=_default_port(), help="default: $PORT, else 8000")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--redis-url", default=None, help="default: $REDIS_URL; unset: the embedded engine")
    p.add_argument("--insecure", action="store_true", help="disable token checks (development only)")
    p.add_argument("--timeout-graceful-shutdown", type=int, default=10)
    p.add_argument("--forwarded-allow-ips", default="127.0.0.1")
    p.set_defaults(func=serve)

    p = commands.add_parser("demo", help="run a self-contained demo: embedded engine and a simulated job")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=_default_port())
    p.add_argument("--session", default=None)
    p.add_argument("--step-seconds", type=float, default=1.0, help="average time per simulated screen")
    p.add_argument("--rpa", action="store_true", help="run the Playwright example bot (examples/rpa_quote)")
    p.set_defaults(func=demo)

    p = commands.add_parser("token", help="print a token for a session (uses SSE_PROGRESS_SECRET)")
    p.add_argument("session", help="session id, or * (with --publish or --admin) for every session")
    role = p.add_mutually_exclusive_group()
    role.add_argument("--publish", action="store_true", help="a publisher token")
    role.add_argument("--admin", action="store_true", help="an admin token (/stats)")
    role.add_argument("--observe", action="store_true", help="an observe token for * (/sessions, /ops)")
    p.add_argument("--ttl", type=int, default=3600, help="seconds until the token expires (default 3600)")
    p.set_defaults(func=token)

    p = commands.add_parser("publish", help="publish one event")
    p.add_argument("session")
    p.add_argument("--etapa", type=int, required=True)
    p.add_argument("--total", type=int, default=15)
    p.add_argument("--mensagem", default="")
    p.add_argument("--status", default="running")
    p.add_argument("--url", default=None, help="a running server (else Redis directly)")
    p.add_argument("--token", default=None)
    p.add_argument("--redis-url", default=None)
    p.set_defaults(func=publish)

    p = commands.add_parser(
        "watch",
        help="follow a session: a progress bar, plain lines when piped, or --json",
        epilog="exit status: 0 success, 1 error, 2 cancelled, 3 --timeout elapsed, 4 token refused (401/403), "
        "5 other failure, 64 usage error, 130 interrupted",
    )
    p.add_argument("session")
    p.add_argument("--url", default=None, help="the server (default: $SSE_PROGRESS_URL, else http://127.0.0.1:$PORT)")
    p.add_argument("--token", default=None, help="default: $SSE_PROGRESS_TOKEN, else minted with SSE_PROGRESS_SECRET")
    p.add_argument("--timeout", type=float, default=None, help="give up after SECONDS (exit 3)", metavar="SECONDS")
    p.add_argument("--json", action="store_true", help="print each event as one JSON line instead of a bar")
    p.add_argument("--last-event-id", default=None, help="resume after this event id; 0 replays the history")
    p.set_defaults(func=watch)

    sessions_cli.add_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
