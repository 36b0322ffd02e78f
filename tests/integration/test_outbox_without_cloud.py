"""Without `[cloud]` the outbox is local history, bounded and counted (issue 15): a real daemon and SQLite file.

A site without a cloud used to fill its outbox to the 512 MiB upload budget over days (on an SD
card), and every trimmed reading was counted as telemetry lost. Now it keeps
`store.history_without_cloud_h` and counts what ages out apart, as `expired_without_cloud`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drivers.sim.p1_pty import SimP1Tcp
from drivers.sim.physics import SimSite
from tests.waiting import wait_until
from zapd.clock import ScaledClock
from zapd.config import StoreConfig, validate_config
from zapd.daemon import Daemon
from zapd.model import DerKind, Reading
from zapd.retention import EXPIRED_WITHOUT_CLOUD_KEY, HISTORY_WITHOUT_CLOUD_MB, retention_bounds
from zapd.store import DROPPED_KEY, Store

T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)


def test_bounds_with_and_without_a_cloud() -> None:
    store = StoreConfig(retention_days=30, retention_mb=512, history_without_cloud_h=24)
    with_cloud = retention_bounds(store, has_cloud=True, now=T0)
    assert (with_cloud.older_than, with_cloud.counter_key, with_cloud.lost) == (
        T0 - timedelta(days=30),
        DROPPED_KEY,
        True,
    )
    assert with_cloud.max_rows == 512 * 1024 * 1024 // 150
    alone = retention_bounds(store, has_cloud=False, now=T0)
    assert (alone.older_than, alone.counter_key, alone.lost) == (
        T0 - timedelta(hours=24),
        EXPIRED_WITHOUT_CLOUD_KEY,
        False,
    )
    assert alone.max_rows == int(HISTORY_WITHOUT_CLOUD_MB * 1024 * 1024 / 150)
    # never longer than the retention itself
    short = retention_bounds(StoreConfig(retention_days=0.5), has_cloud=False, now=T0)
    assert short.older_than == T0 - timedelta(hours=12)


async def test_store_counts_expired_history_apart_from_lost_uploads(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "zapd.sqlite")
    try:
        # three days of one reading a minute
        await store.append_readings(
            [Reading(der_id="m", kind=DerKind.METER, ts=T0 + timedelta(minutes=i), values={"power_w": 1.0})
             for i in range(3 * 24 * 60)]
        )  # fmt: skip
        now = T0 + timedelta(days=3)
        b = retention_bounds(StoreConfig(history_without_cloud_h=24), has_cloud=False, now=now)
        dropped = await store.enforce_retention(b.older_than, b.max_rows, counter_key=b.counter_key)
        assert dropped == 2 * 24 * 60
        assert await store.outbox_depth() == 24 * 60
        assert await store.kv_get(EXPIRED_WITHOUT_CLOUD_KEY) == str(2 * 24 * 60)
        assert await store.kv_get(DROPPED_KEY) is None
    finally:
        await store.close()


async def test_daemon_without_cloud_keeps_only_its_history(tmp_path: Path) -> None:
    start = datetime(2026, 6, 21, 12, tzinfo=UTC)
    site = SimSite()
    site.step(start)
    meter = SimP1Tcp(site)
    port = await meter.start()
    speed = 600.0  # retention runs once a real second here: ten site minutes
    clock = ScaledClock(start, speed)
    config = validate_config(
        {
            "site": {"id": "alone", "fuse_a": 25},
            "store": {"state_dir": str(tmp_path / "state"), "history_without_cloud_h": 0.5},
            "api": {"socket": str(tmp_path / "zapd.sock")},
            "metrics": {"enabled": False},
            "devices": [{"driver": "p1_tcp", "id": "meter", "host": "127.0.0.1", "port": port, "poll_s": 10}],
        },
        "test",
    )
    daemon = Daemon(config, clock)
    feeder = asyncio.create_task(meter.run(clock, 10.0))
    run = asyncio.create_task(daemon.run())
    db = tmp_path / "state" / "zapd.sqlite"

    def expired() -> int:
        with sqlite3.connect(db) as conn:
            row = conn.execute("SELECT value FROM kv WHERE key = ?", (EXPIRED_WITHOUT_CLOUD_KEY,)).fetchone()
        return int(row[0]) if row else 0

    def oldest_and_dropped() -> tuple[datetime, str | None]:
        with sqlite3.connect(db) as conn:
            oldest = conn.execute("SELECT MIN(ts) FROM outbox").fetchone()[0]
            dropped = conn.execute("SELECT value FROM kv WHERE key = ?", (DROPPED_KEY,)).fetchone()
        return datetime.fromisoformat(oldest), dropped[0] if dropped else None

    try:
        await wait_until(lambda: db.exists(), 15, "the store")
        # An hour of site time: the first readings have aged out of the half-hour history.
        await wait_until(lambda: clock.now() >= start + timedelta(hours=1) and expired() > 0, 60, "history trimmed")
        oldest, dropped = oldest_and_dropped()
        # one retention round (a site minute) plus the loop's slack behind
        assert oldest >= clock.now() - timedelta(minutes=30 + 20)
        assert dropped is None  # nothing counted as lost telemetry: there was never a cloud to lose it to
    finally:
        daemon.stop()
        await asyncio.wait_for(run, 20)
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        await meter.stop()
