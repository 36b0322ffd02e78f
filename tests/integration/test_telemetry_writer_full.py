"""The telemetry writer against a SQLite store that is full (PRAGMA max_page_count: a real SQLITE_FULL).

Promise: a full disk never loses or doubles a reading the daemon took in while memory allows.
Readings the store refused stay queued and are written exactly once when space returns; the
queue is bounded, and what falls off its old end is counted. Runs without root (the tmpfs
version is tests/e2e/test_faults.py::test_state_dir_disk_full_then_space_returns).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.waiting import wait_until
from zapd.model import DerKind, Reading
from zapd.store import Store
from zapd.telemetry_writer import TelemetryWriter

T0 = datetime(2026, 6, 21, tzinfo=UTC)


def reading(i: int) -> Reading:
    values = {"power_w": float(i), "import_wh": 1e6 + i, "pad": float(i) * 1.5}
    return Reading(der_id="meter", kind=DerKind.METER, ts=T0 + timedelta(seconds=i), values=values)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "zapd.sqlite")
    yield s
    await s.close()


async def set_max_pages(store: Store, extra: int | None) -> None:
    db = store._db
    async with db.execute("PRAGMA page_count") as cur:
        row = await cur.fetchone()
    limit = 2**30 if extra is None else int(row[0]) + extra if row else extra
    await db.execute(f"PRAGMA max_page_count = {limit}")


async def stored(store: Store) -> list[float]:
    rows = await store.outbox_after(0, 1_000_000)
    return [r.reading().values["power_w"] for r in rows]


async def test_refused_readings_wait_in_memory_and_are_written_once(store: Store) -> None:
    writer = TelemetryWriter(store)
    for i in range(10):
        writer.add(reading(i))
    await writer.flush()
    await set_max_pages(store, 2)
    for i in range(10, 3000):
        writer.add(reading(i))
    with pytest.raises(sqlite3.OperationalError, match="full"):
        await writer.flush()
    assert writer.pending == 2990
    for i in range(3000, 3100):  # the drivers keep delivering while the disk is full
        writer.add(reading(i))
    with pytest.raises(sqlite3.OperationalError):
        await writer.flush()
    assert await store.integrity_check() == "ok"
    await set_max_pages(store, None)
    await writer.flush()
    assert await stored(store) == [float(i) for i in range(3100)]
    assert writer.pending == 0 and writer.written == 3100 and writer.dropped == 0


async def test_queue_is_bounded_and_the_overflow_counted(store: Store) -> None:
    writer = TelemetryWriter(store, max_pending=500)
    for i in range(800):
        writer.add(reading(i))
    assert writer.pending == 500 and writer.dropped == 300
    await writer.flush()
    assert await stored(store) == [float(i) for i in range(300, 800)]


async def test_run_loop_survives_a_full_store(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer task itself keeps going (a crash would lose the queue's owner's loop, not the data)."""
    monkeypatch.setattr("zapd.telemetry_writer.TELEMETRY_FLUSH_S", 0.01)
    writer = TelemetryWriter(store)
    await set_max_pages(store, 1)
    task = asyncio.create_task(writer.run())
    try:
        for i in range(2000):
            writer.add(reading(i))
        # three failed flushes in a row (the loop retries every 0.01 s here), and it is still going
        await wait_until(lambda: writer._latch.streak >= 3, 10, "three failed flushes")
        assert not task.done() and writer.pending == 2000
        await set_max_pages(store, None)
        # `pending` reads 0 while a flush is in flight: wait for `written`
        await wait_until(lambda: writer.written == 2000, 10, "all 2000 written")
        assert writer.written == 2000 and writer.pending == 0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await stored(store) == [float(i) for i in range(2000)]
