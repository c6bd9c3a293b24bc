"""The command line: serve refuses to start without a secret and says which engine it runs, token and publish
work end to end, a usage error (malformed values included) exits with 64 (EX_USAGE) from every command, never
with watch's 2 ("cancelled"), an unreachable store exits 69 with one line, and every option explains itself."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from sse_progress.cli import build_parser
from sse_progress.protocol.tokens import Role, TokenAuthority
from tests.support.cli import cli_env, lines_until, run_cli, started_cli
from tests.support.processes import LiveServer, free_port, wait_until


def test_serve_without_a_secret_refuses_to_start_and_says_what_to_set() -> None:
    result = run_cli("serve", "--port", "1")
    assert result.returncode == 78
    assert "SSE_PROGRESS_SECRET" in result.stderr and "--insecure" in result.stderr


def test_token_prints_a_token_the_server_accepts() -> None:
    result = run_cli("token", "abc", "--publish", "--ttl", "60", env={"SSE_PROGRESS_SECRET": "k1"})
    assert result.returncode == 0
    claims = TokenAuthority(("k1",)).check(result.stdout.strip(), "abc", Role.PUBLISH)
    assert claims is not None and claims.role is Role.PUBLISH


def test_token_without_a_secret_fails_clearly() -> None:
    result = run_cli("token", "abc")
    assert result.returncode == 78 and "SSE_PROGRESS_SECRET" in result.stderr


def test_an_unusable_setting_exits_78_naming_it() -> None:
    result = run_cli("token", "abc", env={"SSE_PROGRESS_SECRET": "k1", "SSE_PROGRESS_TTL": "soon"})
    assert result.returncode == 78 and "SSE_PROGRESS_TTL" in result.stderr
    assert "Traceback" not in result.stderr


def test_publish_to_redis_then_read_through_the_server(server: LiveServer, session_id: str) -> None:
    result = run_cli(
        "publish", session_id, "--etapa", "3", "--mensagem", "via cli", "--redis-url", str(server.redis_url)
    )
    assert result.returncode == 0, result.stderr
    snapshot = httpx.get(f"{server.url}/sessions/{session_id}", params={"token": server.token(session_id)})
    assert snapshot.json()["data"]["mensagem"] == "via cli"


def test_publish_over_http_with_the_secret(server: LiveServer, session_id: str) -> None:
    result = run_cli(
        "publish", session_id, "--etapa", "15", "--status", "success", "--url", server.url,
        env={"SSE_PROGRESS_SECRET": server.secret},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    again = run_cli(
        "publish", session_id, "--etapa", "1", "--url", server.url, env={"SSE_PROGRESS_SECRET": server.secret}
    )
    assert again.returncode == 1 and "already ended" in again.stderr


def test_publish_prints_the_same_compact_json_through_redis_and_through_the_server(
    server: LiveServer, session_id: str
) -> None:
    via_redis = run_cli("publish", session_id, "--etapa", "1", "--mensagem", "Tela 1", "--redis-url", server.redis_url)
    via_http = run_cli(
        "publish", session_id, "--etapa", "2", "--mensagem", "Tela 2", "--url", server.url,
        env={"SSE_PROGRESS_SECRET": server.secret},
    )  # fmt: skip
    assert via_redis.returncode == 0 and via_http.returncode == 0, (via_redis.stderr, via_http.stderr)
    for printed in (via_redis.stdout, via_http.stdout):
        line = printed.strip()
        assert json.dumps(json.loads(line), ensure_ascii=False, separators=(",", ":")) == line
    assert list(json.loads(via_redis.stdout)) == list(json.loads(via_http.stdout))  # same keys, same order


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (("publish", "abc", "--etapa", "1", "--redis-url", "redis://127.0.0.1:{port}/0"), "redis://127.0.0.1:{port}/0"),
        (("publish", "abc", "--etapa", "1", "--url", "http://127.0.0.1:{port}", "--token", "t"), "http://127.0.0.1:{port}"),
    ],
    ids=["redis", "server"],
)  # fmt: skip
def test_publish_to_an_unreachable_store_exits_69_with_one_line(args: tuple[str, ...], what: str) -> None:
    port = str(free_port())  # nothing listens there
    result = run_cli(*(arg.replace("{port}", port) for arg in args))
    assert result.returncode == 69, result
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"sse-progress: cannot reach {what.replace('{port}', port)}")


def test_the_redis_password_is_hidden_in_messages() -> None:
    port = free_port()
    result = run_cli("publish", "abc", "--etapa", "1", "--redis-url", f"redis://user:hunter2@127.0.0.1:{port}/0")
    assert result.returncode == 69
    assert "hunter2" not in result.stderr and f"redis://user:***@127.0.0.1:{port}/0" in result.stderr


def test_serve_logs_its_engine_and_address_at_startup(redis_url: str) -> None:
    port = free_port()
    secret_url = redis_url.replace("redis://", "redis://default:hunter2@", 1)
    with started_cli(
        "serve", "--port", str(port), "--redis-url", secret_url, env={"SSE_PROGRESS_SECRET": "k1"}
    ) as output:
        first = output.readline()
    expected = secret_url.replace("hunter2", "***")
    assert f"engine: {expected}; listening on http://127.0.0.1:{port}" in first, first
    assert "hunter2" not in first


def test_serve_logs_the_embedded_engine() -> None:
    port = free_port()
    with started_cli("serve", "--port", str(port), env={"SSE_PROGRESS_SECRET": "k1"}) as output:
        first = output.readline()
    assert f"engine: memory (embedded, this process only); listening on http://127.0.0.1:{port}" in first, first


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("token", "a b"), "argument session: invalid session id 'a b'"),
        (("token", "*"), "* needs --publish, --admin or --observe"),
        (("token", "abc", "--ttl", "0"), "argument --ttl: must be an integer at least 1, got 0"),
        (("token", "abc", "--ttl", "-5"), "argument --ttl: must be an integer at least 1, got -5"),
        (("publish", "a b", "--etapa", "1", "--redis-url", "redis://127.0.0.1:1"), "invalid session id 'a b'"),
        (("publish", "abc", "--etapa", "1", "--status", "done", "--redis-url", "redis://127.0.0.1:1"),
         "argument --status: invalid choice: 'done'"),
        (("publish", "abc", "--etapa", "-1", "--redis-url", "redis://127.0.0.1:1"),
         "argument --etapa: must be an integer from 0"),
        (("publish", "abc", "--etapa", "3", "--total", "0", "--redis-url", "redis://127.0.0.1:1"), "argument --total"),
        (("publish", "abc", "--etapa", "1", "--mensagem", "\udcff", "--redis-url", "redis://127.0.0.1:1"), "mensagem"),
        (("publish", "abc", "--etapa", "1"), "give --url (a running server) or --redis-url"),
        (("watch", "a b"), "argument session: invalid session id 'a b'"),
        (("watch", "abc", "--last-event-id", "yesterday"), "argument --last-event-id: not an event id"),
        (("watch", "abc", "--timeout", "-1"), "argument --timeout: must be a positive number of seconds"),
        (("serve", "--port", "70000"), "argument --port: must be an integer from 0 to 65535"),
        (("serve", "--workers", "0"), "argument --workers: must be an integer at least 1"),
        (("demo", "--session", "a b"), "argument --session: invalid session id 'a b'"),
        (("demo", "--step-seconds", "0"), "argument --step-seconds: must be a positive number of seconds"),
    ],
    ids=["token-session", "token-subscriber-star", "token-ttl-0", "token-ttl-negative", "publish-session",
         "publish-status", "publish-etapa", "publish-total", "publish-mensagem", "publish-no-target", "watch-session",
         "watch-resume-id", "watch-timeout", "serve-port", "serve-workers", "demo-session", "demo-step-seconds"],
)  # fmt: skip
def test_a_malformed_value_is_a_usage_error_exit_64(args: tuple[str, ...], complaint: str) -> None:
    result = run_cli(*args, env={"SSE_PROGRESS_SECRET": "k1"})
    assert result.returncode == 64, result
    assert result.stderr.startswith("usage: sse-progress"), result.stderr
    assert complaint in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_malformed_port_in_the_environment_is_a_usage_error_not_a_traceback(command: str) -> None:
    result = run_cli(command, env={"SSE_PROGRESS_SECRET": "k1", "PORT": "web"})
    assert result.returncode == 64, result
    assert "--port" in result.stderr and "'web'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["serve --port", "demo (PORT)", "bridge --metrics-port"])
def test_a_port_in_use_exits_69_with_one_line_before_printing_anything(command: str, redis_url: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {"SSE_PROGRESS_SECRET": "k1", "REDIS_URL": redis_url}
        if command == "serve --port":
            result = run_cli("serve", "--port", str(port), env=env)
        elif command == "demo (PORT)":
            result = run_cli("demo", env={**env, "PORT": str(port)})
        else:
            result = run_cli("bridge", "--metrics-port", str(port), env=env)
    assert result.returncode == 69, result
    assert result.stdout == ""  # no page URLs, no "Press Ctrl-C"
    assert result.stderr == f"sse-progress: port {port} on 127.0.0.1 is already in use\n"


def test_the_demo_prints_an_ops_url_whose_token_lists_its_session_and_honours_the_secret() -> None:
    port = free_port()
    with started_cli("demo", "--port", str(port), "--session", "demo-ops", env={"SSE_PROGRESS_SECRET": "k1"}) as output:
        banner = lines_until(output, "Press Ctrl-C")  # the banner, up to its last line
        printed = next((line for line in banner if "Operator page:" in line), "")
        assert printed, f"no ops URL in the banner: {banner}"
        ops_url = printed.split("Operator page:", 1)[1].strip()
        assert ops_url.startswith(f"http://127.0.0.1:{port}/ops?token="), printed
        token = ops_url.split("token=", 1)[1]
        page = httpx.get(ops_url, timeout=10)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]

        def lists_the_demo_session() -> bool:
            listed = httpx.get(f"http://127.0.0.1:{port}/sessions", params={"token": token}, timeout=10)
            assert listed.status_code == 200, listed.text
            return "demo-ops" in [entry["session_id"] for entry in listed.json()["sessions"]]

        wait_until(lists_the_demo_session, 10, "the demo session in GET /sessions")
        # A token minted from $SSE_PROGRESS_SECRET, as `sse-progress token '*' --observe` makes, works too.
        minted = TokenAuthority(("k1",)).issue("*", Role.OBSERVE, ttl=60)
        assert httpx.get(f"http://127.0.0.1:{port}/sessions", params={"token": minted}, timeout=10).status_code == 200


def test_other_commands_do_not_care_about_a_malformed_port() -> None:
    result = run_cli("token", "abc", env={"SSE_PROGRESS_SECRET": "k1", "PORT": "web"})
    assert result.returncode == 0, result


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (commands,) = (action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return dict(commands.choices)


def _help_entry(help_text: str, option: str) -> str:
    """The lines of ``--help`` that describe ``option``: from its line to the next option's."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith(option))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("  -")), len(lines))
    return " ".join(" ".join(lines[start:end]).split())


def test_every_option_of_every_command_has_help_text_and_shows_its_default() -> None:
    checked = 0
    for name, parser in _subcommands().items():
        help_text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{label} has no help text"
            if action.option_strings and action.default not in (None, False, ""):
                assert "default" in _help_entry(help_text, action.option_strings[0]), f"{label} hides its default"
            checked += 1
    assert checked >= 30


@pytest.mark.parametrize("command", ["", "serve", "demo", "token", "publish", "watch"])
def test_help_shows_defaults_and_no_markup(command: str) -> None:
    result = run_cli(*([command] if command else []), "--help")
    assert result.returncode == 0
    assert "``" not in result.stdout and "`" not in result.stdout
    if command == "serve":
        assert "(default: 127.0.0.1)" in _help_entry(result.stdout, "--host")
        assert "(default: 1)" in _help_entry(result.stdout, "--workers")
        assert "(default: 10)" in _help_entry(result.stdout, "--timeout-graceful-shutdown")
    if command == "publish":
        assert "(default: 15)" in _help_entry(result.stdout, "--total")
        assert "(default: running)" in _help_entry(result.stdout, "--status")


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        ((), "required: command"),
        (("follow", "abc"), "invalid choice: 'follow'"),
        (("serve", "--port", "eighty"), "argument --port: invalid integer 'eighty'"),
        (("demo", "--step-seconds", "fast"), "argument --step-seconds: invalid number of seconds 'fast'"),
        (("token",), "required: session"),
        (("token", "abc", "--publish", "--admin"), "not allowed with argument --publish"),
        (("publish", "abc"), "required: --etapa"),
        (("watch",), "required: session"),
        (("watch", "abc", "--timeout", "soon"), "argument --timeout: invalid number of seconds 'soon'"),
        (("watch", "abc", "--follow"), "unrecognized arguments: --follow"),
    ],
    ids=["no-command", "unknown-command", "serve", "demo", "token", "token-roles", "publish", "watch",
         "watch-timeout", "watch-unknown-option"],
)  # fmt: skip
def test_a_usage_error_exits_64_with_the_usage(args: tuple[str, ...], complaint: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 64, result
    assert result.stderr.startswith("usage: sse-progress"), result.stderr
    assert complaint in result.stderr
    assert result.stdout == ""


def test_watch_help_exits_0_and_lists_the_exit_statuses() -> None:
    result = run_cli("watch", "--help")
    assert result.returncode == 0, result.stderr
    assert "2 cancelled" in result.stdout and "64 usage error" in result.stdout and "5 other failure" in result.stdout


def _start_demo(*args: str, env: dict[str, str] | None = None, code: str = "") -> subprocess.Popen[str]:
    """``sse-progress demo`` in a subprocess; ``code`` runs first in that interpreter (e.g. to hide a module)."""
    program = f"import sys\n{code}\nfrom sse_progress.cli import main\nsys.exit(main({['demo', *args]!r}))"
    return subprocess.Popen(
        [sys.executable, "-c", program],
        env=cli_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_demo_rpa_without_playwright_stops_at_once_with_the_command_to_run() -> None:
    port = free_port()
    # A None entry in sys.modules is how Python marks a module as absent: `import playwright` fails as if uninstalled.
    demo = _start_demo("--rpa", "--port", str(port), code="sys.modules['playwright'] = None")
    stdout, stderr = demo.communicate(timeout=30)
    assert demo.returncode == 69, (stdout, stderr)
    assert "pip install 'playwright" in stderr and stderr.count("\n") == 1, stderr
    assert "running" not in stdout and "starting" not in stdout


def test_demo_rpa_without_chromium_stops_at_once_naming_it() -> None:
    demo = _start_demo("--rpa", "--port", str(free_port()), env={"SSE_PROGRESS_CHROMIUM": "/nonexistent/chromium"})
    stdout, stderr = demo.communicate(timeout=30)
    assert demo.returncode == 69, (stdout, stderr)
    assert "apt-get install chromium" in stderr and "/nonexistent/chromium" in stderr
    assert "running" not in stdout and "starting" not in stdout


def _children(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                children.append(int(stat.parent.name))
    return children


def test_demo_rpa_says_when_the_bot_dies_and_ends_the_session_as_an_error() -> None:
    port, session = free_port(), "bot-" + os.urandom(4).hex()
    demo = _start_demo("--rpa", "--port", str(port), "--session", session)
    try:
        assert demo.stdout is not None
        banner = "".join(demo.stdout.readline() for _ in range(4))
        assert "the Playwright quote bot is starting" in banner and "running" not in banner, banner
        stream_url = next(line for line in iter(demo.stdout.readline, "") if "curl -N" in line).split("'")[1]
        wait_until(lambda: bool(_children(demo.pid)), 30, "the bot process")
        for bot in _children(demo.pid):
            os.kill(bot, signal.SIGKILL)  # a crash that leaves no word on the session
        said = next((line for line in iter(demo.stdout.readline, "") if "the quote bot" in line), "(nothing)")
        assert f"the quote bot exited with status {-signal.SIGKILL}" in said, said
        with httpx.stream("GET", stream_url, timeout=30) as stream:  # history from the start, ends at the terminal
            frames = [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]
        assert frames and frames[-1]["status"] == "error", frames
        assert f"código {-signal.SIGKILL}" in frames[-1]["mensagem"]
    finally:
        demo.terminate()
        demo.communicate(timeout=15)
