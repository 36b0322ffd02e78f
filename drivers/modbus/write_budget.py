"""A per-device cap on register writes per rolling hour.

Many inverters keep holding registers in flash with a write endurance of 10^5..10^6 cycles;
a controller re-writing a setpoint every few seconds wears that out within a few years. The
budget is the last line of defence behind "skip a write the device already holds": when it
runs out, commands are refused (the device keeps its last setpoint, and its own command
timeout returns it to self-consumption), counted, and logged once per window rather than once
per refusal, so a stuck controller cannot also flood the journal.
"""

from __future__ import annotations

from collections import deque

import structlog

from drivers.api import DriverError
from zapd.clock import Clock

log = structlog.get_logger(__name__)

BUDGET_EXHAUSTED = "write budget exhausted"


class WriteBudgetExhausted(DriverError):
    def __init__(self) -> None:
        super().__init__(BUDGET_EXHAUSTED)


class WriteBudget:
    """`max_writes` per `window_s` (rolling), on the injected clock so tests leap instead of sleeping."""

    def __init__(self, device_id: str, max_writes: int | None, clock: Clock, *, window_s: float = 3600.0) -> None:
        if max_writes is not None and max_writes < 1:
            raise ValueError("max_writes must be >= 1 (or None for no cap)")
        self.device_id = device_id
        self.max_writes = max_writes
        self.window_s = window_s
        self._clock = clock
        self._spent: deque[float] = deque()
        self._quiet_until = float("-inf")  # no refusal log before this instant
        self._refused_since_log = 0
        self.counters: dict[str, int] = {"writes": 0, "refused": 0}

    def _now(self) -> float:
        return self._clock.now().timestamp()

    def remaining(self) -> int | None:
        if self.max_writes is None:
            return None
        self._expire(self._now())
        return self.max_writes - len(self._spent)

    def _expire(self, now: float) -> None:
        while self._spent and self._spent[0] <= now - self.window_s:
            self._spent.popleft()

    def spend(self) -> None:
        """Account one write about to go on the wire, or raise `WriteBudgetExhausted`."""
        now = self._now()
        if self.max_writes is not None:
            self._expire(now)
            if len(self._spent) >= self.max_writes:
                self._refuse(now)
                raise WriteBudgetExhausted()
            self._spent.append(now)
        self.counters["writes"] += 1

    def _refuse(self, now: float) -> None:
        self.counters["refused"] += 1
        self._refused_since_log += 1
        if now < self._quiet_until:
            return
        log.warning(
            "modbus.write_budget_exhausted",
            device=self.device_id,
            max_writes_per_hour=self.max_writes,
            refused_since_last_log=self._refused_since_log,
            refused_total=self.counters["refused"],
            next_write_in_s=round(self._spent[0] + self.window_s - now, 1),
        )
        self._refused_since_log = 0
        self._quiet_until = now + self.window_s
