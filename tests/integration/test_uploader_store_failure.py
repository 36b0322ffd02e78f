"""The uploader when the local store fails (disk full) after the cloud has taken a batch.

Promise: a full disk is a clear error and never a crash or a loss. The cloud stored the batch
but zapd cannot record the acknowledgement: the uploader must log it, keep running (not leave
it to the supervisor's crash-and-restart with a traceback), and, once the store works again,
re-send the same batch (the server answers idempotently) and record the ack. The link is not
reported down for a local problem.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec
import pytest
from nacl.signing import SigningKey

from cloud_sync.link import LinkStatus
from cloud_sync.uploader import Uploader
from cloud_sync.wire import gunzip_limited
from tests.waiting import wait_until
from zapd.clock import ManualClock
from zapd.model import DerKind, Reading
from zapd.store import Store

T0 = datetime(2026, 6, 21, tzinfo=UTC)


class FlakyStore(Store):
    """A real store whose ack write fails while `full` is set, like SQLite on a full disk."""

    full = False

    async def ack_through(self, seq: int) -> None:
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        await super().ack_through(seq)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FlakyStore]:
    s = await FlakyStore.open(tmp_path / "zapd.sqlite")
    assert isinstance(s, FlakyStore)
    yield s
    await s.close()


async def test_ack_that_cannot_be_stored_is_retried_not_a_crash(store: FlakyStore) -> None:
    stored_through = 0
    posts = 0

    def cloud(request: httpx.Request) -> httpx.Response:
        nonlocal stored_through, posts
        posts += 1
        batch = msgspec.json.decode(gunzip_limited(request.content))
        stored_through = max(stored_through, batch["last_seq"])
        return httpx.Response(200, json={"stored_through": stored_through})

    readings = [Reading(der_id="m", kind=DerKind.METER, ts=T0 + timedelta(seconds=i), values={"power_w": 1.0})
                for i in range(20)]  # fmt: skip
    await store.append_readings(readings)
    link = LinkStatus()
    async with httpx.AsyncClient(transport=httpx.MockTransport(cloud), base_url="http://cloud") as client:
        up = Uploader(store=store, client=client, site_id="s", key=SigningKey(b"\x01" * 32), clock=ManualClock(T0),
                      link=link, interval_s=0.01, batch_max=50)  # fmt: skip
        store.full = True
        task = asyncio.create_task(up.run())
        await wait_until(lambda: posts >= 2 or task.done(), 10, "two posts")
        assert not task.done(), task.exception() if task.done() else ""
        assert await store.acked_seq() == 0 and posts >= 2  # retried, the cloud answered each time
        assert link.state != "down"
        store.full = False

        async def all_acked() -> bool:
            return await store.acked_seq() == 20

        await wait_until(all_acked, 10, "all 20 acked")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await store.acked_seq() == 20
    assert await store.outbox_depth() == 0
