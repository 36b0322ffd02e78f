"""One bad value never blocks the uploader (issue 10 item 2), against a real `zapcloud serve` on loopback.

The attack: a SunSpec point of +Inf was stored in the outbox as null; the cloud answered 422 to every
batch holding it and uploads stalled until retention dropped it (30 days). Now (1) the telemetry writer
stores only what the cloud's ingest accepts, so such a reading reaches the cloud as quality "bad"
without the value, and (2) a reading the cloud still refuses (an outbox written by an older zapd)
is found by halving the batch, skipped (declared lost, counted) and the rest goes up in order.
What the cloud stored is read from its own SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from cloud_sync.link import LinkStatus
from cloud_sync.uploader import REFUSED_KEY, Uploader
from tests.cloud_server import Cloud
from tests.cloud_server import serve as _serve
from tests.integration.test_cloud_api import _register
from tests.waiting import wait_until
from zapd.clock import ManualClock, SystemClock
from zapd.model import IMPORT_WH, POWER_W, DerCapabilities, DerKind, Reading
from zapd.store import Store
from zapd.telemetry_writer import TelemetryWriter

T0 = datetime(2026, 6, 21, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    tmp = tmp_path_factory.mktemp("cloud")
    with _serve(tmp, f"sqlite+aiosqlite:///{tmp / 'cloud.sqlite'}", "nonfinite") as c:
        yield c


def cloud_rows(cloud: Cloud, site_id: str) -> list[tuple[int, str, str]]:
    path = cloud.db_url.removeprefix("sqlite+aiosqlite:///")
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
        q = 'SELECT seq, quality, "values" FROM telemetry WHERE site_id = ? ORDER BY seq'
        return [(int(a), str(b), str(c)) for a, b, c in db.execute(q, (site_id,))]


def cloud_lost(cloud: Cloud, site_id: str) -> int:
    path = cloud.db_url.removeprefix("sqlite+aiosqlite:///")
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
        row = db.execute("SELECT lost_readings FROM sites WHERE site_id = ?", (site_id,)).fetchone()
        return int(row[0])


def meter(i: int, power_w: float = 100.0, ts: datetime | None = None) -> Reading:
    return Reading(
        der_id="grid",
        kind=DerKind.METER,
        ts=ts or T0 + timedelta(seconds=i),
        values={POWER_W: power_w, IMPORT_WH: 1000.0 + i},
    )


async def drain(cloud: Cloud, site_id: str, store: Store, **kw: object) -> Uploader:
    key = _register(cloud, site_id)
    base = str(cloud.client.base_url)
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        up = Uploader(store=store, client=client, site_id=site_id, key=key, clock=ManualClock(T0), link=LinkStatus(),
                      **kw)  # type: ignore[arg-type]  # fmt: skip
        await up.drain()
    return up


async def test_inf_from_a_driver_reaches_the_cloud_as_a_bad_reading(cloud: Cloud, tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "zapd.sqlite")
    try:
        writer = TelemetryWriter(store)
        for i in range(1, 31):
            writer.add(meter(i, math.inf if i == 10 else -math.inf if i == 20 else math.nan if i == 25 else 100.0))
        await writer.flush()
        up = await drain(cloud, "nf-writer", store, batch_max=8)
        rows = cloud_rows(cloud, "nf-writer")
        assert [r[0] for r in rows] == list(range(1, 31))  # every reading, in order, none lost
        assert {r[0] for r in rows if r[1] == "bad"} == {10, 20, 25}
        assert all("power_w" not in r[2] for r in rows if r[1] == "bad")
        assert all('"import_wh"' in r[2] for r in rows)  # the plausible values of a bad reading still go up
        assert up.refused_by_cloud == 0 and cloud_lost(cloud, "nf-writer") == 0
        assert await store.acked_seq() == 30
    finally:
        await store.close()


async def test_a_reading_the_cloud_refuses_is_skipped_not_a_stall(cloud: Cloud, tmp_path: Path) -> None:
    """An outbox written before the fix: +Inf stored as null, a reading dated 1970 (no RTC at boot)."""
    store = await Store.open(tmp_path / "zapd.sqlite")
    try:
        readings = [meter(i) for i in range(1, 41)]
        readings[6] = meter(7, math.inf)  # stored as {"power_w": null}: the cloud answers 422
        readings[29] = meter(30, ts=datetime(1970, 1, 1, 0, 0, 30, tzinfo=UTC))
        await store.append_readings(readings)  # straight into the outbox, as the old writer did
        up = await drain(cloud, "nf-old-outbox", store, batch_max=16)
        rows = cloud_rows(cloud, "nf-old-outbox")
        assert [r[0] for r in rows] == [s for s in range(1, 41) if s not in (7, 30)]
        assert up.refused_by_cloud == 2 and await store.kv_get(REFUSED_KEY) == "2"
        assert cloud_lost(cloud, "nf-old-outbox") == 2  # declared lost, so the cloud's stream stays gap-free
        assert await store.acked_seq() == 40 and await store.outbox_depth() == 0
    finally:
        await store.close()


async def test_a_nameplate_of_inf_neither_loses_the_ders_nor_holds_telemetry_back(cloud: Cloud, tmp_path: Path) -> None:
    """A float32 nameplate of +Inf was encoded as null: the discovery report was refused (422) and, sent
    first in every round, it kept the telemetry from going up at all."""
    store = await Store.open(tmp_path / "zapd.sqlite")
    try:
        await store.append_readings([meter(i) for i in range(1, 6)])
        key = _register(cloud, "nf-caps")
        caps = [
            DerCapabilities(der_id="inv.battery", kind=DerKind.BATTERY, controllable=True, max_charge_w=math.inf,
                            max_discharge_w=5000.0, capacity_wh=1e300),
            DerCapabilities(der_id="gm.meter", kind=DerKind.METER),
        ]  # fmt: skip
        link = LinkStatus()
        async with httpx.AsyncClient(base_url=str(cloud.client.base_url), timeout=10) as client:
            up = Uploader(store=store, client=client, site_id="nf-caps", key=key, clock=SystemClock(), link=link,
                          interval_s=0.05, capabilities=lambda: caps)  # fmt: skip
            task = asyncio.create_task(up.run())
            try:

                async def all_acked() -> bool:
                    return await store.acked_seq() == 5

                await wait_until(all_acked, 10, "five readings acked")
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        assert await store.acked_seq() == 5
        path = cloud.db_url.removeprefix("sqlite+aiosqlite:///")
        with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
            ders = {r[0] for r in db.execute("SELECT der_id FROM der_models WHERE site_id = 'nf-caps'")}
        assert ders == {"inv.battery", "gm.meter"}  # the report went through, the unknown limits as 0
    finally:
        await store.close()
