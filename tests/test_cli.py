"""The command line: serve refuses to start without a secret, token and publish work end to end, and a usage
error exits with 64 (EX_USAGE), never with watch's 2 ("cancelled")."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from sse_progress.auth import Role, TokenAuthority

from .conftest import LiveServer


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SSE_PROGRESS_") and k != "REDIS_URL"}
    return subprocess.run(
        [sys.executable, "-m", "sse_progress.cli", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_serve_without_a_secret_refuses_to_start_and_says_what_to_set() -> None:
    result = run_cli("serve", "--port", "1")
    assert result.returncode == 2
    assert "SSE_PROGRESS_SECRET" in result.stderr and "--insecure" in result.stderr


def test_token_prints_a_token_the_server_accepts() -> None:
    result = run_cli("token", "abc", "--publish", "--ttl", "60", env={"SSE_PROGRESS_SECRET": "k1"})
    assert result.returncode == 0
    claims = TokenAuthority(("k1",)).check(result.stdout.strip(), "abc", Role.PUBLISH)
    assert claims is not None and claims.role is Role.PUBLISH


def test_token_without_a_secret_fails_clearly() -> None:
    result = run_cli("token", "abc")
    assert result.returncode == 2 and "SSE_PROGRESS_SECRET" in result.stderr


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


def test_publish_rejects_an_invalid_status() -> None:
    result = run_cli("publish", "abc", "--etapa", "1", "--status", "done", "--redis-url", "redis://127.0.0.1:1")
    assert result.returncode == 2 and "status" in result.stderr


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        ((), "required: command"),
        (("follow", "abc"), "invalid choice: 'follow'"),
        (("serve", "--port", "eighty"), "argument --port: invalid int value"),
        (("demo", "--step-seconds", "fast"), "argument --step-seconds: invalid float value"),
        (("token",), "required: session"),
        (("token", "abc", "--publish", "--admin"), "not allowed with argument --publish"),
        (("publish", "abc"), "required: --etapa"),
        (("watch",), "required: session"),
        (("watch", "abc", "--timeout", "soon"), "argument --timeout: invalid float value"),
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
    assert "2 cancelled" in result.stdout and "64 usage error" in result.stdout
