"""The hybrid-inverter driver against the simulator's real Modbus TCP server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from drivers.api import ConfigurationError, Controllable, Driver, DriverError
from drivers.modbus.bus import ModbusBus, close_all_buses, get_tcp_bus
from drivers.modbus.hybrid_inverter import ModbusHybridInverter
from drivers.modbus.register_map import MAPS_DIR, RegisterMap, load_register_map
from drivers.sim.modbus_server import SimModbusServer, start_modbus_sim
from drivers.sim.physics import BatteryModel, SimSite
from tests.waiting import stays, wait_until
from zapd.clock import SystemClock
from zapd.model import BatterySetpoint, DerKind, EvCurrent, Quality, Reading

POLL_S = 0.05


def make_site(*, soc: float = 0.5, battery_w: float = -800.0, pv_w: float = 1234.0) -> SimSite:
    battery = BatteryModel(capacity_wh=10_000.0, soc=soc, max_charge_w=5000.0, max_discharge_w=4000.0)
    site = SimSite(battery=battery)
    site.battery.power_w = battery_w
    site.pv_w = pv_w
    return site


@pytest.fixture
def site() -> SimSite:
    return make_site()


@pytest.fixture
async def sim(site: SimSite) -> AsyncIterator[SimModbusServer]:
    server = await start_modbus_sim(site)
    yield server
    await server.stop()


@pytest.fixture
async def bus(sim: SimModbusServer) -> AsyncIterator[ModbusBus]:
    b = get_tcp_bus(sim.host, sim.port, timeout_s=0.5, backoff_initial_s=0.05, backoff_max_s=0.2)
    yield b
    await close_all_buses()


def make_driver(
    bus: ModbusBus,
    *,
    unit_id: int = 1,
    device_id: str = "inv",
    register_map: RegisterMap | None = None,
    backoff_max_s: float = 0.3,
    max_charge_w: float | None = None,
    max_discharge_w: float | None = None,
    capacity_wh: float | None = None,
) -> ModbusHybridInverter:
    return ModbusHybridInverter(
        device_id=device_id,
        bus=bus,
        unit_id=unit_id,
        register_map=register_map or load_register_map("sim_hybrid"),
        poll_s=POLL_S,
        clock=SystemClock(),
        max_charge_w=max_charge_w,
        max_discharge_w=max_discharge_w,
        capacity_wh=capacity_wh,
        backoff_max_s=backoff_max_s,
    )


async def eventually(pred: Callable[[], bool], within_s: float = 3.0) -> None:
    """The driver's loop runs on its own schedule, so tests wait for its effects (tests/waiting.py)."""
    await wait_until(pred, within_s)


@contextlib.asynccontextmanager
async def running(driver: ModbusHybridInverter) -> AsyncIterator[list[Reading]]:
    readings: list[Reading] = []
    task = asyncio.create_task(driver.run(readings.append))
    try:
        yield readings
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled(), "run() must end only by cancellation"


def latest(readings: list[Reading], der_id: str) -> Reading:
    return [r for r in readings if r.der_id == der_id][-1]


async def test_driver_satisfies_the_protocols(bus: ModbusBus) -> None:
    driver = make_driver(bus)
    assert isinstance(driver, Driver)
    assert isinstance(driver, Controllable)


async def test_probe_reads_nameplate(bus: ModbusBus) -> None:
    driver = make_driver(bus)
    await driver.probe()
    battery, pv = driver.capabilities()
    assert battery.der_id == "inv.battery" and battery.kind is DerKind.BATTERY and battery.controllable
    assert (battery.max_charge_w, battery.max_discharge_w, battery.capacity_wh) == (5000.0, 4000.0, 10_000.0)
    assert pv.der_id == "inv.pv" and pv.kind is DerKind.PV and not pv.controllable


async def test_config_override_lowers_but_never_raises_nameplate(bus: ModbusBus) -> None:
    driver = make_driver(bus, max_charge_w=3000.0, max_discharge_w=9000.0)
    await driver.probe()
    battery = driver.capabilities()[0]
    assert (battery.max_charge_w, battery.max_discharge_w) == (3000.0, 4000.0)


async def test_poll_readings_match_the_site(bus: ModbusBus, site: SimSite) -> None:
    driver = make_driver(bus)
    async with running(driver) as readings:
        await eventually(lambda: len(readings) >= 2)
        batt, pv = latest(readings, "inv.battery"), latest(readings, "inv.pv")
        assert batt.kind is DerKind.BATTERY and pv.kind is DerKind.PV
        assert batt.values["soc"] == pytest.approx(0.5)
        assert batt.values["power_w"] == pytest.approx(-800.0)  # device counts + discharging; zapd + charging
        assert pv.values["power_w"] == pytest.approx(1234.0)
        assert batt.ts.tzinfo is not None

        site.battery.soc, site.battery.power_w, site.pv_w = 0.731, 1500.5, 0.0
        await eventually(lambda: latest(readings, "inv.battery").values["soc"] == pytest.approx(0.731))
        await eventually(lambda: latest(readings, "inv.pv").values["power_w"] == 0.0)
        assert latest(readings, "inv.battery").values["power_w"] == pytest.approx(1500.5)


async def test_setpoint_lands_in_the_site_and_reads_back(bus: ModbusBus, site: SimSite, sim: SimModbusServer) -> None:
    driver = make_driver(bus)
    await driver.probe()
    assert not sim.remote_control()
    result = await driver.apply(BatterySetpoint(der_id="inv.battery", power_w=2500.0))
    assert result.ok, result.detail
    assert sim.remote_control()
    assert site.battery.setpoint_w == 2500.0
    result = await driver.apply(BatterySetpoint(der_id="inv.battery", power_w=-4000.0))
    assert result.ok, result.detail
    assert site.battery.setpoint_w == -4000.0


@pytest.mark.parametrize("power_w", [5000.1, -4000.5, float("nan"), float("inf")])
async def test_setpoint_outside_nameplate_is_refused(
    bus: ModbusBus, site: SimSite, sim: SimModbusServer, power_w: float
) -> None:
    driver = make_driver(bus)
    await driver.probe()
    result = await driver.apply(BatterySetpoint(der_id="inv.battery", power_w=power_w))
    assert not result.ok
    assert site.battery.setpoint_w == 0.0
    assert sim.counters()["writes"] == 0, "a refused command must not reach the wire"


async def test_refuses_before_limits_are_known_and_foreign_commands(bus: ModbusBus) -> None:
    driver = make_driver(bus)
    result = await driver.apply(BatterySetpoint(der_id="inv.battery", power_w=100.0))
    assert not result.ok and "unknown" in result.detail
    assert not driver.capabilities()[0].controllable
    await driver.probe()
    assert not (await driver.apply(BatterySetpoint(der_id="other.battery", power_w=100.0))).ok
    assert not (await driver.apply(EvCurrent(der_id="inv.battery", current_a=6.0))).ok


async def test_safe_mode_writes_zero(bus: ModbusBus, site: SimSite) -> None:
    driver = make_driver(bus)
    await driver.probe()
    assert (await driver.apply(BatterySetpoint(der_id="inv.battery", power_w=-3000.0))).ok
    assert site.battery.setpoint_w == -3000.0
    await driver.safe_mode()
    assert site.battery.setpoint_w == 0.0


async def test_survives_server_restart_on_the_same_port(bus: ModbusBus, site: SimSite, sim: SimModbusServer) -> None:
    driver = make_driver(bus)
    with capture_logs() as logs:
        await _restart_scenario(driver, bus, site, sim)
    events = [e["event"] for e in logs]
    for event in ("modbus.link_down", "modbus.link_up", "modbus.device_error", "modbus.device_recovered"):
        assert events.count(event) == 1, (event, events)


async def _restart_scenario(driver: ModbusHybridInverter, bus: ModbusBus, site: SimSite, sim: SimModbusServer) -> None:
    async with running(driver) as readings:
        await eventually(lambda: driver.healthy)
        await sim.stop()
        await eventually(lambda: not driver.healthy)
        assert driver.counters["poll_errors"] > 0
        result = await driver.apply(BatterySetpoint(der_id="inv.battery", power_w=1000.0))
        assert not result.ok  # reported, not raised
        count, errors = len(readings), driver.counters["poll_errors"]
        await wait_until(lambda: driver.counters["poll_errors"] >= errors + 3, 10, "three more failed polls")
        assert len(readings) == count, "no readings while the device is away"

        site.battery.soc = 0.9
        restarted = await start_modbus_sim(site, port=sim.port)
        try:
            await eventually(lambda: driver.healthy)
            await eventually(lambda: latest(readings, "inv.battery").values["soc"] == pytest.approx(0.9))
            assert bus.counters["connects"] >= 2
            assert (await driver.apply(BatterySetpoint(der_id="inv.battery", power_w=1000.0))).ok
            assert site.battery.setpoint_w == 1000.0
        finally:
            await restarted.stop()


async def test_illegal_address_is_a_configuration_error(bus: ModbusBus) -> None:
    with pytest.raises(ConfigurationError):
        await bus.read_holding(1, 9999, 1)
    with pytest.raises(ConfigurationError):
        await bus.read_holding(1, 120, 1)  # soc lives in the input table
    assert bus.counters["config_errors"] == 2
    assert bus.connected, "an exception response is an answer: the link stays up"


async def test_illegal_address_is_not_retried_in_a_hot_loop(bus: ModbusBus, tmp_path: Path) -> None:
    text = (MAPS_DIR / "sim_hybrid.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("address = 120\n", "address = 125\n"))  # soc moved into a gap
    driver = make_driver(bus, register_map=load_register_map(bad), backoff_max_s=30.0)
    async with running(driver) as readings:
        await eventually(lambda: driver.counters["config_errors"] >= 1)
        # ~16 poll periods: the error is not retried at the poll rate
        await stays(lambda: driver.counters["config_errors"] == 1 and not readings, 0.8, "one error, no readings")
    assert readings == []
    assert driver.counters["config_errors"] == 1
    assert "illegal data address" in driver.last_error


async def test_two_units_share_one_connection() -> None:
    site1, site2 = make_site(soc=0.2, pv_w=100.0), make_site(soc=0.8, pv_w=200.0)
    sim = await start_modbus_sim(site1, extra_units={2: site2})
    try:
        bus = get_tcp_bus(sim.host, sim.port, timeout_s=0.5)
        assert get_tcp_bus(sim.host, sim.port) is bus
        d1, d2 = make_driver(bus, device_id="a", unit_id=1), make_driver(bus, device_id="b", unit_id=2)
        async with running(d1) as r1, running(d2) as r2:
            await eventually(lambda: len(r1) >= 4 and len(r2) >= 4)
            assert latest(r1, "a.battery").values["soc"] == pytest.approx(0.2)
            assert latest(r2, "b.battery").values["soc"] == pytest.approx(0.8)
            assert latest(r2, "b.pv").values["power_w"] == 200.0
            results = await asyncio.gather(
                d1.apply(BatterySetpoint(der_id="a.battery", power_w=-100.0)),
                d2.apply(BatterySetpoint(der_id="b.battery", power_w=200.0)),
            )
            assert all(r.ok for r in results), results
            assert (site1.battery.setpoint_w, site2.battery.setpoint_w) == (-100.0, 200.0)
            assert bus.counters["connects"] == 1
            assert sim.client_count == 1
    finally:
        await close_all_buses()
        await sim.stop()


async def test_unreachable_device_does_not_block_startup() -> None:
    with socket_port() as port:
        bus = get_tcp_bus("127.0.0.1", port, timeout_s=0.2, backoff_initial_s=0.05, backoff_max_s=0.1)
        driver = make_driver(bus, max_charge_w=1000.0, max_discharge_w=1000.0)
        try:
            async with running(driver) as readings:
                await eventually(lambda: driver.counters["probe_errors"] >= 2)
                assert readings == []
                assert driver.capabilities()[0].controllable  # config limits suffice to be commanded
                with pytest.raises(DriverError):
                    await bus.read_input(1, 100, 1)
        finally:
            await close_all_buses()


@contextlib.contextmanager
def socket_port() -> Iterator[int]:
    """A loopback port nobody listens on (bound but not listening, so connects are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


async def test_other_exception_codes_are_driver_errors_not_configuration(bus: ModbusBus) -> None:
    with pytest.raises(DriverError) as info:
        await bus.read_input(7, 100, 1)  # no such unit behind this endpoint: device failure (4)
    assert not isinstance(info.value, ConfigurationError)
    assert "exception 4" in str(info.value)
    assert bus.counters["exception_responses"] == 1 and bus.counters["config_errors"] == 0


async def test_silent_device_times_out_and_the_bus_reconnects() -> None:
    accepted = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        with contextlib.suppress(ConnectionError):
            await reader.read(1024)  # take the request, never answer
            await reader.read(1024)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    bus = get_tcp_bus("127.0.0.1", port, timeout_s=0.2, backoff_initial_s=0.05, backoff_max_s=0.1)
    try:
        for _ in range(2):
            async with asyncio.timeout(2):
                with pytest.raises(DriverError, match="no answer within"):
                    await bus.read_input(1, 100, 1)
        assert bus.counters["timeouts"] == 2
        assert accepted == 2, "a timed-out connection is not reused: a late answer would be misread"
    finally:
        await close_all_buses()
        server.close()
        await server.wait_closed()


async def test_implausible_values_are_flagged_suspect(bus: ModbusBus, site: SimSite) -> None:
    site.battery.soc = 1.2  # a broken BMS or a wrong scale in the map
    driver = make_driver(bus)
    async with running(driver) as readings:
        await eventually(lambda: len(readings) >= 2)
        assert latest(readings, "inv.battery").quality is Quality.SUSPECT
        assert latest(readings, "inv.battery").values["soc"] == pytest.approx(1.2)
        assert latest(readings, "inv.pv").quality is Quality.GOOD
        site.battery.soc = 0.4
        await eventually(lambda: latest(readings, "inv.battery").quality is Quality.GOOD)


async def test_device_leaves_remote_control_when_commands_stop(
    bus: ModbusBus, site: SimSite, sim: SimModbusServer
) -> None:
    t0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    site.step(t0)
    driver = make_driver(bus)
    await driver.probe()
    assert (await driver.apply(BatterySetpoint(der_id="inv.battery", power_w=2000.0))).ok
    assert sim.remote_control() and sim.counters()["writes"] == 3  # timeout, mode, setpoint
    site.step(t0 + timedelta(seconds=299))
    assert (await driver.apply(BatterySetpoint(der_id="inv.battery", power_w=1500.0))).ok
    site.step(t0 + timedelta(seconds=299 + 301))  # more than the 300 s the driver asked for
    async with running(driver) as readings:
        await eventually(lambda: len(readings) >= 2)
    assert not sim.remote_control()
    assert site.battery.setpoint_w == 0.0
    assert (await driver.apply(BatterySetpoint(der_id="inv.battery", power_w=1000.0))).ok  # re-enables
    assert sim.remote_control() and site.battery.setpoint_w == 1000.0


async def test_setpoint_the_map_cannot_encode_is_reported_not_raised(bus: ModbusBus, tmp_path: Path) -> None:
    text = (MAPS_DIR / "sim_hybrid.toml").read_text()
    unsigned = tmp_path / "unsigned.toml"
    setpoint = 'address = 40210\ntable = "holding"\ntype = "s32"'
    assert setpoint in text
    unsigned.write_text(text.replace(setpoint, setpoint.replace("s32", "u32")))
    driver = make_driver(bus, register_map=load_register_map(unsigned))
    await driver.probe()
    result = await driver.apply(BatterySetpoint(der_id="inv.battery", power_w=-100.0))
    assert not result.ok and "does not fit" in result.detail


async def test_unset_nameplate_falls_back_to_config(bus: ModbusBus, site: SimSite) -> None:
    site.battery.capacity_wh = 0.0
    driver = make_driver(bus)
    await driver.probe()
    assert driver.capabilities()[0].capacity_wh == 0.0 and driver.capabilities()[0].controllable
    configured = make_driver(bus, capacity_wh=9000.0)
    await configured.probe()
    assert configured.capabilities()[0].capacity_wh == 9000.0
