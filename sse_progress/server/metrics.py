"""Prometheus metrics. Labels never carry session ids or tokens: their number would grow without bound."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sse_progress.engines.foreign import FOREIGN, Where


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.open_connections = Gauge(
            "sse_progress_open_connections", "Open client connections", ["transport"], registry=self.registry
        )
        self.active_sessions = Gauge(
            "sse_progress_active_sessions", "Sessions with at least one live listener", registry=self.registry
        )
        self.events_published = Counter(
            "sse_progress_events_published", "Events stored through this process", registry=self.registry
        )
        self.events_delivered = Counter(
            "sse_progress_events_delivered", "Frames written to clients", ["transport"], registry=self.registry
        )
        self.events_written_to_socket = Counter(
            "sse_progress_events_written_to_socket",
            "Of the frames delivered, those the fan-out wrote straight to the client's socket rather than through "
            "the stream's task and the server's send (zero under a server where that is not possible)",
            ["transport"],
            registry=self.registry,
        )
        self.events_replayed = Counter(
            "sse_progress_events_replayed", "Frames sent from history on connect or resync", registry=self.registry
        )
        self.slow_consumer_disconnects = Counter(
            "sse_progress_slow_consumer_disconnects",
            "Clients cut off because their buffer overflowed",
            registry=self.registry,
        )
        self.redis_reconnects = Counter(
            "sse_progress_redis_reconnects", "Pub/Sub reconnections after a lost connection", registry=self.registry
        )
        self.header_timeouts = Counter(
            "sse_progress_header_timeouts",
            "Connections dropped for not completing a request's headers in time (SSE_PROGRESS_HEADER_TIMEOUT)",
            registry=self.registry,
        )
        self.foreign_messages = Counter(
            "sse_progress_foreign_messages",
            "Messages on a session's channel, or snapshot values, that are not envelopes this service wrote (skipped)",
            ["where"],
            registry=self.registry,
        )
        self.streams_deferred = Counter(
            "sse_progress_streams_deferred",
            "Stream and poll requests answered with an empty stream and a retry: delay instead of an error",
            ["reason"],
            registry=self.registry,
        )
        self.publish_latency = Histogram(
            "sse_progress_publish_seconds",
            "Time to store and announce one event",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.legacy_updates = Counter(
            "sse_progress_legacy_updates",
            "Updates of the older system read by the bridge, by where they came from and what became of them",
            ["source", "outcome"],
            registry=self.registry,
        )

        # Shown at 0 from the start, so that a dashboard or an alert can name them before the first one.
        for where in ("channel", "snapshot", "history"):
            self.foreign_messages.labels(where)
        for reason in ("store_unavailable", "connection_limit"):
            self.streams_deferred.labels(reason)


METRICS = Metrics()


def _count_foreign(where: Where) -> None:
    METRICS.foreign_messages.labels(where).inc()


# The engines know nothing of Prometheus: in a server process, what they skip is counted here.
FOREIGN.count = _count_foreign
