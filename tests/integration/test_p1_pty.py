"""The P1 driver against the simulated meter on a real pty and a real loopback TCP socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from drivers.api import Driver
from drivers.p1.dsmr import P1Meter, SerialP1, TcpP1
from drivers.sim.p1_pty import SimP1Pty, SimP1Tcp, frame_telegram
from drivers.sim.physics import SimSite
from tests.waiting import stays, wait_until
from zapd.clock import ManualClock, ScaledClock
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
    await wait_until(cond, WAIT_S)


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
    sim = SimP1Tcp(site, split_chunks=True, seed=1)
    port = await sim.start()
    sink = Sink()
    try:
        with capture_logs() as logs:
            meter = _meter(TcpP1("127.0.0.1", port), clock)
            async with running(meter, sink):
                await _until(lambda: sim.connections == 1)
                await sim.send_once(clock.now())
                await sink.wait_for(1)

                await sim.stop()  # the dongle reboots: connection closed, port refused for a while
                await _until(lambda: meter.counters["link_errors"] >= 2)
                await sim.start()
                assert sim.port == port
                await _until(lambda: sim.connections == 2)
                await sim.send_once(clock.now())
                reading = await sink.wait_for(2)
    finally:
        await sim.stop()

    assert reading.values[POWER_W] == pytest.approx(site.grid_w, abs=1.0)
    assert meter.counters["connects"] == 2
    events = [e["event"] for e in logs]
    assert events.count("p1.link_down") == 1
    assert events.count("p1.link_up") == 1


async def test_pty_vanishing_is_survived() -> None:
    clock = ManualClock(T0)
    sim = SimP1Pty(_site(T0))
    meter = _meter(SerialP1(sim.port), clock)
    sink = Sink()
    async with running(meter, sink) as task:
        await _until(lambda: meter.connected)
        await sim.send_once(clock.now())
        await sink.wait_for(1)
        sim.close()  # USB cable pulled
        await _until(lambda: meter.counters["link_errors"] >= 2)
        assert not task.done() and not meter.connected


async def test_noise_overflow_and_malformed_line_do_not_stop_readings() -> None:
    clock = ManualClock(T0)
    with SimP1Pty(_site(T0)) as sim:
        meter = _meter(SerialP1(sim.port), clock)
        sink = Sink()
        async with running(meter, sink):
            await _until(lambda: meter.connected)
            for _ in range(12):  # 48 KiB of noise without a telegram end
                sim.write_raw(b"x" * 4096)
                await asyncio.sleep(0.005)  # wall-clock: paced so the noise arrives as many reads, not one
            # A valid CRC around a line the parser cannot read.
            sim.write_raw(frame_telegram("XMX5LGBBLB2410065887", ["1-3:0.2.8(50)", "1-0:1.7.0(ab.cde*kW)"]))
            await _until(lambda: meter.counters["parse_error"] == 1)
            await sim.send_once(clock.now())
            await sink.wait_for(1)
    assert meter.counters["overflow"] >= 1
    assert meter.counters["bad_crc"] == 0


FIXTURES = Path(__file__).parent.parent / "fixtures" / "dsmr"
KEY = "0123456789ABCDEF0123456789ABCDEF"

# Real recorded telegrams of each national variant, written byte for byte into the pty.
VARIANTS = [
    ("v2_2_iskra.txt", "2.2", 1010.0),
    ("v4_2_kaifa.txt", "4", 2027.0),
    ("v5_iskra.txt", "5", 244.0),
    ("be_fluvius_emucs171.txt", "5B", 0.0),
    ("lu_smarty.txt", "5L", -897.0),
    ("se_ell5.txt", "5S", 532.0),
    ("q3d_easymeter.txt", "Q3D", 2124.86),
]


@pytest.mark.parametrize(("name", "version", "power_w"), VARIANTS, ids=[v[0] for v in VARIANTS])
async def test_pty_real_variants(name: str, version: str, power_w: float) -> None:
    raw = (FIXTURES / name).read_bytes()
    clock = ManualClock(T0)
    with SimP1Pty(SimSite()) as sim:
        # A pty refuses 7E1 (see the test below), so the bytes go over its default 8N1.
        meter = P1Meter(device_id="grid", transport=SerialP1(sim.port), dsmr_version=version, clock=clock)
        sink = Sink()
        async with running(meter, sink):
            await _until(lambda: meter.connected)
            sim.write_raw(b"\r\n!garbage before the first telegram\r\n")
            sim.write_raw(raw[:50])
            await asyncio.sleep(0.01)  # wall-clock: a pause inside a telegram: it arrives in two reads
            sim.write_raw(raw[50:] + raw)
            await sink.wait_for(2)
    assert [r.values[POWER_W] for r in sink.readings] == [pytest.approx(power_w)] * 2
    assert meter.counters["parse_error"] == 0 and meter.counters["bad_crc"] == 0


async def test_pty_encrypted_smarty() -> None:
    clock = ManualClock(T0)
    site = _site(T0, battery_w=2000.0)
    with SimP1Pty(site, encryption_key=KEY, split_chunks=True, seed=3) as sim:
        meter = P1Meter(
            device_id="grid", transport=SerialP1(sim.port), dsmr_version="5L", decryption_key=KEY, clock=clock
        )
        sink = Sink()
        async with running(meter, sink):
            await _until(lambda: meter.connected)
            await sim.send_once(clock.now())
            sim.inject_garbage(b"\xdb\x08 not a frame")
            await sim.send_once(clock.now())
            await sink.wait_for(2)
    assert sink.readings[-1].values[POWER_W] == pytest.approx(site.grid_w, abs=1.0)


async def test_wrong_key_is_counted_not_fatal() -> None:
    clock = ManualClock(T0)
    with SimP1Pty(_site(T0), encryption_key=KEY) as sim:
        meter = P1Meter(
            device_id="grid",
            transport=SerialP1(sim.port),
            dsmr_version="5L",
            decryption_key="00" * 16,
            clock=clock,
        )
        sink = Sink()
        async with running(meter, sink) as task:
            await _until(lambda: meter.connected)
            for _ in range(3):
                await sim.send_once(clock.now())
            await _until(lambda: meter.counters["decrypt_error"] == 3)
            assert not task.done()
    assert sink.readings == []


async def test_bad_crc_flood_logs_once_and_counts_all() -> None:
    clock = ManualClock(T0)
    with capture_logs() as logs, SimP1Pty(_site(T0)) as sim:
        meter = _meter(SerialP1(sim.port), clock)
        sink = Sink()
        async with running(meter, sink):
            await _until(lambda: meter.connected)
            sim.inject_bad_crc(20)
            for _ in range(21):
                await sim.send_once(clock.now())
            await sink.wait_for(1)
    assert meter.counters["bad_crc"] == 20
    assert meter.counters["telegrams"] == 21
    dropped = [e for e in logs if e["event"] == "p1.telegram_dropped"]
    assert len(dropped) == 1 and dropped[0]["reason"] == "bad_crc"


async def test_silent_meter_logged_once_then_recovery() -> None:
    clock = ManualClock(T0)
    with capture_logs() as logs, SimP1Pty(_site(T0)) as sim:
        meter = P1Meter(device_id="grid", transport=SerialP1(sim.port), poll_s=0.05, clock=clock)
        sink = Sink()
        async with running(meter, sink):
            await _until(lambda: meter.connected)
            await _until(lambda: meter.counters["silent"] == 1)
            silent_lines = lambda: sum(e["event"] == "p1.meter_silent" for e in logs) == 1  # noqa: E731
            await stays(silent_lines, 0.3, "one silent line while still silent")  # 6 poll periods
            await sim.send_once(clock.now())
            await sink.wait_for(1)
    events = [e["event"] for e in logs]
    assert events.count("p1.meter_silent") == 1
    assert events.count("p1.meter_talking_again") == 1
    assert meter.counters["connects"] == 1


async def test_missing_port_retries_and_logs_once() -> None:
    clock = ManualClock(T0)
    with capture_logs() as logs:
        meter = _meter(SerialP1("/dev/does-not-exist-p1"), clock)
        async with running(meter, Sink()):
            await _until(lambda: meter.counters["link_errors"] >= 2)
    assert [e["event"] for e in logs].count("p1.link_down") == 1


async def test_refused_line_settings_are_a_link_error_not_a_crash() -> None:
    clock = ManualClock(T0)
    with SimP1Pty(_site(T0)) as sim:
        meter = _meter(SerialP1.for_version(sim.port, "4"), clock)  # 7E1: a pty says EINVAL
        async with running(meter, Sink()) as task:
            await _until(lambda: meter.counters["link_errors"] >= 2)
            assert not task.done()


async def test_sim_run_on_a_fast_clock_feeds_the_driver() -> None:
    clock = ScaledClock(T0, speed=50.0)
    site = SimSite()
    with SimP1Pty(site, step_site=True) as sim:
        meter = P1Meter(device_id="grid", transport=SerialP1(sim.port), clock=clock)
        assert isinstance(meter, Driver)
        sink = Sink()
        async with running(meter, sink):
            await _until(lambda: meter.connected)
            sim_task = asyncio.create_task(sim.run(clock, interval_s=1.0))
            try:
                await sink.wait_for(5)
            finally:
                sim_task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await sim_task
    timestamps = [r.ts for r in sink.readings]
    assert timestamps == sorted(timestamps) and timestamps[-1] > T0
    assert sink.readings[-1].values[POWER_W] == pytest.approx(site.grid_w, abs=50.0)
