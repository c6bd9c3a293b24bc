"""End to end: the RPA example job drives Chromium through the sample quote site, publishes to a real Redis,
and the server streams it back, over SSE to a raw reader and to the demo page open in a second Chromium.

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
from playwright.sync_api import Page, expect
from web_support import WAIT_MS, Console, record_what_the_page_shows, seen_on_the_page

from examples.rpa_quote.job import ROTEIRO, chromium_executable, respostas_do_roteiro
from examples.rpa_quote.quote_site import TOTAL_TELAS, brl, cotacao_final, estimativas

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

    def start(*extra_args: str, env: dict[str, str] | None = None, session_id: str | None = None) -> Job:
        session_id = session_id or new_session_id()
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


def new_session_id() -> str:
    return f"rpa-test-{uuid.uuid4().hex[:10]}"


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


def test_the_demo_page_in_a_second_browser_shows_the_job_live(
    server: Any, start_job: Callable[..., Job], page: Page, console: Console
) -> None:
    """What a person sees: the job drives its own Chromium through the quote site while another Chromium, this
    test's, has the demo page open on the session from before the job starts."""
    session_id = new_session_id()
    page.goto(f"{server.url}/?session={session_id}&token={server.token(session_id)}")
    expect(page.locator("#connection")).to_have_attribute("data-state", "streaming")
    expect(page.locator("#transport")).to_have_text("Server-Sent Events")
    record_what_the_page_shows(page)

    job = start_job(session_id=session_id)
    assert job.wait() == 0, job.log()

    result = page.locator("#result")
    expect(result).to_be_visible(timeout=WAIT_MS)
    expect(result).to_have_attribute("data-state", "success")
    expect(result.locator(".result-icon")).to_have_text("✓")
    expect(page.locator("#result-title")).to_have_text("Concluído com sucesso")
    expect(page.locator("#result-message")).to_have_text("Cotação concluída")
    expect(page.locator("#percent")).to_have_text("100%")
    expect(page.locator("#step")).to_have_text(f"{TOTAL_TELAS}/{TOTAL_TELAS}")
    expect(page.locator("#connection")).to_have_attribute("data-state", "done")

    # As it happened: "Abrindo o navegador" (step 0), each screen exactly once and in order, the estimates
    # table with screen 5 (before screen 6), and the banner last.
    seen = seen_on_the_page(page)
    mensagens = ["Abrindo o navegador", *(passo.mensagem for passo in ROTEIRO)]
    assert [value for kind, value in seen if kind == "message"] == [*mensagens, "Cotação concluída"], seen
    assert [value for kind, value in seen if kind == "step"] == list(range(TOTAL_TELAS + 1)), seen
    tela_5 = seen.index(("message", ROTEIRO[4].mensagem))
    assert seen[tela_5 : tela_5 + 4] == [
        ("message", ROTEIRO[4].mensagem), ("step", 5), ("estimates", 5), ("message", ROTEIRO[5].mensagem),
    ], seen  # fmt: skip
    assert [kind for kind, _ in seen].count("estimates") == 1, seen
    assert seen[-1] == ("result", "success"), seen

    # As it stays: the list of steps, the estimates the bot scraped and the final quote, in pt-BR.
    steps = page.locator("#steps li")
    assert steps.evaluate_all("items => items.map(i => Number(i.dataset.step))") == list(range(TOTAL_TELAS + 1))
    assert steps.locator(".step-text").all_inner_texts() == mensagens

    respostas = respostas_do_roteiro()
    estimates = page.locator("#estimates")
    expect(estimates.locator("thead th")).to_have_text(["Seguradora", "Valor", "Franquia"])
    rows = estimates.locator("tbody tr").evaluate_all(
        "rows => rows.map(r => Array.from(r.cells, c => c.innerText.replace(/\\u00a0/g, ' ')))"
    )
    assert rows == [[e["seguradora"], brl(e["valor"]), brl(e["franquia"])] for e in estimativas(respostas)]

    cotacao = cotacao_final(respostas)
    labels = page.locator("#final-quote dt").all_inner_texts()
    values = [text.replace("\xa0", " ") for text in page.locator("#final-quote dd").all_inner_texts()]
    assert dict(zip(labels, values, strict=True)) == {
        "Número": cotacao["numero"],
        "Seguradora": cotacao["seguradora"],
        "Cobertura": cotacao["cobertura"],
        "Prêmio total": brl(cotacao["premio_total"]),
        "Franquia": brl(cotacao["franquia"]),
        "Parcelas": str(cotacao["parcelas"]),
        "Valor da parcela": brl(cotacao["valor_parcela"]),
        "Forma de pagamento": cotacao["forma_pagamento"],
    }
    console.assert_quiet()


def test_the_demo_page_names_the_screen_that_broke(
    server: Any, start_job: Callable[..., Job], page: Page, console: Console
) -> None:
    session_id = new_session_id()
    page.goto(f"{server.url}/?session={session_id}&token={server.token(session_id)}")
    expect(page.locator("#connection")).to_have_attribute("data-state", "streaming")

    job = start_job("--break-at", "7", session_id=session_id)
    assert job.wait() == 1, job.log()

    result = page.locator("#result")
    expect(result).to_be_visible(timeout=WAIT_MS)
    expect(result).to_have_attribute("data-state", "error")
    expect(result).to_have_attribute("role", "alert")
    expect(page.locator("#result-title")).to_have_text("O processo falhou")
    expect(page.locator("#result-message")).to_contain_text("Tela 7 quebrou: o site respondeu com uma página de erro")
    expect(page.locator("#progressbar")).to_have_attribute("data-status", "error")
    steps = page.locator("#steps li").evaluate_all("items => items.map(i => Number(i.dataset.step))")
    assert steps == list(range(7)), steps  # screens 1–6 went through, after "Abrindo o navegador"
    expect(page.locator("#final-quote-card")).to_be_hidden()
    console.assert_quiet()
