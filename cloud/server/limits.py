"""Resource limits of `zapcloud serve`: connections, time to send a request, request rates.

What they protect: a client that opens connections and never finishes its headers (slowloris), one
that sends its body a byte at a time, and one that floods an endpoint. Rates are token buckets, kept in
the worker's memory like the metrics counters: with N workers behind a balancer a client gets up to
N times the rate, which is still bounded. They use the monotonic clock, never the (possibly simulated)
wall clock of the planner.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rate:
    per_s: float
    burst: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.per_s) and self.per_s > 0 and math.isfinite(self.burst) and self.burst >= 1):
            raise ValueError(f"rate needs per_s > 0 and burst >= 1, got {self.per_s}/s burst {self.burst}")

    def scaled(self, factor: float) -> Rate:
        return Rate(self.per_s * factor, self.burst)


@dataclass(frozen=True, slots=True)
class Limits:
    """Defaults sized for a fleet endpoint; docs/operations.md lists them with the flags that set them."""

    # Open connections per worker; above it requests get 503 and new connections are closed at once.
    max_connections: int = 256
    # From connection (or the end of the previous response) to the end of the request headers.
    header_timeout_s: float = 10.0
    # From the end of the headers to the end of the body.
    body_timeout_s: float = 20.0
    # Requests authenticated by one site key (telemetry, discovery, plan GET). A Zap draining a backlog
    # sends a 5000-reading batch per round trip; 20/s (100 000 readings/s) is above what one SQLite ingests.
    site_rate: Rate = Rate(per_s=20.0, burst=120.0)
    # Requests with the admin (or metrics) token, per token.
    admin_rate: Rate = Rate(per_s=20.0, burst=200.0)
    # Authentication failures (401) per client address; when spent, that address gets 429 for everything.
    fail_rate: Rate = Rate(per_s=1.0, burst=30.0)
    # Live channels (cloud/server/channel.py) per worker, counted apart from the HTTP connections above:
    # an idle channel costs a few tens of kB (bench/channel.py), so a worker holds a fleet's worth.
    max_channels: int = 20_000
    # Decompression, signature checks and JSON decoding of large bodies run in threads, this many at once.
    cpu_slots: int = 4

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.cpu_slots < 1 or self.max_channels < 0:
            raise ValueError("max_connections and cpu_slots must be >= 1, max_channels >= 0")
        for name in ("header_timeout_s", "body_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 < value <= 3600):
                raise ValueError(f"{name} must be in (0, 3600] s, got {value}")


class TokenBuckets:
    """One token bucket per key, at most `max_keys` of them (least recently used dropped first).

    Dropping a bucket forgets a client's debt, so `max_keys` is sized well above the number of
    clients that are being limited at any moment; a full bucket is never worth keeping.
    """

    def __init__(self, rate: Rate, *, max_keys: int = 50_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.rate.burst, now))
        return min(self.rate.burst, tokens + (now - at) * self.rate.per_s)

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)

    def take(self, key: str) -> float:
        """Spend one token. Returns 0.0 if there was one, else the seconds until there will be."""
        now = self._clock()
        tokens = self._level(key, now)
        if tokens >= 1.0:
            self._store(key, tokens - 1.0, now)
            return 0.0
        self._store(key, tokens, now)
        return (1.0 - tokens) / self.rate.per_s

    def spent(self, key: str) -> float:
        """Like `take` but only looks: the seconds until one token is there (0.0 if there is one)."""
        tokens = self._level(key, self._clock())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate.per_s

    def charge(self, key: str) -> None:
        """Spend one token if there is one (a failure that already got its answer)."""
        now = self._clock()
        self._store(key, max(0.0, self._level(key, now) - 1.0), now)


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
