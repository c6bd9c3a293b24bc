"""sse_progress/web/progress-client.js in Chromium, over each transport, against the real server.

The client is imported as an ES module (progress-client.mjs) into a page of the server's origin (the demo page,
under its CSP); the events its handlers receive are kept in window.__log and compared with the ids the server
stored. Every wait is on page state, never a sleep.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page
from web_support import TOTAL_ETAPAS, Console, Nginx, history_ids, publish_steps, wait_for

from sse_progress import ProgressTracker

pytestmark = pytest.mark.e2e

START_CLIENT = """
async ({ sessionId, token, transport, lastEventId, withoutEventSource, extra }) => {
    const { ProgressClient } = await import("/static/progress-client.mjs");
    if (withoutEventSource) delete window.EventSource;  // an old or stripped-down browser
    const log = (window.__log = { frames: [], ends: [], states: [], transports: [], errors: [] });
    const client = new ProgressClient({ sessionId, token, transport, lastEventId, ...extra });
    window.__client = client;
    for (const kind of ["progress_update", "snapshot", "reset"]) {
        client.on(kind, (e) => log.frames.push({ kind, id: e.id, etapa: e.etapa_atual, status: e.status }));
    }
    client.on("end", (e) => log.ends.push({ status: e && e.status, id: e && e.id, lastEventId: client.lastEventId }));
    client.on("state", (s) => log.states.push(s));
    client.on("transport", (t) => log.transports.push(t.transport));
    client.on("error", (e) => log.errors.push(e));
}
"""


def start_client(
    page: Page,
    server: Any,
    session_id: str,
    transport: str,
    *,
    token: str | None = None,
    last_event_id: str | None = None,
    without_event_source: bool = False,
    wait: bool = True,
    extra: dict[str, Any] | None = None,
    through: str | None = None,
) -> None:
    page.goto((through or server.url) + "/")  # through: a proxy's URL; the client follows the page's origin
    options = {
        "sessionId": session_id,
        "token": server.token(session_id) if token is None else token,
        "transport": transport,
        "lastEventId": last_event_id,
        "withoutEventSource": without_event_source,
        "extra": extra or {},
    }
    page.evaluate(START_CLIENT, options)
    if wait:
        wait_for(page, "() => ['open', 'polling'].includes(window.__client.state)", message="the client to connect")


def wait_for_frames(page: Page, count: int) -> None:
    wait_for(page, "n => window.__log.frames.length >= n", count, message=f"{count} events")


def finished_log(page: Page) -> dict[str, Any]:
    wait_for(page, "() => window.__log.ends.length > 0", message="the end event")
    return page.evaluate(
        """() => ({
            ...window.__log,
            transport: window.__client.transport,
            // White box: after the end nothing is left that could reconnect (no connection, no timer).
            leftovers: [window.__client._conn, window.__client._retryTimer].filter((x) => x !== null).length,
        })"""
    )


def check_every_event_once(log: dict[str, Any], stored: list[str]) -> None:
    ids = [frame["id"] for frame in log["frames"]]
    assert len(ids) == len(set(ids)), f"an event was delivered twice: {ids}"
    assert ids == stored, f"delivered {ids}, stored {stored}"
    assert len(stored) == TOTAL_ETAPAS + 1  # 15 steps and the terminal event
    assert {frame["kind"] for frame in log["frames"]} == {"progress_update"}
    assert [frame["etapa"] for frame in log["frames"]] == [*range(1, TOTAL_ETAPAS + 1), TOTAL_ETAPAS]
    assert log["ends"] == [{"status": "success", "id": stored[-1], "lastEventId": stored[-1]}]
    assert_closed_cleanly(log)


def assert_closed_cleanly(log: dict[str, Any]) -> None:
    """The client ended by itself, reported no error and left no connection or timer behind."""
    assert log["states"][-1] == "closed"
    assert log["errors"] == []
    assert log["leftovers"] == 0


@pytest.mark.parametrize("transport", ["auto", "sse", "ws", "poll"])
def test_each_transport_delivers_every_event_exactly_once_across_a_server_restart(
    page: Page, server: Any, sid: str, tracker: ProgressTracker, transport: str
) -> None:
    start_client(page, server, sid, transport)
    publish_steps(tracker, range(1, 6))
    wait_for_frames(page, 5)

    server.restart()  # every connection drops; the client must resume where it was
    publish_steps(tracker, range(6, 11))
    wait_for_frames(page, 10)
    publish_steps(tracker, range(11, TOTAL_ETAPAS + 1))
    tracker.complete("Cotação concluída")

    log = finished_log(page)
    check_every_event_once(log, history_ids(server, sid))
    # auto streams, and a restart is not a reason to give up streaming for polling.
    expected = {"auto": "sse", "sse": "sse", "ws": "ws", "poll": "poll"}[transport]
    assert log["transport"] == expected, log["transports"]
    if transport != "poll":  # a poll client holds no connection: a restart between two polls is invisible
        assert "connecting" in log["states"][1:], f"the restart went unnoticed: {log['states']}"


def test_auto_streams_when_nothing_buffers(
    page: Page, console: Console, server: Any, sid: str, tracker: ProgressTracker
) -> None:
    start_client(page, server, sid, "auto")
    publish_steps(tracker, range(1, TOTAL_ETAPAS + 1))
    tracker.complete("Cotação concluída")
    log = finished_log(page)
    check_every_event_once(log, history_ids(server, sid))
    assert log["transports"] == ["sse"]
    assert log["states"] == ["connecting", "open", "closed"]
    console.assert_quiet()


def test_auto_does_not_mistake_a_quiet_session_for_a_buffering_proxy(
    page: Page, console: Console, server: Any, sid: str, tracker: ProgressTracker
) -> None:
    """A stream with nothing to say (the job has not started) makes auto look whether events are being withheld;
    finding none, it keeps streaming, and its probes leave no trace in the console."""
    start_client(page, server, sid, "auto", extra={"stallTimeout": 500})
    # The probes are fetch() requests in poll mode, 0.5 s then 1 s apart; a probe is only sent once the previous
    # one's answer was handled, so after the second the client has made up its mind about the first.
    wait_for(
        page,
        """() => performance.getEntriesByType("resource")
            .filter((e) => e.initiatorType === "fetch" && e.name.includes("mode=poll")).length >= 2""",
        message="two silence probes",
    )
    assert page.evaluate("() => [window.__client.transport, window.__client.state]") == ["sse", "open"]

    publish_steps(tracker, range(1, TOTAL_ETAPAS + 1))
    tracker.complete("Cotação concluída")
    log = finished_log(page)
    check_every_event_once(log, history_ids(server, sid))
    assert log["transports"] == ["sse"]
    console.assert_quiet()


def test_a_client_joining_late_gets_a_snapshot_then_the_rest(
    page: Page, server: Any, sid: str, tracker: ProgressTracker
) -> None:
    publish_steps(tracker, range(1, 8))
    start_client(page, server, sid, "auto")
    wait_for_frames(page, 1)
    publish_steps(tracker, range(8, TOTAL_ETAPAS + 1))
    tracker.complete("Cotação concluída")
    log = finished_log(page)
    stored = history_ids(server, sid)
    assert log["frames"][0] == {"kind": "snapshot", "id": stored[6], "etapa": 7, "status": "running"}
    assert [frame["id"] for frame in log["frames"][1:]] == stored[7:]


def test_the_client_works_from_a_plain_script_tag(page: Page, server: Any, sid: str, tracker: ProgressTracker) -> None:
    page.goto(server.url + "/")  # the demo page loads progress-client.js as a classic script
    assert page.evaluate("() => typeof window.ProgressClient") == "function"
    same = page.evaluate("async () => (await import('/static/progress-client.mjs')).default === window.ProgressClient")
    assert same, "the module must export the very class the classic script defines"


def test_without_event_source_auto_polls_with_fetch(
    page: Page, console: Console, server: Any, sid: str, tracker: ProgressTracker
) -> None:
    start_client(page, server, sid, "auto", without_event_source=True)
    publish_steps(tracker, range(1, 6))
    wait_for_frames(page, 5)
    publish_steps(tracker, range(6, TOTAL_ETAPAS + 1))
    tracker.complete("Cotação concluída")
    log = finished_log(page)
    check_every_event_once(log, history_ids(server, sid))
    assert log["transport"] == "poll"
    console.assert_quiet()


@pytest.mark.parametrize("transport", ["auto", "sse", "ws", "poll"])
def test_resuming_after_the_terminal_event_ends_at_once(
    page: Page, server: Any, sid: str, tracker: ProgressTracker, transport: str
) -> None:
    """A client that already has the terminal event (say, an id saved before a reload) gets 204: it must end, once,
    with the terminal envelope, and not reconnect."""
    publish_steps(tracker, range(1, 4))
    tracker.complete("Cotação concluída")
    terminal_id = history_ids(server, sid)[-1]
    start_client(page, server, sid, transport, last_event_id=terminal_id, wait=False)
    log = finished_log(page)
    assert log["frames"] == []
    assert log["ends"] == [{"status": "success", "id": terminal_id, "lastEventId": terminal_id}]
    assert_closed_cleanly(log)


@pytest.mark.parametrize("transport", ["auto", "sse", "ws", "poll"])
def test_a_refused_token_is_a_fatal_error(
    page: Page, server: Any, sid: str, tracker: ProgressTracker, transport: str
) -> None:
    publish_steps(tracker, range(1, 2))
    start_client(page, server, sid, transport, token="not-a-token", wait=False)
    wait_for(page, "() => window.__log.errors.length > 0", message="the error event")
    wait_for(page, "() => window.__client.state === 'closed'", message="the client to close")
    log = page.evaluate("() => window.__log")
    assert [error["status"] for error in log["errors"]] == [401], log["errors"]
    assert log["frames"] == [] and log["ends"] == []


@pytest.mark.parametrize("buffering_proxy", ["everything", "body"], indirect=True)
def test_falling_back_before_any_event_replays_the_steps_the_proxy_withheld(
    page: Page, server: Any, sid: str, tracker: ProgressTracker, buffering_proxy: Nginx
) -> None:
    """Steps published while a buffering proxy holds the stream back are delivered once poll mode takes over: the
    client, which never saw an id, polls from the start of the history instead of taking a snapshot."""
    start_client(page, server, sid, "auto", wait=False, through=buffering_proxy.url, extra={"stallTimeout": 1500})
    publish_steps(tracker, range(1, 4))  # while the stream is withheld
    wait_for(page, "() => window.__log.transports.includes('poll')", message="the fall back to poll mode")
    publish_steps(tracker, range(4, TOTAL_ETAPAS + 1))
    tracker.complete("Cotação concluída")
    log = finished_log(page)
    check_every_event_once(log, history_ids(server, sid))  # steps 1..15 each once, none as a snapshot
    assert log["transports"] == ["sse", "poll"]
