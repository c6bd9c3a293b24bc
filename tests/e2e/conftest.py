"""Browser fixtures for the end-to-end tests of the web client (sse_progress/web/): Debian's Chromium, Playwright.

Chromium is required: without it these tests fail with a message saying how to install it, they never skip.
The server and Redis come from ``tests/conftest.py`` (``server``, ``redis_url``); helpers are in web_support.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright
from web_support import BUFFERING_MODES, NGINX_CONF, TOTAL_ETAPAS, WAIT_MS, Console, Nginx, wait_for_port

from sse_progress import ProgressTracker
from tests.support.processes import free_port

CHROMIUM = os.environ.get("SSE_PROGRESS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


# Module scope, not session: the sync API keeps an asyncio loop running in this thread while it is started,
# which would break every pytest-asyncio test collected after the browser tests.
@pytest.fixture(scope="module")
def playwright_instance() -> Iterator[Playwright]:
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def browser(playwright_instance: Playwright) -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"Chromium is required by the browser tests and was not found at {CHROMIUM}: install Debian's chromium "
            "package (apt-get install chromium) or point SSE_PROGRESS_CHROMIUM at a Chromium binary",
            pytrace=False,
        )
    browser = playwright_instance.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def page(browser: Browser, console: Console) -> Iterator[Page]:
    """A fresh page, 1000 px wide, whose console output is collected (see Console.assert_quiet)."""
    context = browser.new_context(viewport={"width": 1000, "height": 900}, locale="pt-BR")
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    console.watch(page)
    yield page
    context.close()


@pytest.fixture
def sid() -> str:
    return "web-" + uuid.uuid4().hex[:16]


@pytest.fixture
def tracker(server: Any, sid: str) -> Iterator[ProgressTracker]:
    """The job's side: publishes straight to the server's Redis, as a real job does."""
    tracker = ProgressTracker(total_etapas=TOTAL_ETAPAS, session_id=sid, tipo="redis", redis_url=server.redis_url)
    yield tracker
    tracker.close()


@pytest.fixture
def buffering_proxy(server: Any, request: pytest.FixtureRequest) -> Iterator[Nginx]:
    """A real nginx in front of the server that buffers event streams (see NGINX_CONF); parametrize it
    indirectly with a key of BUFFERING_MODES (default "everything")."""
    mode = getattr(request, "param", "everything")
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(binary, os.X_OK):
        pytest.fail("nginx is required by the buffering-proxy test: apt-get install nginx", pytrace=False)
    tmp = Path(tempfile.mkdtemp(prefix="sse-progress-nginx-"))
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, upstream=server.url, extra=BUFFERING_MODES[mode]))
    directives = f"daemon off; pid {tmp}/nginx.pid; error_log {tmp}/error.log;"
    process = subprocess.Popen(
        [binary, "-p", str(tmp), "-c", str(conf), "-g", directives],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    proxy = Nginx(f"http://127.0.0.1:{port}", tmp / "error.log", mode)
    try:
        wait_for_port(port, process, proxy.log)
        yield proxy
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
