"""Modbus RTU over a real serial line: zapd's serial bus <-> pty null modem <-> pymodbus's RTU server."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable

import pytest

from drivers.api import DriverError
from drivers.modbus.bus import BusConflictError, ModbusBus, close_all_buses, get_serial_bus
from drivers.modbus.hybrid_inverter import ModbusHybridInverter
from drivers.modbus.register_map import load_register_map
from drivers.sim.modbus_rtu import NullModem, SimModbusRtuServer, start_modbus_rtu_sim
from drivers.sim.physics import BatteryModel, SimSite
from tests.waiting import stays, wait_until
from zapd.clock import SystemClock
from zapd.model import BatterySetpoint, Reading

BAUD = 38400
POLL_S = 0.05


def make_site(*, soc: float, pv_w: float, battery_w: float = 0.0) -> SimSite:
    site = SimSite(battery=BatteryModel(soc=soc, max_charge_w=5000.0, max_discharge_w=4000.0))
    site.pv_w, site.battery.power_w = pv_w, battery_w
    return site


@pytest.fixture
async def line() -> AsyncIterator[NullModem]:
    modem = NullModem()
    modem.open()
    yield modem
    await close_all_buses()
    modem.close()


@pytest.fixture
def site1() -> SimSite:
    return make_site(soc=0.25, pv_w=1500.0, battery_w=-700.0)


@pytest.fixture
def site2() -> SimSite:
    return make_site(soc=0.75, pv_w=300.0)


@pytest.fixture
async def rtu(line: NullModem, site1: SimSite, site2: SimSite) -> AsyncIterator[SimModbusRtuServer]:
    server = await start_modbus_rtu_sim(site1, line.port_b, extra_units={2: site2}, baudrate=BAUD)
    yield server
    await server.stop()


def serial_bus(line: NullModem, *, min_gap_s: float | None = None) -> ModbusBus:
    return get_serial_bus(line.port_a, baudrate=BAUD, timeout_s=0.5, backoff_initial_s=0.05, min_gap_s=min_gap_s)


def make_driver(bus: ModbusBus, unit_id: int, device_id: str) -> ModbusHybridInverter:
    return ModbusHybridInverter(
        device_id=device_id,
        bus=bus,
        unit_id=unit_id,
        register_map=load_register_map("sim_hybrid"),
        poll_s=POLL_S,
        clock=SystemClock(),
        backoff_max_s=0.3,
    )


@contextlib.asynccontextmanager
async def running(*drivers: ModbusHybridInverter) -> AsyncIterator[list[Reading]]:
    readings: list[Reading] = []
    tasks = [asyncio.create_task(d.run(readings.append)) for d in drivers]
    try:
        yield readings
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def eventually(pred: Callable[[], bool], within_s: float = 3.0) -> None:
    await wait_until(pred, within_s)


def latest(readings: list[Reading], der_id: str) -> Reading:
    return [r for r in readings if r.der_id == der_id][-1]


async def test_rtu_probe_poll_and_write(line: NullModem, rtu: SimModbusRtuServer, site1: SimSite) -> None:
    bus = serial_bus(line)
    driver = make_driver(bus, 1, "inv")
    await driver.probe()
    battery = driver.capabilities()[0]
    assert (battery.max_charge_w, battery.max_discharge_w, battery.capacity_wh) == (5000.0, 4000.0, 10_000.0)
    async with running(driver) as readings:
        await eventually(lambda: len(readings) >= 4)
        assert latest(readings, "inv.battery").values == pytest.approx({"power_w": -700.0, "soc": 0.25})
        assert latest(readings, "inv.pv").values["power_w"] == 1500.0
        result = await driver.apply(BatterySetpoint(der_id="inv.battery", power_w=-2500.0))
        assert result.ok, result.detail
    assert site1.battery.setpoint_w == -2500.0 and rtu.remote_control(1)
    assert bus.counters["connects"] == 1 and bus.counters["errors"] == 0


async def test_rtu_two_unit_ids_share_one_line(
    line: NullModem, rtu: SimModbusRtuServer, site1: SimSite, site2: SimSite
) -> None:
    bus = serial_bus(line)
    assert get_serial_bus(line.port_a, baudrate=BAUD) is bus, "one owner per port"
    d1, d2 = make_driver(bus, 1, "a"), make_driver(bus, 2, "b")
    async with running(d1, d2) as readings:
        await eventually(lambda: sum(r.der_id == "a.battery" for r in readings) >= 3)
        await eventually(lambda: sum(r.der_id == "b.battery" for r in readings) >= 3)
        assert latest(readings, "a.battery").values["soc"] == pytest.approx(0.25)
        assert latest(readings, "b.battery").values["soc"] == pytest.approx(0.75)
        assert latest(readings, "b.pv").values["power_w"] == 300.0
        results = await asyncio.gather(
            d1.apply(BatterySetpoint(der_id="a.battery", power_w=1000.0)),
            d2.apply(BatterySetpoint(der_id="b.battery", power_w=-1000.0)),
        )
        assert all(r.ok for r in results), results
    assert (site1.battery.setpoint_w, site2.battery.setpoint_w) == (1000.0, -1000.0)
    assert bus.counters["errors"] == 0, "interleaved pollers must never garble each other's frames"
    _assert_one_frame_at_a_time(line)


def _assert_one_frame_at_a_time(line: NullModem) -> None:
    """On the wire, requests and answers strictly alternate: never a second request before the answer."""
    runs: list[bool] = []
    for chunk in line.chunks:
        if not runs or runs[-1] != chunk.a_to_b:
            runs.append(chunk.a_to_b)
    assert runs[0] is True
    assert all(a != b for a, b in itertools.pairwise(runs))


async def test_rtu_frames_keep_the_configured_gap(line: NullModem, rtu: SimModbusRtuServer) -> None:
    gap_s = 0.03
    bus = serial_bus(line, min_gap_s=gap_s)
    assert bus.min_gap_s == gap_s
    for _ in range(6):
        await asyncio.gather(bus.read_input(1, 100, 2), bus.read_input(2, 100, 2), bus.read_holding(1, 40100, 2))
    _assert_one_frame_at_a_time(line)
    gaps = [nxt.at - prev.at for prev, nxt in itertools.pairwise(line.chunks) if not prev.a_to_b and nxt.a_to_b]
    assert len(gaps) >= 17
    # The relay sees the answer's last byte a little after the bus does, so allow a small clock slack.
    assert min(gaps) >= gap_s - 0.005, gaps


def test_rtu_default_gap_is_three_and_a_half_characters() -> None:
    slow = get_serial_bus("/dev/ttyFAKE0", baudrate=9600, parity="E")
    assert slow.min_gap_s == pytest.approx(3.5 * 11 / 9600)
    fast = get_serial_bus("/dev/ttyFAKE1", baudrate=115200)
    assert fast.min_gap_s == pytest.approx(0.00175)
    asyncio.run(close_all_buses())


async def test_same_port_with_other_line_settings_is_refused(line: NullModem) -> None:
    serial_bus(line)
    with pytest.raises(BusConflictError, match=line.port_a):
        get_serial_bus(line.port_a, baudrate=9600)
    with pytest.raises(BusConflictError):
        get_serial_bus(line.port_a, baudrate=BAUD, parity="E")


async def test_silent_unit_times_out_without_taking_the_line_down(line: NullModem, rtu: SimModbusRtuServer) -> None:
    bus = serial_bus(line)
    assert len(await bus.read_input(1, 100, 2)) == 2
    line.muted_units.add(2)  # unit 2 unplugged from the line
    with pytest.raises(DriverError, match="no answer within"):
        await bus.read_input(2, 100, 2)
    assert len(await bus.read_input(1, 100, 2)) == 2
    line.muted_units.clear()
    assert len(await bus.read_input(2, 100, 2)) == 2
    assert bus.counters["timeouts"] == 1 and bus.counters["disconnects"] == 0


async def test_unplugged_line_is_reported_and_recovers(line: NullModem, rtu: SimModbusRtuServer) -> None:
    bus = serial_bus(line)
    driver = make_driver(bus, 1, "inv")
    async with running(driver) as readings:
        await eventually(lambda: driver.healthy)
        line.cut = True
        await eventually(lambda: not driver.healthy)
        count = len(readings)
        await stays(lambda: len(readings) == count, 0.2, "no readings from a cut line")
        line.cut = False
        await eventually(lambda: driver.healthy)
        await eventually(lambda: len(readings) > count)
