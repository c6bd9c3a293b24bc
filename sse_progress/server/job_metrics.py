"""Job metrics for Prometheus, read from the session index: the same figures on every server instance.

The totals live with the index (Redis or the memory engine), counted by the publish path once per event, so
every instance exports the same cluster-wide values and a restart loses nothing. Labels are bounded: ``status``
(three values) and ``step`` (1..MAX_STEP_LABEL, then ``other``); never a session id.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from sse_progress.engines import EngineUnavailable, answered_within
from sse_progress.protocol.session_index import STEP_BUCKETS_S
from sse_progress.server.index_watch import IndexWatch
from sse_progress.server.metrics import METRICS

FINISHED_STATUSES = ("success", "error", "cancelled")
INDEX_READ_SECONDS = 1.0


class JobMetrics(Collector):
    """Exports the figures of the last ``refresh``: collectors are synchronous, the index is not."""

    def __init__(self) -> None:
        self._totals: dict[str, int] = {}
        self._running = self._stalled = 0
        self._readable = True

    async def refresh(self, watch: IndexWatch) -> None:
        self._running, self._stalled = watch.running, watch.stalled
        try:
            # Briefly: a scrape must answer whatever the store does; stale figures say so below.
            self._totals = await answered_within(watch.engine.index.totals(), INDEX_READ_SECONDS)
            self._readable = watch.healthy
        except EngineUnavailable:
            self._readable = False  # the last figures stay; the gauge below says they are stale

    def collect(self) -> Iterator[Metric]:
        finished = CounterMetricFamily("sse_progress_jobs_finished", "Jobs that ended, by status", labels=["status"])
        for status in FINISHED_STATUSES:
            finished.add_metric([status], self._totals.get(f"finished:{status}", 0))
        yield finished

        steps = HistogramMetricFamily(
            "sse_progress_step_duration_seconds", "Time from a step's first event to the next step's", labels=["step"]
        )
        for label in sorted({key.split(":")[1] for key in self._totals if key.startswith("step:")}, key=_step_order):
            cumulative, buckets = 0, []
            for bound in (*(f"{bound:g}" for bound in STEP_BUCKETS_S), "+Inf"):
                cumulative += self._totals.get(f"step:{label}:{bound}", 0)
                buckets.append((bound, cumulative))
            steps.add_metric([label], buckets, self._totals.get(f"step:{label}:sum", 0) / 1000)
        yield steps

        yield GaugeMetricFamily("sse_progress_sessions_running", "Active sessions that are not stalled", self._running)
        yield GaugeMetricFamily(
            "sse_progress_sessions_stalled", "Active sessions past their stall threshold", self._stalled
        )
        yield GaugeMetricFamily(
            "sse_progress_session_index_readable", "1 when the last read of the session index succeeded", self._readable
        )


def _step_order(label: str) -> tuple[int, int]:
    return (1, 0) if label == "other" else (0, int(label))


JOB_METRICS = JobMetrics()
METRICS.registry.register(JOB_METRICS)
