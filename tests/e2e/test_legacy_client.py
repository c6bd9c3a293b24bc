"""Day 0 of the migration in Chromium: the older bot (plain redis-py), the bridge, and the older pages unchanged.

The pages run the older ``RPAWebSocketClient`` (its code as the older system's plan has it: it dispatches on
``type`` and reads ``percentual`` and ``mensagem``) against ``/session/<id>``, and its polling fallback against
``/api/get_progress.php``. The token is the ``sse_progress_token`` cookie: the older code sends none.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis
from playwright.sync_api import Browser, Page
from web_support import wait_for

from tests.support.legacy import BridgeProcess, OldTracker
from tests.support.processes import LiveServer, RedisServer

pytestmark = pytest.mark.e2e

STEPS = 15
FINAL_MESSAGE = "Cotação concluída"

# The older client, as written in the older system's plan. One change: reconnect() reconnects to the host and
# port it was given (the plan's copy reconnects to a hard-coded localhost:8080).
OLD_CLIENT = """
class RPAWebSocketClient {
    constructor(sessionId, host = 'localhost', port = 8080) {
        this.sessionId = sessionId;
        this.ws = null;
        this.reconnectAttempts = 0;
        this.maxReconnectAttempts = 5;
        this.reconnectInterval = 2000;
        this.handlers = {};
        this.host = host;
        this.port = port;
        this.connect(host, port);
    }
    connect(host, port) {
        try {
            this.ws = new WebSocket(`ws://${host}:${port}/session/${this.sessionId}`);
            this.ws.onopen = () => { console.log('WebSocket conectado'); this.reconnectAttempts = 0; };
            this.ws.onmessage = (event) => {
                try { const data = JSON.parse(event.data); this.handleMessage(data); }
                catch (e) { console.error('Erro ao processar mensagem:', e); }
            };
            this.ws.onclose = () => { console.log('WebSocket desconectado'); this.reconnect(); };
            this.ws.onerror = (error) => { console.error('Erro WebSocket:', error); };
        } catch (e) { console.error('Erro ao conectar WebSocket:', e); this.reconnect(); }
    }
    handleMessage(data) { const type = data.type; if (this.handlers[type]) { this.handlers[type](data); } }
    on(type, handler) { this.handlers[type] = handler; }
    send(data) { if (this.ws && this.ws.readyState === WebSocket.OPEN) { this.ws.send(JSON.stringify(data)); } }
    reconnect() {
        if (this.reconnectAttempts < this.maxReconnectAttempts) {
            this.reconnectAttempts++;
            setTimeout(() => { this.connect(this.host, this.port); }, this.reconnectInterval);
        } else { this.fallbackToPolling(); }
    }
    fallbackToPolling() { this.startPolling(); }
    startPolling() {
        const interval = setInterval(async () => {
            try {
                const response = await fetch(`/api/get_progress.php?session=${this.sessionId}`);
                const data = await response.json();
                if (data.success) {
                    this.handleMessage({ type: 'progress_update', ...data.data });
                    if (data.data.status === 'success') { clearInterval(interval); window.__pollerDone = true; }
                }
            } catch (e) { console.error('Erro no polling:', e); }
        }, 2000);
    }
    close() { if (this.ws) { this.ws.close(); } }
}
window.RPAWebSocketClient = RPAWebSocketClient;
"""

# The older page: a bar and a line of text, updated from each progress_update.
OPEN_OLD_PAGE = """
({ code, sessionId, host, port, pollOnly }) => {
    (0, eval)(code);
    const bar = document.createElement("div");
    bar.id = "old-bar";
    const text = document.createElement("div");
    text.id = "old-text";
    document.body.append(bar, text);
    const updateProgressBar = (percentual) => {
        bar.dataset.percent = String(percentual);
        bar.style.width = percentual + "%";
    };
    const updateProgressText = (mensagem) => { text.textContent = mensagem; };
    let client;
    if (pollOnly) {  // a page whose client went straight to polling get_progress.php
        client = Object.create(RPAWebSocketClient.prototype);
        client.sessionId = sessionId;
        client.handlers = {};
    } else {
        client = new RPAWebSocketClient(sessionId, host, port);
    }
    client.on('progress_update', (data) => { updateProgressBar(data.percentual); updateProgressText(data.mensagem); });
    if (pollOnly) client.startPolling();
    window.__oldClient = client;
}
"""


def open_old_page(browser: Browser, server: LiveServer, session_id: str, poll_only: bool = False) -> Page:
    context = browser.new_context()
    context.add_cookies([{"name": "sse_progress_token", "value": server.token(session_id), "url": server.url}])
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(server.url + "/static/progress-client.js")  # any page of the server's origin
    host, port = server.url.removeprefix("http://").split(":")
    page.evaluate(
        OPEN_OLD_PAGE,
        {"code": OLD_CLIENT, "sessionId": session_id, "host": host, "port": int(port), "pollOnly": poll_only},
    )
    return page


def shows_the_end(page: Page) -> None:
    wait_for(
        page,
        "(m) => document.getElementById('old-bar').dataset.percent === '100' "
        "&& document.getElementById('old-text').textContent === m",
        FINAL_MESSAGE,
        message="the bar at 100 % with the final message",
    )


def test_old_pages_opened_before_during_and_after_the_job_end_at_100_percent(
    browser: Browser, legacy_server: LiveServer, legacy_redis: RedisServer, bridge: BridgeProcess, sid: str
) -> None:
    client = redis.Redis.from_url(legacy_redis.url)
    tracker = OldTracker(client, sid, total_etapas=STEPS, publish=True)
    before = open_old_page(browser, legacy_server, sid)
    poller = open_old_page(browser, legacy_server, sid, poll_only=True)
    half_way, go_on = threading.Event(), threading.Event()

    def job() -> None:
        for etapa in range(1, STEPS + 1):
            tracker.update_progress(etapa, f"Processando tela {etapa}...")
            if etapa == 7:  # the job waits here until the page opened now shows step 7: no live update helps it
                half_way.set()
                go_on.wait(60)
            time.sleep(0.3)
        tracker.complete(FINAL_MESSAGE)

    worker = threading.Thread(target=job)
    worker.start()
    try:
        assert half_way.wait(30)
        during = open_old_page(browser, legacy_server, sid)
        wait_for(
            during,
            "() => document.getElementById('old-bar').dataset.percent === '46.7'",
            message="a page opened mid-job to show the current state at once",
        )
        assert during.evaluate("() => document.getElementById('old-text').textContent") == "Processando tela 7..."
    finally:
        go_on.set()
        worker.join(60)
    after = open_old_page(browser, legacy_server, sid)
    pages: dict[str, Any] = {"before": before, "during": during, "after": after, "poller": poller}
    for name, page in pages.items():
        shows_the_end(page)
        assert page.evaluate("() => document.getElementById('old-text').textContent") == FINAL_MESSAGE, name
    wait_for(poller, "() => window.__pollerDone === true", message="the poller to see status success and stop")
    for page in pages.values():
        page.context.close()
    client.close()
