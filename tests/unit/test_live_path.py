"""The edge half of live telemetry (issue 16: reading -> subscriber p99 <= 1 s): the writer flushes
shortly after the first new reading (not on a fixed 1 s period), at a bounded rate, and wakes the
uploader, which then uploads right after the write instead of on its own phase, the interval still
bounding the upload rate. Real SQLite outbox; the cloud is a fake (httpx MockTransport)."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import httpx
import msgspec
import pytest
from nacl.signing import SigningKey

from cloud_sync.link import LinkStatus
from cloud_sync.uploader import Uploader
from cloud_sync.wire import decode_batch
from tests.waiting import wait_until
from zapd import telemetry_writer
from zapd.model import DerKind, Reading
from zapd.store import Store
from zapd.telemetry_writer import TelemetryWriter

T0 = datetime(2026, 6, 21, 12, tzinfo=UTC)


def reading(i: int) -> Reading:
    return Reading(der_id="m", kind=DerKind.METER, ts=T0 + timedelta(seconds=i), values={"power_w": float(i)})


async def test_a_new_reading_is_flushed_without_waiting_a_period(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # A period that never ends: only a flush driven by the reading itself can store it.
    monkeypatch.setattr(telemetry_writer, "TELEMETRY_FLUSH_S", 3600.0)
    monkeypatch.setattr(telemetry_writer, "FLUSH_DELAY_S", 0.0, raising=False)
    monkeypatch.setattr(telemetry_writer, "MIN_FLUSH_GAP_S", 0.0, raising=False)
    woken: list[int] = []
    writer = TelemetryWriter(store, on_written=lambda: woken.append(writer.written))
    task = asyncio.create_task(writer.run())
    try:
        await asyncio.sleep(0.05)
        assert writer.written == 0 and woken == []  # nothing new: no transaction, no wake-up
        writer.add(reading(1))
        await wait_until(lambda: writer.written == 1, 10, "the reading flushed")
        await wait_until(lambda: woken == [1], 10, "the uploader woken after the write")
        assert await store.outbox_depth() == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_flushes_are_rate_bounded_whatever_the_readings_rate(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(telemetry_writer, "FLUSH_DELAY_S", 0.0)
    monkeypatch.setattr(telemetry_writer, "MIN_FLUSH_GAP_S", 0.2)
    flushes: list[float] = []  # when each transaction began
    loop = asyncio.get_running_loop()
    append = store.append_readings

    async def timed(batch: list[Reading]) -> None:
        flushes.append(loop.time())
        await append(batch)

    monkeypatch.setattr(store, "append_readings", timed)
    writer = TelemetryWriter(store)
    task = asyncio.create_task(writer.run())
    try:
        for i in range(100):  # a reading every 10 ms for a second
            writer.add(reading(i))
            await asyncio.sleep(0.01)
        await wait_until(lambda: writer.written == 100, 10, "all written")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    gaps = [b - a for a, b in itertools.pairwise(flushes)]
    assert len(flushes) >= 2 and min(gaps) >= 0.19, gaps  # never two transactions closer than the gap
    assert await store.outbox_depth() == 100


class StepClock:
    """Sleeps last until the test releases them, oldest first; time moves by what the sleep asked."""

    speed = 1.0

    def __init__(self) -> None:
        self._now = T0
        self.sleeps: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sleeps.append((seconds, fut))
        await fut

    def waiting(self) -> list[float]:
        return [s for s, f in self.sleeps if not f.done()]

    def release(self) -> None:
        seconds, fut = next((s, f) for s, f in self.sleeps if not f.done())
        self._now += timedelta(seconds=max(0.0, seconds))
        fut.set_result(None)


class Cloud:
    def __init__(self) -> None:
        self.posts: list[list[int]] = []
        self.through = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        batch = decode_batch(request.content)  # compress=False: the plain JSON batch
        self.posts.append([r.seq for r in batch.readings])
        self.through = batch.last_seq
        return httpx.Response(200, content=msgspec.json.encode({"stored_through": self.through}))


async def test_the_uploader_uploads_right_after_a_write_within_its_rate_bound(store: Store) -> None:
    clock, cloud = StepClock(), Cloud()
    async with httpx.AsyncClient(transport=httpx.MockTransport(cloud), base_url="http://cloud") as client:
        up = Uploader(store=store, client=client, site_id="s", key=SigningKey(b"\x02" * 32), clock=clock,
                      link=LinkStatus(), interval_s=5.0, compress=False)  # fmt: skip
        up.data_ready()  # a writer is wired: rounds follow its writes
        task = asyncio.create_task(up.run())
        try:
            await wait_until(lambda: clock.waiting() == [5.0], 10, "first round done, the rate bound running")
            assert cloud.posts == []  # nothing was there
            clock.release()  # the interval has passed, and nothing new: the round waits for the writer
            await wait_until(lambda: clock.waiting() == [5.0], 10, "waiting for a write (or one more interval)")
            await store.append_readings([reading(1), reading(2)])
            up.data_ready()
            await wait_until(lambda: cloud.posts == [[1, 2]], 10, "uploaded on the wake-up")
            assert clock.sleeps[1][1].cancelled()  # not by the fallback interval: it was still running
            # The next round's bound: a write now waits for it (at most one upload per interval).
            await wait_until(lambda: len(clock.waiting()) == 1 and len(clock.sleeps) == 3, 10, "bound")
            await store.append_readings([reading(3)])
            up.data_ready()
            await asyncio.sleep(0.05)
            assert cloud.posts == [[1, 2]]
            clock.release()
            await wait_until(lambda: cloud.posts == [[1, 2], [3]], 10, "uploaded once the bound passed")
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
