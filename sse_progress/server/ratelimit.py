"""A token-bucket rate limit per publisher token, so one runaway job cannot flood its watchers."""

from __future__ import annotations

import time

MAX_TRACKED_KEYS = 10_000


class RateLimiter:
    """``rate`` events per second per key, with bursts of up to ``burst``; ``rate=0`` disables the limit."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate * 2)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)

    def retry_after(self, key: str) -> float:
        """Take one token: 0.0 when allowed, else the seconds until the next one."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        if len(self._buckets) >= MAX_TRACKED_KEYS and key not in self._buckets:
            self._forget_full_buckets(now)
        self._buckets[key] = (tokens - 1.0, now)
        return 0.0

    def _forget_full_buckets(self, now: float) -> None:
        """Keys idle long enough to have refilled carry no state worth keeping."""
        refill_time = self.burst / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < refill_time}
