"""Browser fixtures for the end-to-end tests of the web client (web/): Debian's Chromium driven by Playwright.

Chromium is required: without it these tests fail with a message saying how to install it, they never skip.
The server and Redis come from ``tests/conftest.py`` (``server``, ``redis_url``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, sync_playwright

from sse_progress import ProgressTracker

CHROMIUM = os.environ.get("SSE_PROGRESS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TOTAL_ETAPAS = 15
# Generous: a cold browser on a loaded CI machine, poll mode behind a proxy, a server restart.
WAIT_MS = 30_000

ESTIMATIVAS = [
    {"seguradora": "Porto", "valor": 1234.5, "franquia": 3000},
    {"seguradora": "Azul", "valor": 1099.9, "franquia": 2500},
    {"seguradora": "Allianz", "valor": 1310.0, "franquia": 2800.75},
]


@pytest.fixture(scope="session")
def playwright_instance() -> Iterator[Playwright]:
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="session")
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


@dataclass
class Console:
    """What the page printed: the client must stay quiet (no errors, no warnings, no CSP violations)."""

    messages: list[str] = field(default_factory=list)

    def record(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.messages.append(f"{message.type}: {message.text}")

    def record_page_error(self, error: Exception) -> None:
        self.messages.append(f"uncaught: {error}")

    def assert_quiet(self) -> None:
        assert self.messages == [], "the page logged errors or warnings:\n" + "\n".join(self.messages)


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def page(browser: Browser, console: Console) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1000, "height": 900}, locale="pt-BR")
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.on("console", console.record)
    page.on("pageerror", console.record_page_error)
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


def publish_steps(tracker: ProgressTracker, steps: range) -> None:
    """Publishes each step; step 5 carries the estimates table, as the RPA job's screen 5 does."""
    for etapa in steps:
        if etapa == 5:
            tracker.update_progress_with_estimativas(etapa, f"Tela {etapa}: estimativas", ESTIMATIVAS)
        else:
            tracker.update_progress(etapa, f"Tela {etapa}: preenchida")


def history_ids(server: Any, session_id: str) -> list[str]:
    """The ids the server stored for the session, in order: what a client must have received, each once."""
    response = httpx.get(
        f"{server.url}/sessions/{session_id}/history", params={"token": server.token(session_id)}, timeout=10
    )
    response.raise_for_status()
    return [event["id"] for event in response.json()["events"]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


NGINX_CONF = """\
worker_processes 1;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;

    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass {upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            # A buffering proxy. proxy_buffering alone does not hold an event stream back in nginx (it passes
            # data on as it arrives) and the server's X-Accel-Buffering: no would turn it off anyway; compressing
            # text/event-stream is what makes nginx withhold everything, response headers included, until its
            # gzip buffers fill: the misconfiguration the client must survive.
            proxy_buffering on;
            proxy_ignore_headers X-Accel-Buffering;
            gzip on;
            gzip_types text/event-stream;
            gzip_min_length 0;
        }}
    }}
}}
"""


@dataclass
class Nginx:
    url: str
    log: Path


@pytest.fixture
def buffering_proxy(server: Any) -> Iterator[Nginx]:
    """A real nginx in front of the server that buffers responses (see NGINX_CONF)."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(binary, os.X_OK):
        pytest.fail("nginx is required by the buffering-proxy test: apt-get install nginx", pytrace=False)
    tmp = Path(tempfile.mkdtemp(prefix="sse-progress-nginx-"))
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, upstream=server.url))
    process = subprocess.Popen(
        [binary, "-p", str(tmp), "-c", str(conf), "-g", f"daemon off; pid {tmp}/nginx.pid; error_log {tmp}/error.log;"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    proxy = Nginx(f"http://127.0.0.1:{port}", tmp / "error.log")
    try:
        wait_for_port(port, process, proxy.log)
        yield proxy
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 10.0) -> None:
    """Readiness of another process: there is no event to await, so poll its port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            detail = log.read_text() if log.exists() else ""
            pytest.fail(f"nginx exited with {process.returncode}: {detail}", pytrace=False)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"nginx did not listen on port {port} within {timeout}s", pytrace=False)


def wait_for(page: Page, expression: str, arg: Any = None, message: str = "", timeout: int = WAIT_MS) -> None:
    """``page.wait_for_function`` that says what it waited for when it times out."""
    try:
        page.wait_for_function(expression, arg=arg, timeout=timeout)
    except Exception as error:  # playwright's TimeoutError: re-raise with context
        state = page.evaluate("() => window.__log ? JSON.stringify(window.__log).slice(0, 3000) : document.body.innerText.slice(0, 3000)")
        raise AssertionError(f"timed out waiting for {message or expression}; page state: {state}") from error


OpenPage = Callable[..., Page]
