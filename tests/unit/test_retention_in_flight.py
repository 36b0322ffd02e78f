"""Retention while a batch is on its way: a reading is either stored by the cloud or counted dropped, never both.

The e2e retention test failed under load with "cloud 222 + dropped 225 != stored 410": retention ran
while a batch was in flight, deleted (and counted) its oldest readings, and the cloud stored them
anyway. The store is the real SQLite outbox; the cloud is tests/unit/test_uploader_refusals.FakeCloud,
slowed down so that retention runs during the POST.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
from nacl.signing import SigningKey

from cloud_sync.link import LinkStatus
from cloud_sync.uploader import Uploader
from tests.unit.test_uploader_refusals import T0, FakeCloud, fill
from zapd.clock import ManualClock
from zapd.model import DerKind, Reading
from zapd.store import DROPPED_KEY, Store

MAX_ROWS = 20


async def test_retention_during_a_post_never_counts_what_the_cloud_stores(store: Store) -> None:
    await fill(store, MAX_ROWS)
    cloud = FakeCloud()
    retention: list[asyncio.Task[int]] = []

    async def slow_cloud(request: httpx.Request) -> httpx.Response:
        if retention:
            return cloud(request)
        # While the first batch is on its way the site writes more readings and retention runs.
        n = await store.last_seq()
        more = [Reading(der_id="m", kind=DerKind.METER, ts=T0 + timedelta(seconds=n + i), values={"power_w": 1.0})
                for i in range(1, 11)]  # fmt: skip
        await store.append_readings(more)
        retention.append(asyncio.create_task(store.enforce_retention(T0 - timedelta(days=1), MAX_ROWS)))
        await asyncio.sleep(0.05)
        return cloud(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(slow_cloud), base_url="http://cloud") as client:
        up = Uploader(store=store, client=client, site_id="s", key=SigningKey(b"\x02" * 32), clock=ManualClock(T0),
                      link=LinkStatus(), batch_max=100)  # fmt: skip
        await up.upload_once()
        await asyncio.gather(*retention)
        await up.drain()
    stored = await store.last_seq()
    dropped = int(await store.kv_get(DROPPED_KEY) or 0)
    assert cloud.seqs == sorted(set(cloud.seqs))
    assert len(cloud.seqs) + dropped == stored, f"cloud {len(cloud.seqs)} + dropped {dropped} != stored {stored}"
    assert cloud.lost == dropped
