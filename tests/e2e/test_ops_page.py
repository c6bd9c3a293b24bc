"""The ops page (web/ops.html) in Chromium, served by a real server under its CSP, following real jobs live.

Rows appear, move and change state without a reload; a silent job is flagged stalled and leaves that state when
it reports again; a failed job shows its step and message; the step-duration chart marks the slow step.
``SSE_PROGRESS_SCREENSHOT=1`` rewrites docs/ops-page.png.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect
from web_support import Console

from sse_progress import ProgressTracker
from sse_progress.protocol.tokens import Role
from tests.support.processes import LiveServer, RedisServer

pytestmark = pytest.mark.e2e

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "ops-page.png"
TAKE_SCREENSHOT = os.environ.get("SSE_PROGRESS_SCREENSHOT") == "1"
STALL_AFTER = 3.0
TOTAL = 6
SLOW_STEP = 3


@pytest.fixture(scope="module")
def redis_ops_server() -> Iterator[LiveServer]:
    """A server of its own on a Redis of its own: its step figures hold only what a test publishes."""
    store = RedisServer()
    store.start()
    live = LiveServer(store.url)
    live.start()
    yield live
    live.stop()
    store.stop()


@pytest.fixture(scope="module")
def ops_server() -> Iterator[LiveServer]:
    live = LiveServer(None, {"SSE_PROGRESS_STALL_AFTER": str(STALL_AFTER)})
    live.start()
    yield live
    live.stop()


def _publish(live: LiveServer, session_id: str, etapa: int, status: str = "running", mensagem: str = "") -> None:
    headers = {"Authorization": f"Bearer {live.token(session_id, Role.PUBLISH)}"}
    body = {"etapa_atual": etapa, "total_etapas": TOTAL, "status": status, "mensagem": mensagem or f"Tela {etapa}"}
    response = httpx.post(f"{live.url}/sessions/{session_id}/events", json=body, headers=headers, timeout=10)
    assert response.status_code == 201, response.text


def _row(page: Page, session_id: str):  # type: ignore[no-untyped-def]
    return page.locator(f'#sessions-body tr[data-session="{session_id}"]')


def _order(page: Page) -> list[str]:
    return page.eval_on_selector_all("#sessions-body tr", "rows => rows.map(row => row.dataset.session)")


def test_ops_page_follows_jobs_live(page: Page, console: Console, ops_server: LiveServer) -> None:
    tag = uuid.uuid4().hex[:6]
    done, failed, silent = f"ok-{tag}", f"falha-{tag}", f"mudo-{tag}"
    # Finished jobs whose step 3 takes ~0.8 s and the others ~0.1 s: the chart must point at step 3.
    for number in range(2):
        session_id = f"hist{number}-{tag}"
        for etapa in range(1, TOTAL + 1):
            _publish(ops_server, session_id, etapa)
            time.sleep(0.8 if etapa == SLOW_STEP else 0.1)
        _publish(ops_server, session_id, TOTAL, status="success", mensagem="Cotação concluída")

    page.goto(f"{ops_server.url}/ops?token={ops_server.token('*', Role.OBSERVE)}")
    expect(page.locator("#connection")).to_have_attribute("data-state", "streaming")
    page.evaluate("window.__notReloaded = true")

    _publish(ops_server, done, 1)
    expect(_row(page, done)).to_have_attribute("data-state", "running")
    _publish(ops_server, silent, 1)
    _publish(ops_server, failed, 1)
    _publish(ops_server, failed, 2, status="error", mensagem="Tela 2: o site recusou o CEP")
    expect(_row(page, failed)).to_have_attribute("data-state", "error")
    expect(_row(page, failed)).to_contain_text("Falhou na etapa 2 de 6")
    expect(_row(page, failed)).to_contain_text("Tela 2: o site recusou o CEP")
    expect(_row(page, failed).locator(".badge")).to_have_text("✕Falhou")

    # The silent job stalls (the other keeps reporting), and moves to the top of the table.
    deadline = time.monotonic() + STALL_AFTER + 1.5
    etapa = 1
    while time.monotonic() < deadline:
        etapa = min(TOTAL - 1, etapa + 1)
        _publish(ops_server, done, etapa)
        time.sleep(0.5)
    expect(_row(page, silent)).to_have_attribute("data-state", "stalled", timeout=10_000)
    expect(_row(page, silent).locator(".badge")).to_have_text("⚠Travado")
    expect(_row(page, silent)).to_contain_text("limite")
    assert _order(page)[0] == silent, _order(page)
    expect(_row(page, silent).locator("a")).to_have_attribute("href", f"/?session={silent}&token=" + _token_of(page))
    expect(page.locator("#count-stalled")).to_have_text("1")
    if TAKE_SCREENSHOT:  # the moment worth showing: one stalled, one failed, one running, some finished
        page.set_viewport_size({"width": 1100, "height": 900})
        page.screenshot(path=str(SCREENSHOT), full_page=True, animations="disabled")

    # It reports again: no longer stalled. The running job finishes and moves below the running ones.
    _publish(ops_server, silent, 2)
    expect(_row(page, silent)).to_have_attribute("data-state", "running")
    expect(page.locator("#count-stalled")).to_have_text("0")
    _publish(ops_server, done, TOTAL, status="success", mensagem="Cotação concluída")
    expect(_row(page, done)).to_have_attribute("data-state", "success")
    expect(_row(page, done).locator('[role="progressbar"]')).to_have_attribute("aria-valuenow", "100")
    order = _order(page)
    assert order.index(silent) < order.index(failed) < order.index(done), order

    page.evaluate("window.__ops.refreshFigures()")
    expect(page.locator("#steps-chart")).to_have_attribute("data-slowest", str(SLOW_STEP))
    expect(page.locator(f'#steps-chart g.slowest[data-step="{SLOW_STEP}"]')).to_have_count(1)
    expect(page.locator("#finished-chart svg rect.success")).not_to_have_count(0)
    assert page.evaluate("window.__notReloaded") is True
    console.assert_quiet()


def test_a_tie_on_the_median_marks_the_step_with_the_higher_p95(
    page: Page, console: Console, redis_ops_server: LiveServer, tmp_path: Path
) -> None:
    # Five jobs published back to back straight into Redis: every step takes a millisecond or two, so every
    # median is 0 s; in one job step 3 takes 0.6 s, which only the p95 of step 3 shows.
    tail_step = 3
    for number in range(5):
        job = ProgressTracker(TOTAL, f"tie{number}-{uuid.uuid4().hex[:6]}", "redis", redis_ops_server.redis_url,
                              outbox_dir=tmp_path)  # fmt: skip
        for etapa in range(1, TOTAL + 1):
            job.update_progress(etapa, f"Tela {etapa}")
            if number == 0 and etapa == tail_step:
                time.sleep(0.6)
        job.complete("Cotação concluída")
        job.close()
    figures = httpx.get(
        f"{redis_ops_server.url}/ops/figures", params={"token": redis_ops_server.token("*", Role.OBSERVE)}, timeout=10
    ).json()["steps"]
    assert len({step["median_s"] for step in figures}) == 1, figures  # the premise: every median ties
    assert max(figures, key=lambda step: step["p95_s"])["step"] == tail_step, figures

    page.goto(f"{redis_ops_server.url}/ops?token={redis_ops_server.token('*', Role.OBSERVE)}")
    expect(page.locator("#steps-chart")).to_have_attribute("data-slowest", str(tail_step))
    expect(page.locator(f'#steps-chart g.slowest[data-step="{tail_step}"]')).to_have_count(1)
    # Highlighted in amber, not in the red that means "falharam" in the chart below.
    tail_fill = page.eval_on_selector("#steps-chart g.slowest .p95", "bar => getComputedStyle(bar).fill")
    failed_fill = page.eval_on_selector(".swatch.error", "swatch => getComputedStyle(swatch).backgroundColor")
    assert tail_fill != failed_fill, (tail_fill, failed_fill)
    expect(page.locator(".hint").first).to_contain_text("Travados primeiro")
    console.assert_quiet()


def test_a_long_session_id_stays_on_one_line(page: Page, console: Console, ops_server: LiveServer) -> None:
    session_id = "cotacao-seguro-auto-" + uuid.uuid4().hex + "-x"  # 54 characters
    _publish(ops_server, session_id, 1)
    page.goto(f"{ops_server.url}/ops?token={ops_server.token('*', Role.OBSERVE)}")
    link = _row(page, session_id).locator("a")
    expect(link).to_have_text(session_id)
    line_height = float(link.evaluate("a => parseFloat(getComputedStyle(a).lineHeight)"))
    box = link.bounding_box()
    assert box is not None and box["height"] < 1.5 * line_height, f"the session id wraps: {box}, line {line_height}"
    expect(link).to_have_attribute("title", session_id)  # the whole id, where the cell cuts it short
    console.assert_quiet()


def _token_of(page: Page) -> str:
    return str(page.evaluate("new URLSearchParams(location.search).get('token')"))


def test_ops_page_is_readable_on_a_phone(page: Page, console: Console, ops_server: LiveServer) -> None:
    session_id = "phone-" + uuid.uuid4().hex[:6]
    _publish(ops_server, session_id, 2)
    page.set_viewport_size({"width": 390, "height": 800})
    page.goto(f"{ops_server.url}/ops?token={ops_server.token('*', Role.OBSERVE)}")
    expect(_row(page, session_id)).to_have_attribute("data-state", "running")
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px on a phone"
    # No table to scroll sideways either: each session is a card whose every part is on screen.
    table_overflow = page.evaluate("(w => w.scrollWidth - w.clientWidth)(document.querySelector('.table-wrap'))")
    assert table_overflow <= 0, f"the session table scrolls sideways by {table_overflow}px on a phone"
    box = _row(page, session_id).locator('[role="progressbar"]').bounding_box()
    assert box is not None and box["x"] + box["width"] <= 390
    console.assert_quiet()


def test_ops_page_says_what_to_do_without_a_valid_token(page: Page, ops_server: LiveServer) -> None:
    page.goto(f"{ops_server.url}/ops?token={ops_server.token('abc', Role.SUBSCRIBE)}")
    expect(page.locator("#notice")).to_contain_text("token de observação")
    expect(page.locator("#connection")).to_have_attribute("data-state", "error")
