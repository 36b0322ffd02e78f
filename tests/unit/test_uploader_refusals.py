"""The uploader when the cloud refuses a batch for what it holds: narrowed down, skipped, never a stall.

The fake cloud applies the real ingest check (`cloud_sync.wire.decode_batch`) plus rules of its own
the Zap cannot know (a newer cloud may be stricter), and the real server's sequence rules (gap-free
per site; a declared `lost_through` closes a gap). The store is the real SQLite outbox.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from cloud_sync.link import LinkStatus
from cloud_sync.uploader import Uploader, UploadRejected
from cloud_sync.wire import WireError, decode_batch, gunzip_limited
from zapd.clock import ManualClock
from zapd.model import BatterySetpoint, CommandResult, DerKind, Reading
from zapd.store import Store

T0 = datetime(2026, 6, 21, 12, tzinfo=UTC)


@dataclass
class FakeCloud:
    refuse_reading: Callable[[dict[str, Any]], bool] = lambda r: False
    refuse_command: Callable[[dict[str, Any]], bool] = lambda c: False
    refusal_code: str = "malformed"
    stored_through: int = 0
    lost: int = 0
    seqs: list[int] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    posts: int = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.posts += 1
        body = gunzip_limited(request.content)
        try:
            batch = decode_batch(body)
        except WireError as exc:
            return httpx.Response(422, json={"error": "malformed", "detail": str(exc)})
        doc = msgspec.json.decode(body)
        if any(self.refuse_reading(r) for r in doc["readings"]) or any(self.refuse_command(c) for c in doc["commands"]):
            return httpx.Response(422, json={"error": self.refusal_code, "detail": "refused"})
        st = self.stored_through
        if batch.lost_through is not None:
            if st < batch.last_seq:
                self.lost += max(0, batch.lost_through - st)
            else:
                return httpx.Response(200, json={"stored_through": st})
        elif st >= batch.last_seq:
            return httpx.Response(200, json={"stored_through": st})
        elif st < batch.first_seq - 1:
            return httpx.Response(409, json={"error": "gap", "stored_through": st})
        self.seqs += [r.seq for r in batch.readings if r.seq > st]
        self.commands += [c.der_id for c in batch.commands]
        self.stored_through = batch.last_seq
        return httpx.Response(200, json={"stored_through": self.stored_through})


async def fill(store: Store, n: int) -> None:
    await store.append_readings(
        [
            Reading(der_id="m", kind=DerKind.METER, ts=T0 + timedelta(seconds=i), values={"power_w": float(i)})
            for i in range(1, n + 1)
        ]
    )


async def drain(store: Store, cloud: FakeCloud, batch_max: int = 16) -> Uploader:
    async with httpx.AsyncClient(transport=httpx.MockTransport(cloud), base_url="http://cloud") as client:
        up = Uploader(store=store, client=client, site_id="s", key=SigningKey(b"\x02" * 32), clock=ManualClock(T0),
                      link=LinkStatus(), batch_max=batch_max)  # fmt: skip
        await up.drain()
    return up


async def test_readings_the_cloud_refuses_alone_are_skipped_the_rest_arrive_in_order(store: Store) -> None:
    await fill(store, 50)
    bad = {13, 14, 37}
    cloud = FakeCloud(refuse_reading=lambda r: r["values"]["power_w"] in bad)
    up = await drain(store, cloud)
    assert cloud.seqs == [s for s in range(1, 51) if s not in bad]
    assert cloud.lost == 3 and up.refused_by_cloud == 3
    assert await store.acked_seq() == 50 and await store.outbox_depth() == 0
    assert cloud.posts < 60  # halving, not one POST per reading


async def test_command_reports_the_cloud_refuses_do_not_hold_the_readings(store: Store) -> None:
    await fill(store, 10)
    cmds = [(CommandResult(command=BatterySetpoint(der_id=d, power_w=100.0), ok=True), "") for d in ("ok1", "evil")]
    await store.log_commands(T0, cmds)
    cloud = FakeCloud(refuse_command=lambda c: c["der_id"] == "evil")
    up = await drain(store, cloud)
    assert cloud.seqs == list(range(1, 11)) and cloud.lost == 0 and up.refused_by_cloud == 0
    assert await store.unsent_commands() == []  # given up on, kept in the local command log
    assert len(await store.recent_commands()) == 2


async def test_a_cloud_that_refuses_everything_is_not_given_the_outbox(store: Store) -> None:
    await fill(store, 40)
    cloud = FakeCloud(refuse_reading=lambda r: True)
    with pytest.raises(UploadRejected, match="in a row"):
        await drain(store, cloud)
    assert cloud.seqs == [] and await store.outbox_depth() == 40  # nothing deleted
    assert await store.acked_seq() == 0 and await store.kv_get("sync.refused_by_cloud") is None
    # Once the cloud accepts again, everything goes up: the readings tried one by one were not declared lost.
    cloud.refuse_reading = lambda r: False
    await drain(store, cloud)
    assert cloud.seqs == list(range(1, 41)) and cloud.lost == 0


async def test_a_refusal_that_is_not_about_content_is_not_narrowed_down(store: Store) -> None:
    await fill(store, 5)
    cloud = FakeCloud(refuse_reading=lambda r: True, refusal_code="site_mismatch")
    with pytest.raises(UploadRejected):
        await drain(store, cloud)
    assert cloud.posts == 1 and await store.kv_get("sync.refused_by_cloud") is None


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 120), st.sets(st.integers(1, 120), max_size=6), st.integers(1, 64))
def test_whatever_single_readings_the_cloud_refuses_the_rest_arrive_once_in_order(
    n: int, refused: set[int], batch_max: int
) -> None:
    refused = {s for s in refused if s <= n}  # at most six: never the streak of ten that stops the skipping

    async def run() -> tuple[FakeCloud, Uploader, int, int]:
        with tempfile.TemporaryDirectory() as tmp:
            store = await Store.open(Path(tmp) / "zapd.sqlite")
            try:
                await fill(store, n)
                cloud = FakeCloud(refuse_reading=lambda r: r["values"]["power_w"] in refused)
                up = await drain(store, cloud, batch_max=batch_max)
                return cloud, up, await store.acked_seq(), await store.outbox_depth()
            finally:
                await store.close()

    cloud, up, acked, depth = asyncio.run(run())
    good = [s for s in range(1, n + 1) if s not in refused]
    assert cloud.seqs == good  # every other reading, once, in order
    last_good = good[-1] if good else 0
    # A refused reading is declared lost by the next batch the cloud takes; trailing ones wait for one.
    declared = {s for s in refused if s < last_good}
    assert up.refused_by_cloud == cloud.lost == len(declared)
    assert acked == last_good and depth == n - last_good
