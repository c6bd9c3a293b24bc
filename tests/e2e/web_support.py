"""Helpers shared by the browser tests (fixtures live in conftest.py beside this file)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import ConsoleMessage, Page

from sse_progress import ProgressTracker

TOTAL_ETAPAS = 15
# Generous: a cold browser on a loaded CI machine, poll mode behind a proxy, a server restart.
WAIT_MS = 30_000

ESTIMATIVAS = [
    {"seguradora": "Porto", "valor": 1234.5, "franquia": 3000},
    {"seguradora": "Azul", "valor": 1099.9, "franquia": 2500},
    {"seguradora": "Allianz", "valor": 1310.0, "franquia": 2800.75},
]


@dataclass
class Console:
    """What a page printed: the client must stay quiet (no errors, no warnings, no CSP violations)."""

    messages: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        page.on("console", self._record)
        page.on("pageerror", lambda error: self.messages.append(f"uncaught: {error}"))

    def _record(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.messages.append(f"{message.type}: {message.text}")

    def assert_quiet(self) -> None:
        assert self.messages == [], "the page logged errors or warnings:\n" + "\n".join(self.messages)


def publish_steps(tracker: ProgressTracker, steps: range, work: Callable[[int], None] | None = None) -> None:
    """Publishes each step; step 5 carries the estimates table, as the RPA job's screen 5 does. ``work(etapa)``
    runs before each step (the job's own work, when a test wants steps that take time)."""
    for etapa in steps:
        if work is not None:
            work(etapa)
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


def wait_for(page: Page, expression: str, arg: Any = None, message: str = "", timeout: int = WAIT_MS) -> None:
    """``page.wait_for_function`` that says what it waited for, and what the page had, when it times out."""
    try:
        page.wait_for_function(expression, arg=arg, timeout=timeout)
    except Exception as error:  # playwright's TimeoutError
        state = page.evaluate(
            "() => (window.__log ? JSON.stringify(window.__log) : document.body.innerText).slice(0, 4000)"
        )
        raise AssertionError(f"timed out waiting for {message or expression}; the page has: {state}") from error


# One observer over the parts of the demo page that change, so the records come in the order the user saw them:
# every message shown in #message, every step added to #steps, every estimates table put in #estimates, and
# the result banner appearing. Records, not the DOM at callback time: one callback may batch several renders.
RECORD_WHAT_THE_PAGE_SHOWS = """() => {
    const $ = (id) => document.getElementById(id);
    const seen = (window.__seen = []);
    const observer = new MutationObserver((records) => {
        for (const record of records) {
            const target = record.target;
            if (target.id === "message") {
                seen.push({ kind: "message", value: target.textContent });
            } else if (target.id === "steps") {
                for (const node of record.addedNodes) seen.push({ kind: "step", value: Number(node.dataset.step) });
            } else if (target.tagName === "TBODY") {
                const rows = [...record.addedNodes].filter((node) => node.tagName === "TR");
                if (rows.length) seen.push({ kind: "estimates", value: rows.length });
            } else if (target.id === "result" && !target.hidden) {
                seen.push({ kind: "result", value: target.dataset.state });
            }
        }
    });
    observer.observe($("message"), { childList: true });
    observer.observe($("steps"), { childList: true });
    observer.observe($("estimates").tBodies[0], { childList: true });
    observer.observe($("result"), { attributes: true, attributeFilter: ["hidden"] });
}"""


def record_what_the_page_shows(page: Page) -> None:
    """From now on, keeps what the demo page shows, in order (see ``seen_on_the_page``)."""
    page.evaluate(RECORD_WHAT_THE_PAGE_SHOWS)


def seen_on_the_page(page: Page) -> list[tuple[str, Any]]:
    """``[("message", "Tela 1: …"), ("step", 1), ("estimates", 5), …, ("result", "success")]``, in order."""
    records = page.evaluate("() => window.__seen")
    return [(record["kind"], record["value"]) for record in records]


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 10.0) -> None:
    """Readiness of another process: there is no event to await across processes, so poll its port."""
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
            # data on as it arrives), and the server's X-Accel-Buffering: no would turn it off anyway;
            # compressing text/event-stream is what makes nginx withhold the stream until its gzip buffers
            # fill: the misconfiguration the client must survive.
            proxy_buffering on;
            proxy_ignore_headers X-Accel-Buffering;
            gzip on;
            gzip_types text/event-stream;
            gzip_min_length 0;
            {extra}
        }}
    }}
}}
"""


# What the proxy withholds → extra directives. By default nginx holds the response headers back too (they are
# smaller than postpone_output); with postpone_output 0 it sends them at once and holds only the body.
BUFFERING_MODES = {
    "everything": "",
    "body": "postpone_output 0;",
}


@dataclass
class Nginx:
    url: str
    log: Path
    mode: str
