"""The telemetry writer: readings from the drivers into the store's outbox, in batches.

Out of zapd/daemon.py (issue 15) so the daemon file shows the wiring and this one the rule:
a flush FLUSH_DELAY_S after the first new reading (the rest of that poll cycle's readings coalesce into
the same transaction), at most one transaction per MIN_FLUSH_GAP_S (each costs an fsync: the store runs
synchronous=FULL), and a store that fails (disk full) costs memory only up to MAX_PENDING readings, never
the daemon. Why not a fixed 1 s period: a reading waited up to a second in memory before the uploader
could see it, most of the live reading -> subscriber latency (issue 16, bench/live.py). After each
flush `on_written` (the uploader's wake-up) is called, so an upload follows the write instead of
drifting against it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable

import structlog

from cloud_sync.wire import wire_safe
from drivers.resilience import FailureLatch
from zapd.model import Reading
from zapd.store import Store

log = structlog.get_logger(__name__)

FLUSH_DELAY_S = 0.1  # real seconds from the first new reading to its flush: that poll cycle's others join it
MIN_FLUSH_GAP_S = 0.5  # at most two transactions (fsyncs) a second, whatever the devices' poll rates
TELEMETRY_FLUSH_S = 1.0  # after a failed flush (disk full): the next try
MAX_PENDING = 200_000  # readings held in memory while the store fails: ~3 h of a 10-device site


class TelemetryWriter:
    """Queues readings from the drivers and appends them to the outbox in batches.

    When the store cannot take them (disk full, I/O error) they stay queued in memory, up to
    MAX_PENDING; past that the oldest are dropped and counted, the same rule as the outbox's
    retention, so a disk that stays full cannot take the daemon's memory with it.
    """

    def __init__(
        self, store: Store, *, max_pending: int = MAX_PENDING, on_written: Callable[[], None] | None = None
    ) -> None:
        self._store = store
        self._on_written = on_written
        self._new = asyncio.Event()  # readings queued since the last flush began
        self._pending: list[Reading] = []
        self._max_pending = max_pending
        self._latch = FailureLatch(log, "telemetry.store_failed", "telemetry.store_recovered")
        self._in_flight = 0
        self.written = 0
        self.dropped = 0
        self.refused = 0  # readings not stored because the cloud would refuse them (timestamp out of bounds)

    @property
    def pending(self) -> int:
        """Readings not in the store yet, including a batch being written right now."""
        return len(self._pending) + self._in_flight

    def add(self, reading: Reading) -> None:
        # Nothing goes into the outbox that the cloud refuses (cloud_sync/wire.py applies the same
        # rule on ingest): a batch holding one such reading would be refused whole, again and again.
        safe = wire_safe(reading)
        if safe is None:
            if not self.refused:
                log.error("telemetry.refused", der_id=reading.der_id, ts=reading.ts.isoformat(), reason="timestamp")
            self.refused += 1
            return
        self._pending.append(safe)
        self._new.set()
        if len(self._pending) > self._max_pending:
            excess = len(self._pending) - self._max_pending
            del self._pending[:excess]
            if not self.dropped:
                log.error("telemetry.dropped_in_memory", reason="store failing and queue full", limit=self._max_pending)
            self.dropped += excess

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        self._in_flight = len(batch)
        try:
            await self._store.append_readings(batch)
        except Exception:
            self._pending[:0] = batch  # keep them for the next try (e.g. disk full)
            raise
        finally:
            self._in_flight = 0
        self.written += len(batch)

    async def run(self) -> None:
        last = -MIN_FLUSH_GAP_S
        while True:
            await self._new.wait()
            await asyncio.sleep(max(FLUSH_DELAY_S, last + MIN_FLUSH_GAP_S - time.monotonic()))
            self._new.clear()
            last = time.monotonic()
            try:
                await self.flush()
            except (sqlite3.Error, OSError) as exc:
                # Logged once per failure streak; control must go on, and the readings wait in memory.
                self._latch.failed(error=str(exc), pending=len(self._pending))
                self._new.set()
                await asyncio.sleep(TELEMETRY_FLUSH_S)
                continue
            self._latch.ok(written=self.written, dropped_in_memory=self.dropped)
            if self._on_written is not None:
                self._on_written()
