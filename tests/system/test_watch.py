"""``sse-progress watch`` as a user runs it: a subprocess against a real server, exit codes and output."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from rich.console import Console

from sse_progress import ProgressTracker
from sse_progress.follower.watch import WatchOptions, describe, format_eta, watch
from tests.support.processes import LiveServer, free_port

Envelope = dict[str, Any]
EXIT = {"success": 0, "error": 1, "cancelled": 2}


def tracker(server: LiveServer, session_id: str, total: int = 3) -> ProgressTracker:
    return ProgressTracker(total_etapas=total, session_id=session_id, tipo="redis", redis_url=server.redis_url)


def finish(job: ProgressTracker, status: str) -> Envelope | None:
    if status == "success":
        return job.complete("Cotação concluída")
    if status == "error":
        return job.fail("Tela 3: site fora do ar")
    return job.cancel("cancelada pelo usuário")


def environment(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SSE_PROGRESS_") and k not in ("REDIS_URL", "PORT")}
    return {**base, **extra}


def start_watch(server: LiveServer, session_id: str, *args: str, **env: str) -> subprocess.Popen[str]:
    """``sse-progress watch`` minting its token from the server's secret unless ``env`` or ``args`` give one."""
    return subprocess.Popen(
        [sys.executable, "-m", "sse_progress.cli", "watch", session_id, "--url", server.url, *args],
        env=environment(**{"SSE_PROGRESS_SECRET": server.secret, **env}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )


def run_watch(server: LiveServer, session_id: str, *args: str, **env: str) -> tuple[int, str, str]:
    process = start_watch(server, session_id, *args, **env)
    stdout, stderr = process.communicate(timeout=60)
    return process.returncode, stdout, stderr


def json_lines(text: str) -> list[Envelope]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("status", ["success", "error", "cancelled"])
def test_json_prints_each_event_once_and_exits_with_the_sessions_outcome(
    server: LiveServer, session_id: str, status: str
) -> None:
    job = tracker(server, session_id)
    published = [job.update_progress(1, "Tela 1 preenchida")]
    process = start_watch(server, session_id, "--json", "--timeout", "60")
    assert process.stdout is not None
    first = json.loads(process.stdout.readline())  # connected: the snapshot of step 1
    published += [job.update_progress(2, "Tela 2 — açúcar"), finish(job, status)]
    job.close()
    rest, stderr = process.communicate(timeout=60)

    received = [first, *json_lines(rest)]
    assert process.returncode == EXIT[status], stderr
    assert [envelope["id"] for envelope in received] == [envelope["id"] for envelope in published if envelope]
    assert [envelope["type"] for envelope in received] == ["snapshot", "progress_update", "progress_update"]
    assert received[-1]["status"] == status
    assert "Tela 2 — açúcar" in rest  # ensure_ascii=False: non-ASCII as is


def test_json_resumes_across_a_server_restart_without_repeating_or_losing_a_step(
    server: LiveServer, session_id: str
) -> None:
    job = tracker(server, session_id, total=6)
    token = server.token(session_id)
    process = start_watch(server, session_id, "--json", "--last-event-id", "0", SSE_PROGRESS_TOKEN=token)
    assert process.stdout is not None
    published = [job.update_progress(1, "Tela 1")]
    lines = [process.stdout.readline()]
    published.append(job.update_progress(2, "Tela 2"))
    lines.append(process.stdout.readline())  # the second line proves the stream is live when it is cut

    server.restart()
    published += [job.update_progress(etapa, f"Tela {etapa}") for etapa in (3, 4, 5, 6)]
    published.append(job.complete("ok"))
    job.close()
    rest, stderr = process.communicate(timeout=60)

    received = json_lines("".join(lines) + rest)
    assert process.returncode == 0, stderr
    assert [envelope["id"] for envelope in received] == [envelope["id"] for envelope in published if envelope]
    assert [envelope["etapa_atual"] for envelope in received] == [1, 2, 3, 4, 5, 6, 6]
    assert "reconnecting" in stderr  # the drop is reported on stderr, never in the JSON on stdout


def test_timeout_on_a_session_that_never_ends_exits_3(server: LiveServer, session_id: str) -> None:
    job = tracker(server, session_id)
    job.update_progress(1, "Tela 1")
    job.close()
    started = time.monotonic()
    code, stdout, stderr = run_watch(server, session_id, "--json", "--timeout", "1")
    assert code == 3, stderr
    assert time.monotonic() - started < 20
    assert "did not end within 1 s" in stderr
    # The timeout counts from the start, connecting included: on a loaded machine the snapshot may not make it.
    shown = [envelope["etapa_atual"] for envelope in json_lines(stdout)]
    assert shown in ([], [1])
    assert ("(last: step 1/3, running)" in stderr) == bool(shown)


def test_a_server_never_reached_exits_5_with_one_line_within_seconds(session_id: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    process = subprocess.run(
        [sys.executable, "-m", "sse_progress.cli", "watch", session_id, "--url", url, "--json"],
        env=environment(SSE_PROGRESS_SECRET="s" * 32),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 5, process.stderr
    assert time.monotonic() - started < 15  # three attempts, about 3 s, plus the interpreter's start
    assert process.stdout == ""
    lines = process.stderr.splitlines()
    assert len(lines) == 1, process.stderr
    assert lines[0].startswith(f"sse-progress watch: cannot reach the server at {url}: ConnectError")


def test_timeout_on_a_session_with_no_events_yet_exits_3(server: LiveServer, session_id: str) -> None:
    code, stdout, stderr = run_watch(server, session_id, "--timeout", "1")
    assert code == 3, stderr
    assert stdout == ""


def test_a_bad_token_exits_4_with_the_servers_reason(server: LiveServer, session_id: str) -> None:
    code, stdout, stderr = run_watch(server, session_id, "--json", "--token", "forged")
    assert code == 4
    assert stdout == ""
    assert "401" in stderr and "invalid token" in stderr


def test_no_token_at_all_exits_4_and_says_how_to_give_one(server: LiveServer, session_id: str) -> None:
    code, _, stderr = run_watch(server, session_id, "--json", SSE_PROGRESS_SECRET="")
    assert code == 4
    assert "missing token" in stderr and "SSE_PROGRESS_TOKEN" in stderr


def test_a_token_for_another_session_exits_4(server: LiveServer, session_id: str) -> None:
    code, _, stderr = run_watch(server, session_id, "--token", server.token("other-session"))
    assert code == 4 and "403" in stderr


def test_an_invalid_session_id_is_a_usage_error_exit_64(server: LiveServer) -> None:
    code, _, stderr = run_watch(server, "no/such id")
    assert code == 64 and "invalid session id" in stderr


def test_a_pipe_gets_one_plain_line_per_event(server: LiveServer, session_id: str) -> None:
    job = tracker(server, session_id)
    job.update_progress(1, "Tela 1 preenchida")
    job.update_progress(2, "Tela 2 preenchida")
    job.complete("Cotação concluída")
    job.close()
    code, stdout, stderr = run_watch(server, session_id, "--last-event-id", "0")
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("[1/3]  33.3%  running  Tela 1 preenchida  ETA ")
    assert lines[2].startswith("[3/3] 100.0%  success  Cotação concluída  ETA 0:00")
    assert "\x1b" not in stdout  # no escape codes in a pipe


def test_resuming_after_the_terminal_event_prints_nothing_and_exits_with_its_outcome(
    server: LiveServer, session_id: str
) -> None:
    job = tracker(server, session_id)
    job.update_progress(1, "Tela 1")
    terminal = job.cancel("cancelada")
    job.close()
    assert terminal is not None
    code, stdout, stderr = run_watch(server, session_id, "--json", "--last-event-id", terminal["id"])
    assert (code, stdout) == (2, ""), stderr


async def test_a_terminal_gets_a_progress_bar_and_the_outcome(server: LiveServer, session_id: str) -> None:
    job = tracker(server, session_id)
    job.update_progress(1, "Tela 1 preenchida")
    job.update_progress(2, "Tela 2 preenchida")
    job.complete("Cotação [bold]concluída[/bold]")
    job.close()
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=140, color_system=None)
    options = WatchOptions(session_id, server.url, server.token(session_id), timeout=30, last_event_id="0")
    code = await watch(options, out=screen, err=io.StringIO(), console=console)
    assert code == 0
    output = screen.getvalue()
    assert "3/3" in output and "100.0%" in output and "ETA 0:00" in output
    # The last refresh of the bar, and the closing line; messages are shown literally, never as markup.
    assert "3/3 100.0% ETA 0:00 Cotação [bold]concluída[/bold]" in output
    assert output.rstrip().endswith("success: Cotação [bold]concluída[/bold]")


def test_describe_and_format_eta() -> None:
    envelope = {
        "type": "reset", "etapa_atual": 3, "total_etapas": 15, "percentual": 20.0, "status": "running",
        "mensagem": "Tela 3", "eta_seconds": 41.5,
    }  # fmt: skip
    assert describe(envelope) == "[3/15]  20.0%  running  Tela 3  ETA 0:42  (reset)"
    assert format_eta(None) == "--:--"
    assert format_eta(3725) == "1:02:05"
    assert format_eta(0.0) == "0:00"
