"""The demo page (sse_progress/web/index.html) following real jobs in Chromium, served by the real server under its CSP.

Every wait is on DOM state (``expect`` / ``wait_for_function``), never a sleep. ``SSE_PROGRESS_SCREENSHOT=1``
rewrites docs/demo-finished.png from the success test.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect
from web_support import TOTAL_ETAPAS, WAIT_MS, Console, Nginx, publish_steps, wait_for

from sse_progress import ProgressTracker

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO_ROOT / "docs" / "demo-finished.png"
TAKE_SCREENSHOT = os.environ.get("SSE_PROGRESS_SCREENSHOT") == "1"
FINAL_QUOTE = {"numero": "COT-1A2B3C4D", "seguradora": "Azul", "premio_total": 2399.5, "parcelas": 10}


def screenshot_work(etapa: int) -> None:
    """The job's work between steps, only when rendering docs/demo-finished.png: there the steps should take
    believable times (0.4–1.8 s) instead of the test's instant ones. Not a synchronisation: nothing waits on it."""
    if TAKE_SCREENSHOT:
        time.sleep(0.4 + (etapa * 7 % 5) * 0.35)


def open_demo(page: Page, base_url: str, server: Any, session_id: str, transport: str | None = None) -> None:
    url = f"{base_url}/?session={session_id}&token={server.token(session_id)}"
    if transport:
        url += f"&transport={transport}"
    page.goto(url)


def listed_steps(page: Page) -> list[int]:
    return [int(step) for step in page.locator("#steps li").evaluate_all("items => items.map(i => i.dataset.step)")]


def record_connection_states(page: Page) -> None:
    """Keeps every value #connection's data-state takes from now on in window.__connectionStates."""
    page.evaluate(
        """() => {
            const el = document.getElementById("connection");
            window.__connectionStates = [el.dataset.state];
            new MutationObserver(() => window.__connectionStates.push(el.dataset.state))
                .observe(el, { attributes: true, attributeFilter: ["data-state"] });
        }"""
    )


def expect_success(page: Page) -> None:
    result = page.locator("#result")
    expect(result).to_be_visible(timeout=WAIT_MS)
    expect(result).to_have_attribute("data-state", "success")
    expect(result).to_contain_text("Concluído com sucesso")
    expect(result).to_contain_text("Cotação concluída")
    expect(result.locator(".result-icon")).to_have_text("✓")
    expect(page.locator("#percent")).to_have_text("100%")
    expect(page.locator("#progressbar")).to_have_attribute("aria-valuenow", "100")
    expect(page.locator("#connection")).to_have_attribute("data-state", "done")


def test_page_follows_a_job_to_success(
    page: Page, console: Console, server: Any, sid: str, tracker: ProgressTracker
) -> None:
    # Steps published before the page opens come from the retained history, the rest live.
    publish_steps(tracker, range(1, 4), screenshot_work)
    open_demo(page, server.url, server, sid)
    expect(page.locator("#step")).to_have_text("3/15")
    expect(page.locator("#connection")).to_have_attribute("data-state", "streaming")

    publish_steps(tracker, range(4, 8), screenshot_work)
    expect(page.locator("#step")).to_have_text("7/15")
    expect(page.locator("#message")).to_have_text("Tela 7: preenchida")
    expect(page.locator("#message")).to_have_attribute("aria-live", "polite")
    expect(page.locator("#percent")).to_have_text("46,7%")
    expect(page.locator("#progressbar")).to_have_attribute("aria-valuenow", "46.7")
    expect(page.locator("#eta")).to_contain_text("≈")

    # The estimates of step 5: every key as a column, money in pt-BR.
    estimates = page.locator("#estimates")
    expect(estimates.locator("tbody tr")).to_have_count(3)
    expect(estimates.locator("thead th")).to_have_text(["Seguradora", "Valor", "Franquia"])
    first_row = estimates.locator("tbody tr").first.locator("td").all_inner_texts()
    assert [cell.replace("\xa0", " ") for cell in first_row] == ["Porto", "R$ 1.234,50", "R$ 3.000,00"]

    publish_steps(tracker, range(8, TOTAL_ETAPAS + 1), screenshot_work)
    screenshot_work(TOTAL_ETAPAS + 1)
    tracker.complete("Cotação concluída", {"cotacao_final": FINAL_QUOTE})
    expect_success(page)
    expect(page.locator("#step")).to_have_text("15/15")
    final_quote = page.locator("#final-quote dd").all_inner_texts()
    assert [text.replace("\xa0", " ") for text in final_quote] == ["COT-1A2B3C4D", "Azul", "R$ 2.399,50", "10"]
    assert listed_steps(page) == list(range(1, TOTAL_ETAPAS + 1))
    console.assert_quiet()

    if TAKE_SCREENSHOT:
        page.set_viewport_size({"width": 1000, "height": 900})
        page.screenshot(path=str(SCREENSHOT), full_page=True, animations="disabled")


def test_page_resumes_after_a_server_restart(page: Page, server: Any, sid: str, tracker: ProgressTracker) -> None:
    open_demo(page, server.url, server, sid)
    expect(page.locator("#connection")).to_have_attribute("data-state", "streaming")
    publish_steps(tracker, range(1, 6))
    expect(page.locator("#step")).to_have_text("5/15")
    record_connection_states(page)

    server.restart()
    publish_steps(tracker, range(6, TOTAL_ETAPAS + 1))
    tracker.complete("Cotação concluída")

    expect_success(page)
    assert listed_steps(page) == list(range(1, TOTAL_ETAPAS + 1)), "each step must be listed exactly once"
    states = page.evaluate("() => window.__connectionStates")
    assert "reconnecting" in states, f"the restart was not noticed: {states}"


def test_page_makes_a_failure_unmistakable(
    page: Page, console: Console, server: Any, sid: str, tracker: ProgressTracker
) -> None:
    open_demo(page, server.url, server, sid)
    publish_steps(tracker, range(1, 7))
    expect(page.locator("#step")).to_have_text("6/15")
    tracker.fail("Tela 7 quebrou: página de erro: Erro 500")

    result = page.locator("#result")
    expect(result).to_be_visible()
    expect(result).to_have_attribute("data-state", "error")
    expect(result).to_have_attribute("role", "alert")
    expect(result).to_contain_text("O processo falhou")
    expect(result).to_contain_text("Tela 7 quebrou: página de erro: Erro 500")
    expect(result.locator(".result-icon")).to_have_text("✕")
    colours = result.evaluate("el => [getComputedStyle(el).color, getComputedStyle(el).backgroundColor]")
    assert colours == ["rgb(198, 40, 40)", "rgb(253, 236, 234)"], colours  # red on pink, not the success green
    expect(page.locator("#progressbar")).to_have_attribute("data-status", "error")
    expect(page.locator("#percent")).to_have_text("40%")
    expect(page.locator("#connection")).to_have_attribute("data-state", "done")
    assert listed_steps(page) == list(range(1, 7))
    console.assert_quiet()


def test_page_opened_after_the_job_shows_it_all_and_fits_a_phone(
    browser: Any, console: Console, server: Any, sid: str, tracker: ProgressTracker
) -> None:
    publish_steps(tracker, range(1, TOTAL_ETAPAS + 1))
    tracker.complete("Cotação concluída")
    context = browser.new_context(viewport={"width": 360, "height": 740}, is_mobile=True, locale="pt-BR")
    try:
        page = context.new_page()
        console.watch(page)
        open_demo(page, server.url, server, sid)
        expect_success(page)
        assert listed_steps(page) == list(range(1, TOTAL_ETAPAS + 1))
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than a 360px phone"
        assert page.locator('meta[name="viewport"]').count() == 1
        console.assert_quiet()
    finally:
        context.close()


def test_page_without_a_session_explains_how_to_start_one(page: Page, console: Console, server: Any) -> None:
    page.goto(server.url + "/")
    intro = page.locator("#intro")
    expect(intro).to_be_visible()
    expect(intro).to_contain_text("sse-progress demo")
    expect(page.locator("#tracker")).to_be_hidden()
    console.assert_quiet()


def test_page_with_a_bad_token_says_so(page: Page, server: Any, sid: str, tracker: ProgressTracker) -> None:
    publish_steps(tracker, range(1, 2))
    page.goto(f"{server.url}/?session={sid}&token=not-a-token")
    expect(page.locator("#notice")).to_be_visible()
    expect(page.locator("#notice")).to_contain_text("Não foi possível acompanhar esta sessão")
    expect(page.locator("#connection")).to_have_attribute("data-state", "error")
    expect(page.locator("#result")).to_be_hidden()


@pytest.mark.parametrize("buffering_proxy", ["everything", "body"], indirect=True)
def test_auto_falls_back_to_polling_behind_a_buffering_proxy(
    page: Page, server: Any, sid: str, tracker: ProgressTracker, buffering_proxy: Nginx
) -> None:
    # The proxy really withholds the stream: not a byte of the body (not even the `retry:` line the server
    # sends at once), and in "everything" mode not even the response headers, within seconds.
    url = f"{buffering_proxy.url}/sessions/{sid}/events"
    with (
        pytest.raises(httpx.ReadTimeout),
        httpx.stream("GET", url, params={"token": server.token(sid)}, timeout=httpx.Timeout(3.0)) as response,
    ):
        next(response.iter_raw())

    publish_steps(tracker, range(1, 2))
    open_demo(page, buffering_proxy.url, server, sid)
    record_connection_states(page)
    wait_for(
        page,
        "() => document.getElementById('connection').dataset.state === 'polling'",
        message="the client to fall back to poll mode",
    )
    expect(page.locator("#transport")).to_have_text("consulta periódica (poll)")

    publish_steps(tracker, range(2, 8))
    expect(page.locator("#step")).to_have_text("7/15")
    publish_steps(tracker, range(8, TOTAL_ETAPAS + 1))
    tracker.complete("Cotação concluída")
    expect_success(page)
    assert listed_steps(page) == list(range(1, TOTAL_ETAPAS + 1)), "each step must be listed exactly once"


def test_the_page_speaks_whatever_its_text_block_says(
    page: Page, console: Console, server: Any, sid: str, tracker: ProgressTracker
) -> None:
    """Translating the page is editing index.html alone: the #demo-text block holds every text the script shows."""
    english = {
        "locale": "en-US", "currency": "USD", "title": "Job progress",
        "connection": {"idle": "Waiting", "connecting": "Connecting…", "reconnecting": "Reconnecting…",
                       "streaming": "Live", "polling": "Live (polling)", "done": "Finished", "error": "Offline"},
        "result": {"success": "Completed", "error": "The job failed", "cancelled": "Cancelled"},
        "transport": {"sse": "Server-Sent Events", "poll": "polling", "ws": "WebSocket"},
        "invalidAddress": "Invalid address: {error}", "cannotFollow": "Cannot follow this session: {error}",
        "progressValueText": "{percent}, step {step} of {total}", "stepWithoutMessage": "Step {step}",
        "stepDuration": "took {duration}", "etaUnknown": "estimating…", "etaApproximately": "about {duration}",
        "yes": "Yes", "no": "No", "labels": {"premio_total": "Total premium"},
    }  # fmt: skip
    original = (REPO_ROOT / "sse_progress" / "web" / "index.html").read_text()
    block = re.search(r'(<script type="application/json" id="demo-text">)(.*?)(</script>)', original, re.S)
    assert block is not None
    translated = original.replace(block.group(2), json.dumps(english))
    page.route(
        re.compile(r".*/\?session=.*"),
        lambda route: route.fulfill(response=route.fetch(), body=translated),  # the site's own copy of the page
    )
    publish_steps(tracker, range(1, 3))
    open_demo(page, server.url, server, sid)
    expect(page.locator("#connection-text")).to_have_text("Live")
    expect(page.locator("#progressbar")).to_have_attribute("aria-valuetext", "13.3%, step 2 of 15")
    tracker.complete("Done", {"cotacao_final": {"premio_total": 2399.5, "parcelas": 10}})
    expect(page.locator("#result-title")).to_have_text("Completed")
    expect(page.locator("#final-quote")).to_contain_text("Total premium")
    expect(page.locator("#final-quote")).to_contain_text("$2,399.50")
    assert page.title() == "Completed · Job progress"
    console.assert_quiet()
