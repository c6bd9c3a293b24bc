"""``sse-progress sessions`` against a real server: the list, --status, --json, --watch and the exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import httpx
import pytest

from sse_progress.protocol.tokens import Role
from tests.support.processes import ROOT, SECRET, LiveServer, free_port


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    server = LiveServer(None, {"SSE_PROGRESS_STALL_AFTER": "30"})
    server.start()
    yield server
    server.stop()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sse_progress.cli", "sessions", *args],
        cwd=ROOT,
        env={**os.environ, "SSE_PROGRESS_SECRET": SECRET, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _publish(live: LiveServer, session_id: str, etapa: int, status: str = "running", mensagem: str = "") -> None:
    headers = {"Authorization": f"Bearer {live.token(session_id, Role.PUBLISH)}"}
    body = {"etapa_atual": etapa, "total_etapas": 4, "status": status, "mensagem": mensagem}
    assert httpx.post(f"{live.url}/sessions/{session_id}/events", json=body, headers=headers).status_code == 201


def test_lists_sessions_by_status_as_json_and_as_a_table(live: LiveServer) -> None:
    running, failed = "cli-run-" + uuid.uuid4().hex[:6], "cli-err-" + uuid.uuid4().hex[:6]
    _publish(live, running, 2, mensagem="Tela 2")
    _publish(live, failed, 3, status="error", mensagem="Tela 3: CEP recusado")
    listed = _cli("--url", live.url, "--status", "error", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert failed in {row["session_id"] for row in rows} and running not in {row["session_id"] for row in rows}
    assert {row["state"] for row in rows} == {"error"}

    table = _cli("--url", live.url)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("SESSÃO")
    by_session = {line.split()[0]: line for line in lines[1:]}
    assert "em andamento" in by_session[running] and "2/4" in by_session[running]
    assert "FALHOU" in by_session[failed] and "Tela 3: CEP recusado" in by_session[failed]
    assert lines.index(by_session[running]) < lines.index(by_session[failed]), "running first"


def test_watch_prints_each_change_as_it_happens(live: LiveServer) -> None:
    session_id = "cli-watch-" + uuid.uuid4().hex[:6]
    # Known before the watch starts: its first record says the watch is subscribed, so the changes of the
    # session published after it are changes to the watch, whenever the server's index watch looks next.
    warm_up = "cli-warm-" + uuid.uuid4().hex[:6]
    _publish(live, warm_up, 1)
    process = subprocess.Popen(
        [sys.executable, "-m", "sse_progress.cli", "sessions", "--watch", "--json", "--url", live.url],
        cwd=ROOT,
        env={**os.environ, "SSE_PROGRESS_SECRET": SECRET},
        stdout=subprocess.PIPE,
        text=True,
    )
    seen: list[dict[str, object]] = []
    subscribed, finished = threading.Event(), threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            record = json.loads(line)
            seen.append(record)
            if record["session_id"] == warm_up:
                subscribed.set()
            if record["session_id"] == session_id and record["change"] == "finished":
                finished.set()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert subscribed.wait(30), seen
        _publish(live, session_id, 1)
        _publish(live, session_id, 4, status="success")
        assert finished.wait(30), seen
    finally:
        process.terminate()
        process.wait(10)
    ours = [record for record in seen if record["session_id"] == session_id]
    assert ours[-1]["state"] == "success"


def test_exit_codes(live: LiveServer) -> None:
    assert _cli("--url", f"http://127.0.0.1:{free_port()}").returncode == 69  # nothing listens there
    assert _cli("--url", live.url, "--status", "stuck").returncode == 64
    assert _cli("--url", live.url, "--limit", "0").returncode == 64
    subscriber = live.token("abc", Role.SUBSCRIBE)
    assert _cli("--url", live.url, "--token", subscriber).returncode == 1
    assert _cli("--url", live.url, "--token", live.token("*", Role.OBSERVE)).returncode == 0
