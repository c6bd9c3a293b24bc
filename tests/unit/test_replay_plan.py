"""The replay planner, branch by branch: what a client resuming from an id gets before live events.

In-process: views are built from envelopes of the embedded engine, so each branch is one call.
"""

from __future__ import annotations

import pytest

from sse_progress.engines import MemoryEngine, SessionView
from sse_progress.protocol.events import ZERO_ID, EventDraft, EventId, format_event_id
from sse_progress.server.replay import AlreadyFinished, SessionExpired, plan_from_view, plan_replay, resume_point

SESSION = "plan"


def envelopes(statuses: list[str]) -> list[bytes]:
    """Stored envelopes of one session, one per status, with increasing ids."""
    engine = MemoryEngine()
    return [
        engine.publish_now(EventDraft(session_id=SESSION, etapa_atual=step, total_etapas=9, status=status)).envelope
        for step, status in enumerate(statuses, start=1)
    ]


def id_of(envelope: bytes) -> EventId:
    from sse_progress.protocol.frames import Frame

    return Frame.from_envelope(envelope, SESSION).id


@pytest.mark.parametrize(
    ("resume", "point"),
    [(None, None), ("", None), ("earliest", ZERO_ID), ("0", ZERO_ID), ("12-3", (12, 3)), ("soon", "invalid")],
)
def test_resume_point_reads_every_spelling(resume: str | None, point: object) -> None:
    assert resume_point(resume) == point


def test_nothing_stored_and_the_resume_id_outlived_the_ttl_is_expired() -> None:
    with pytest.raises(SessionExpired):
        plan_from_view(SessionView(snapshot=None, expired=True), SESSION, (1, 0))


def test_nothing_stored_for_a_new_client_waits_for_the_first_event() -> None:
    replay = plan_from_view(SessionView(snapshot=None), SESSION, None)
    assert (replay.frames, replay.last_id, replay.reset_next) == ([], None, False)


def test_nothing_stored_for_earliest_waits_without_a_reset() -> None:
    replay = plan_from_view(SessionView(snapshot=None), SESSION, ZERO_ID)
    assert (replay.frames, replay.last_id, replay.reset_next) == ([], None, False)


def test_nothing_stored_for_a_client_holding_an_event_resets_on_the_next_one() -> None:
    replay = plan_from_view(SessionView(snapshot=None), SESSION, (5, 0))
    assert (replay.frames, replay.last_id, replay.reset_next) == ([], (5, 0), True)


def test_nothing_stored_for_an_unreadable_resume_id_resets_on_the_next_one() -> None:
    replay = plan_from_view(SessionView(snapshot=None), SESSION, "invalid")
    assert (replay.frames, replay.last_id, replay.reset_next) == ([], None, True)


def test_a_new_client_gets_the_snapshot() -> None:
    _first, second = envelopes(["running", "running"])
    replay = plan_from_view(SessionView(snapshot=second), SESSION, None)
    assert [frame.kind for frame in replay.frames] == ["snapshot"]
    assert replay.last_id == id_of(second) and not replay.finished


def test_an_unreadable_resume_id_gets_a_reset_to_the_snapshot() -> None:
    (only,) = envelopes(["running"])
    replay = plan_from_view(SessionView(snapshot=only), SESSION, "invalid")
    assert [frame.kind for frame in replay.frames] == ["reset"] and replay.last_id == id_of(only)


@pytest.mark.parametrize("at_or_after", [0, 1])
def test_a_client_at_or_past_the_terminal_event_is_already_finished(at_or_after: int) -> None:
    _running, done = envelopes(["running", "success"])
    ms, seq = id_of(done)
    with pytest.raises(AlreadyFinished) as finished:
        plan_from_view(SessionView(snapshot=done), SESSION, (ms, seq + at_or_after))
    assert finished.value.terminal.status == "success"


def test_a_resume_id_newer_than_anything_stored_gets_a_reset() -> None:
    (only,) = envelopes(["running"])
    ms, _ = id_of(only)
    replay = plan_from_view(SessionView(snapshot=only), SESSION, (ms + 60_000, 0))
    assert [frame.kind for frame in replay.frames] == ["reset"]


def test_history_trimmed_past_the_resume_id_gets_a_reset() -> None:
    first, _second, third = envelopes(["running", "running", "running"])
    replay = plan_from_view(SessionView(snapshot=third, events=[third], gap=True), SESSION, id_of(first))
    assert [frame.kind for frame in replay.frames] == ["reset"] and replay.last_id == id_of(third)


def test_earliest_with_a_gap_and_nothing_retained_gets_a_reset() -> None:
    (only,) = envelopes(["running"])
    replay = plan_from_view(SessionView(snapshot=only, events=[], gap=True), SESSION, ZERO_ID)
    assert [frame.kind for frame in replay.frames] == ["reset"]


def test_earliest_with_a_gap_replays_what_is_retained() -> None:
    _first, second, third = envelopes(["running", "running", "success"])
    replay = plan_from_view(SessionView(snapshot=third, events=[second, third], gap=True), SESSION, ZERO_ID)
    assert [frame.id for frame in replay.frames] == [id_of(second), id_of(third)]
    assert replay.finished and replay.last_id == id_of(third)


def test_a_client_behind_gets_the_events_after_its_id() -> None:
    first, second, third = envelopes(["running", "running", "running"])
    replay = plan_from_view(SessionView(snapshot=third, events=[second, third]), SESSION, id_of(first))
    assert [frame.kind for frame in replay.frames] == ["progress_update", "progress_update"]
    assert replay.last_id == id_of(third) and not replay.reset_next


def test_a_client_up_to_date_gets_nothing_and_keeps_its_id() -> None:
    _first, second = envelopes(["running", "running"])
    replay = plan_from_view(SessionView(snapshot=second, events=[]), SESSION, id_of(second))
    assert replay.frames == [] and replay.last_id == id_of(second)


async def test_plan_replay_reads_after_the_resume_id_and_only_then() -> None:
    first, second = envelopes(["running", "running"])
    reads: list[EventId | None] = []

    async def read(session_id: str, after: EventId | None) -> SessionView:
        reads.append(after)
        return SessionView(snapshot=second, events=[second] if after is not None else [])

    await plan_replay(read, SESSION, format_event_id(id_of(first)))
    await plan_replay(read, SESSION, "soon")
    await plan_replay(read, SESSION, None)
    assert reads == [id_of(first), None, None]
