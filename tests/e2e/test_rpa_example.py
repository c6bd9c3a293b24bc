"""End to end: the RPA example job drives Chromium through the sample quote site, publishes to a real Redis,
and the server streams it back over SSE.

Needs Chromium (``/usr/bin/chromium`` or ``$SSE_PROGRESS_CHROMIUM``): without it these tests fail, they do
not skip. Uses the ``server`` fixture of ``tests/conftest.py`` (a uvicorn of the app on a spawned Redis).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.rpa_quote.job import chromium_executable, respostas_do_roteiro
from examples.rpa_quote.quote_site import TOTAL_TELAS, cotacao_final, estimativas

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
JOB_TIMEOUT_S = 90.0  # generous: a cold Chromium on a loaded CI machine; a normal run takes a few seconds
EXIT_GRACE_S = 10.0  # how long the stream may stay open after the job exited (see follow_session)


@pytest.fixture(scope="module", autouse=True)
def chromium() -> str:
    path = chromium_executable()
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"Chromium is required by the RPA example tests and was not found at {path}: install Debian's "
            "chromium package (apt-get install chromium) or point SSE_PROGRESS_CHROMIUM at a Chromium binary",
            pytrace=False,
        )
    return path


# --------------------------------------------------------------------------------------------------------
# Running the job and following its session
# --------------------------------------------------------------------------------------------------------


@dataclass
class Job:
    session_id: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=JOB_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the job did not exit within {JOB_TIMEOUT_S}s; its output:\n{self.log()}")


@pytest.fixture
def start_job(server: Any, tmp_path: Path) -> Iterator[Callable[..., Job]]:
    """Starts ``python -m examples.rpa_quote.job`` publishing to the server's Redis under a fresh session."""
    jobs: list[Job] = []

    def start(*extra_args: str, env: dict[str, str] | None = None) -> Job:
        session_id = f"rpa-test-{uuid.uuid4().hex[:10]}"
        log_path = tmp_path / f"{session_id}.log"
        command = [
            sys.executable, "-m", "examples.rpa_quote.job",
            "--progress-tracker", "redis", "--redis-url", server.redis_url,
            "--session", session_id, "--slow-mo", "0", *extra_args,
        ]  # fmt: skip
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )  # fmt: skip
        job = Job(session_id, process, log_path)
        jobs.append(job)
        return job

    yield start
    for job in jobs:  # a failed test must not leave a browser behind
        if job.process.poll() is None:
            job.process.kill()
            job.process.wait()


@dataclass(frozen=True)
class Frame:
    kind: str
    id: str
    data: dict[str, Any]


def follow_session(server: Any, job: Job) -> list[Frame]:
    """Reads the session's SSE stream from its first event until the server ends it after the terminal one."""
    url = f"{server.url}/sessions/{job.session_id}/events"
    params = {"token": server.token(job.session_id, role="subscribe"), "last_event_id": "earliest"}
    deadline = time.monotonic() + JOB_TIMEOUT_S
    exited_at: float | None = None
    frames: list[Frame] = []
    fields: dict[str, str] = {}
    with httpx.stream("GET", url, params=params, timeout=httpx.Timeout(10.0, read=JOB_TIMEOUT_S)) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            # Heartbeat comments arrive while nothing else does, so these checks run even on a stalled job.
            now = time.monotonic()
            if exited_at is None and job.process.poll() is not None:
                exited_at = now
            # A job publishes its terminal event before it exits: a stream still open well after the exit means
            # the job died without one (a crash, an import error).
            if now > deadline or (exited_at is not None and now - exited_at > EXIT_GRACE_S):
                pytest.fail(
                    f"the stream did not end (job exit status: {job.process.poll()}); frames: {frames}\n"
                    f"job output:\n{job.log()}"
                )
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                fields[name] = f"{fields[name]}\n{value}" if name == "data" and name in fields else value
                continue
            if "data" in fields:  # a blank line ends a frame; the opening "retry:" block has no data
                frames.append(Frame(fields.get("event", "message"), fields.get("id", ""), json.loads(fields["data"])))
            fields = {}
    return frames


def _id_key(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def check_stream(frames: list[Frame], job: Job) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Checks what every stream must satisfy; returns the non-terminal events and the terminal one."""
    context = f"frames: {[f.data for f in frames]}\njob output:\n{job.log()}"
    assert frames, context
    assert all(f.kind == "progress_update" for f in frames), context
    ids = [_id_key(f.id) for f in frames]
    assert ids == sorted(set(ids)), f"event ids must increase strictly: {[f.id for f in frames]}"
    events = [f.data for f in frames]
    assert all(e["session_id"] == job.session_id and e["total_etapas"] == TOTAL_TELAS for e in events), context
    *progress, terminal = events
    assert all(e["status"] == "running" for e in progress), context
    assert terminal["status"] in ("success", "error"), context
    return progress, terminal


def _etapas(progress: list[dict[str, Any]]) -> list[int]:
    return [e["etapa_atual"] for e in progress]


# --------------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------------


def test_job_reports_every_screen_the_estimates_and_the_final_quote(server: Any, start_job: Callable[..., Job]) -> None:
    job = start_job()
    frames = follow_session(server, job)
    assert job.wait() == 0, job.log()
    assert f"session: {job.session_id}" in job.log()

    progress, terminal = check_stream(frames, job)
    # "Opening the browser" (0), then each of the 15 screens exactly once, in order.
    counts = Counter(_etapas(progress))
    assert [etapa for etapa, n in counts.items() if n > 1] == [], f"steps reported twice: {counts}"
    assert _etapas(progress) == list(range(TOTAL_TELAS + 1)), job.log()
    assert [e["mensagem"] for e in progress[1:4]] == [
        "Tela 1: dados do segurado", "Tela 2: CPF e contato", "Tela 3: endereço (CEP)",
    ]  # fmt: skip

    # Screen 5's table, scraped from the page, equals what the site computed from the answers typed.
    respostas = respostas_do_roteiro()
    (tela_5,) = [e for e in progress if e["etapa_atual"] == 5]
    assert tela_5["dados_extra"]["estimativas_tela_5"] == estimativas(respostas)
    assert [x["seguradora"] for x in tela_5["dados_extra"]["estimativas_tela_5"]] == [
        "Porto", "Azul", "Allianz", "Tokio Marine", "HDI",
    ]  # fmt: skip
    assert all(e["dados_extra"] is None for e in progress if e["etapa_atual"] != 5)

    assert terminal["status"] == "success", terminal
    assert terminal["percentual"] == 100.0
    assert terminal["mensagem"] == "Cotação concluída"
    assert terminal["dados_extra"]["cotacao_final"] == cotacao_final(respostas)
    assert terminal["eta_seconds"] == 0


@pytest.mark.parametrize(
    ("break_mode", "reason"),
    [("error", "página de erro: Erro 500"), ("no-button", "botão 'Continuar' não encontrado")],
    ids=["error-page", "no-button"],
)
def test_a_broken_screen_fails_the_session_naming_the_screen(
    server: Any, start_job: Callable[..., Job], break_mode: str, reason: str
) -> None:
    job = start_job("--break-at", "7", "--break-mode", break_mode)
    frames = follow_session(server, job)
    assert job.wait() == 1, job.log()

    progress, terminal = check_stream(frames, job)
    assert _etapas(progress) == list(range(7)), job.log()  # screens 1–6 went through
    assert terminal["status"] == "error", terminal
    assert terminal["mensagem"].startswith("Tela 7 quebrou: "), terminal
    assert reason in terminal["mensagem"], terminal


def test_a_missing_chromium_fails_the_session_with_a_clear_message(
    server: Any, start_job: Callable[..., Job], tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-chromium-here")
    job = start_job(env={"SSE_PROGRESS_CHROMIUM": missing})
    frames = follow_session(server, job)
    assert job.wait() == 1, job.log()

    progress, terminal = check_stream(frames, job)
    assert progress == []
    assert terminal["status"] == "error"
    assert terminal["mensagem"] == f"Chromium não encontrado em {missing} (defina SSE_PROGRESS_CHROMIUM)"
