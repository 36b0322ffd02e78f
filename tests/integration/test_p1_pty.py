"""The P1 driver against the simulated meter on a real pty and a real loopback TCP socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest

from drivers.p1.dsmr import P1Meter, SerialP1, TcpP1
from drivers.sim.p1_pty import SimP1Pty, SimP1Tcp
from drivers.sim.physics import SimSite
from zapd.clock import ManualClock
from zapd.model import EXPORT_WH, IMPORT_WH, PHASE_CURRENT_A, POWER_W, DerKind, Reading

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
WAIT_S = 5.0


class Sink:
    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self._event = asyncio.Event()

    def __call__(self, reading: Reading) -> None:
        self.readings.append(reading)
        self._event.set()

    async def wait_for(self, count: int) -> Reading:
        async with asyncio.timeout(WAIT_S):
            while len(self.readings) < count:
                self._event.clear()
                await self._event.wait()
        return self.readings[count - 1]


async def _until(cond: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while True:
            if cond():
                return
            await asyncio.sleep(0.01)


def _site(now: datetime, *, battery_w: float = 0.0) -> SimSite:
    site = SimSite()
    site.battery.setpoint_w = battery_w
    site.step(now)
    return site


@asynccontextmanager
async def running(meter: P1Meter, sink: Sink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(meter.run(sink))
    try:
        yield task
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def _meter(transport: SerialP1 | TcpP1, clock: ManualClock) -> P1Meter:
    return P1Meter(device_id="grid", transport=transport, clock=clock, poll_s=1.0)


async def test_pty_readings_match_site() -> None:
    clock = ManualClock(T0)
    site = _site(T0)
    with SimP1Pty(site) as sim:
        meter = _meter(SerialP1(sim.port), clock)
        sink = Sink()
        async with running(meter, sink):
            await _until(lambda: meter.connected)
            await sim.send_once(clock.now())
            first = await sink.wait_for(1)
            # An hour of exporting PV at midday, then the next telegram.
            clock.advance(3600)
            site.step(clock.now())
            await sim.send_once(clock.now())
            second = await sink.wait_for(2)

    assert first.kind is DerKind.METER and first.der_id == "grid"
    assert first.ts == T0
    assert second.values[POWER_W] == pytest.approx(site.grid_w, abs=1.0)  # kW with 3 decimals
    assert second.values[POWER_W] < 0  # midday PV exports
    assert second.values[EXPORT_WH] == pytest.approx(site.counters.export_wh, abs=1.0)
    assert second.values[IMPORT_WH] == pytest.approx(site.counters.import_wh, abs=1.0)
    for key in PHASE_CURRENT_A:
        assert second.values[key] == pytest.approx(site.grid_w / 3 / 230, abs=1.0)
        assert second.values[key] <= 0
    assert meter.counters["readings"] == 2 and meter.counters["bad_crc"] == 0
    assert meter.last_raw is not None and meter.last_raw.startswith("/")
    assert meter.capabilities()[0].phases == 3


async def test_pty_split_chunks_bad_crc_and_garbage() -> None:
    clock = ManualClock(T0)
    site = _site(T0)
    with SimP1Pty(site, split_chunks=True, seed=7) as sim:
        meter = _meter(SerialP1(sim.port), clock)
        sink = Sink()
        async with running(meter, sink):
            await _until(lambda: meter.connected)
            await sim.send_once(clock.now())
            await sink.wait_for(1)

            sim.inject_bad_crc()
            await sim.send_once(clock.now())
            sim.inject_garbage(b"\x00\xff garbage !12\r\n/half a telegram\r\n1-0:1.7.0(")
            await sim.send_once(clock.now())
            await sink.wait_for(2)

            for _ in range(3):
                sim.inject_garbage(bytes(range(256)))
                await sim.send_once(clock.now())
            await sink.wait_for(5)

    assert meter.counters["bad_crc"] == 1
    assert meter.counters["readings"] == 5
    assert all(r.values[POWER_W] == pytest.approx(site.grid_w, abs=1.0) for r in sink.readings)


async def test_tcp_reconnects_after_server_restart() -> None:
    clock = ManualClock(T0)
    site = _site(T0, battery_w=3000.0)
    sim = SimP1Tcp(site)
    port = await sim.start()
    meter = _meter(TcpP1("127.0.0.1", port), clock)
    sink = Sink()
    try:
        async with running(meter, sink):
            await _until(lambda: sim.connections == 1)
            await sim.send_once(clock.now())
            await sink.wait_for(1)

            await sim.stop()
            await _until(lambda: not meter.connected)
            await sim.start()
            assert sim.port == port
            await _until(lambda: sim.connections == 2)
            await sim.send_once(clock.now())
            reading = await sink.wait_for(2)
    finally:
        await sim.stop()

    assert reading.values[POWER_W] == pytest.approx(site.grid_w, abs=1.0)
    assert meter.counters["connects"] >= 2
