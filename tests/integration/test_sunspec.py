"""SunSpec discovery, polling and model-124 control against the simulator's real model chain over TCP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
from pymodbus.constants import ExcCodes

from drivers.api import ConfigurationError, Controllable, Driver, DriverError
from drivers.modbus.bus import ModbusBus, close_all_buses, get_tcp_bus
from drivers.modbus.sunspec import SunSpecInverter, scan_sunspec
from drivers.sim.modbus_server import start_modbus_sim
from drivers.sim.physics import BatteryModel, SimSite
from drivers.sim.sunspec_server import SimSunSpecServer, start_sunspec_sim
from tests.waiting import stays, wait_until
from zapd.clock import Clock, ManualClock, SystemClock
from zapd.model import BatterySetpoint, DerKind, Reading

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def make_site() -> SimSite:
    site = SimSite(battery=BatteryModel(capacity_wh=12_000.0, soc=0.42, max_charge_w=5000.0, max_discharge_w=4000.0))
    site.pv_w, site.battery.power_w, site.grid_w = 3200.0, 1000.0, -850.0
    site.counters.import_wh, site.counters.export_wh = 1234.0, 567.0
    return site


@pytest.fixture
def site() -> SimSite:
    return make_site()


@pytest.fixture
async def sim(site: SimSite) -> AsyncIterator[SimSunSpecServer]:
    server = await start_sunspec_sim(site)
    yield server
    await close_all_buses()
    await server.stop()


@pytest.fixture
def bus(sim: SimSunSpecServer) -> ModbusBus:
    return get_tcp_bus(sim.host, sim.port, timeout_s=0.5, backoff_initial_s=0.05, backoff_max_s=0.2)


def make_driver(
    bus: ModbusBus,
    clock: Clock | None = None,
    *,
    backoff_max_s: float = 0.3,
    max_charge_w: float | None = None,
    max_writes_per_hour: int | None = None,
    revert_timeout_s: int = 300,
) -> SunSpecInverter:
    return SunSpecInverter(
        device_id="ss",
        bus=bus,
        unit_id=1,
        poll_s=0.05,
        clock=clock or SystemClock(),
        backoff_max_s=backoff_max_s,
        max_charge_w=max_charge_w,
        max_writes_per_hour=max_writes_per_hour,
        revert_timeout_s=revert_timeout_s,
    )


async def eventually(pred: Callable[[], bool], within_s: float = 3.0) -> None:
    await wait_until(pred, within_s)


@contextlib.asynccontextmanager
async def running(driver: SunSpecInverter) -> AsyncIterator[list[Reading]]:
    readings: list[Reading] = []
    task = asyncio.create_task(driver.run(readings.append))
    try:
        yield readings
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled()


def latest(readings: list[Reading], der_id: str) -> Reading:
    return [r for r in readings if r.der_id == der_id][-1]


@pytest.mark.parametrize("base", [40000, 50000, 0, 40001])
async def test_scan_finds_the_marker_and_walks_the_chain(site: SimSite, base: int) -> None:
    sim = await start_sunspec_sim(site, base=base)
    try:
        bus = get_tcp_bus(sim.host, sim.port, timeout_s=0.5)
        device = await scan_sunspec(bus, 1)
    finally:
        await close_all_buses()
        await sim.stop()
    assert device.base == base
    assert [m.id for m in device.models] == [1, 103, 120, 124, 203, 713]
    assert device.models[0].address == base + 2
    assert (device.manufacturer, device.model_name, device.serial) == ("zapd", "SimHybrid SunSpec", "SIM-0001")
    assert device.max_ac_power_w() == 8000.0
    assert device.max_charge_w() == 5000.0  # WChaMax, scale factor +1
    assert device.max_discharge_w() == 4000.0  # model 120 MaxDisChaRte
    assert device.capacity_wh() == 12_000.0  # model 713 WHRtg
    m124 = device.model(124)
    assert m124 is not None and m124.number("ChaState") == pytest.approx(42.0)


async def test_capabilities_from_the_scan(bus: ModbusBus) -> None:
    driver = make_driver(bus, max_charge_w=3000.0)
    assert isinstance(driver, Driver) and isinstance(driver, Controllable)
    assert driver.capabilities() == []
    await driver.scan()
    caps = {c.der_id: c for c in driver.capabilities()}
    assert set(caps) == {"ss.pv", "ss.battery", "ss.meter"}
    battery = caps["ss.battery"]
    assert battery.controllable and battery.model == "zapd SimHybrid SunSpec"
    assert (battery.max_charge_w, battery.max_discharge_w, battery.capacity_wh) == (3000.0, 4000.0, 12_000.0)
    assert caps["ss.pv"].max_power_w == 8000.0 and caps["ss.meter"].kind is DerKind.METER


async def test_poll_readings(bus: ModbusBus, site: SimSite) -> None:
    driver = make_driver(bus)
    async with running(driver) as readings:
        await eventually(lambda: driver.healthy and len(readings) >= 6)
        assert latest(readings, "ss.pv").values["power_w"] == 3200.0
        assert latest(readings, "ss.battery").values["soc"] == pytest.approx(0.42)
        meter = latest(readings, "ss.meter").values
        assert meter["power_w"] == -850.0
        assert (meter["import_wh"], meter["export_wh"]) == (1234.0, 567.0)
        assert meter["l1_a"] == pytest.approx(-850.0 / 3 / 230, abs=0.01)
        site.battery.soc = 0.9
        await eventually(lambda: latest(readings, "ss.battery").values["soc"] == pytest.approx(0.9))


async def test_storage_control_sets_the_rate_window(bus: ModbusBus, site: SimSite, sim: SimSunSpecServer) -> None:
    driver = make_driver(bus)
    assert not (await driver.apply(BatterySetpoint(der_id="ss.battery", power_w=100.0))).ok  # not scanned
    await driver.scan()
    result = await driver.apply(BatterySetpoint(der_id="ss.battery", power_w=2000.0))
    assert result.ok, result.detail
    assert site.battery.setpoint_w == pytest.approx(2000.0)
    img = sim.device.image
    assert (img.get(124, "StorCtl_Mod"), img.get(124, "InWRte"), img.get(124, "OutWRte")) == (3, 40.0, -50.0)
    assert img.get(124, "InOutWRte_RvrtTms") == 300
    result = await driver.apply(BatterySetpoint(der_id="ss.battery", power_w=-3000.0))
    assert result.ok, result.detail
    assert site.battery.setpoint_w == pytest.approx(-3000.0)
    assert not (await driver.apply(BatterySetpoint(der_id="ss.battery", power_w=-4500.0))).ok  # beyond 4000 W
    await driver.safe_mode()
    assert site.battery.setpoint_w == 0.0


async def test_device_reverts_when_zapd_stops_talking(bus: ModbusBus, site: SimSite, sim: SimSunSpecServer) -> None:
    site.step(T0)
    driver = make_driver(bus, revert_timeout_s=60)
    await driver.scan()
    assert (await driver.apply(BatterySetpoint(der_id="ss.battery", power_w=1500.0))).ok
    site.step(T0 + timedelta(seconds=61))
    await bus.read_holding(1, 40000, 2)  # any request lets the device notice
    assert sim.device.image.get(124, "StorCtl_Mod") == 0 and site.battery.setpoint_w == 0.0


async def test_held_window_is_not_rewritten_and_budget_caps_writes(bus: ModbusBus, sim: SimSunSpecServer) -> None:
    clock = ManualClock(T0)
    driver = make_driver(bus, clock, max_writes_per_hour=3)
    await driver.scan()
    assert (await driver.apply(BatterySetpoint(der_id="ss.battery", power_w=1000.0))).ok  # rates + mode: 2
    writes = sim.device.counters["writes"]
    result = await driver.apply(BatterySetpoint(der_id="ss.battery", power_w=1000.0))
    assert result.ok and "already held" in result.detail and sim.device.counters["writes"] == writes
    assert (await driver.apply(BatterySetpoint(der_id="ss.battery", power_w=500.0))).ok  # rates only: 3
    result = await driver.apply(BatterySetpoint(der_id="ss.battery", power_w=700.0))
    assert (result.ok, result.detail) == (False, "write budget exhausted")
    assert sim.device.counters["writes"] == writes + 1


async def test_endpoint_without_sunspec_is_a_configuration_error(site: SimSite) -> None:
    plain = await start_modbus_sim(site)
    try:
        bus = get_tcp_bus(plain.host, plain.port, timeout_s=0.5)
        with pytest.raises(ConfigurationError, match="SunS"):
            await scan_sunspec(bus, 1)
        driver = make_driver(bus)
        async with running(driver):
            await eventually(lambda: driver.counters["config_errors"] >= 1)
            await stays(lambda: driver.counters["config_errors"] == 1, 0.2, "one configuration error")
        assert driver.counters["config_errors"] == 1, "a configuration error is reported, not hammered"
        assert "SunS" in driver.last_error and driver.capabilities() == []
    finally:
        await close_all_buses()
        await plain.stop()


# ---- degrade alone: exception codes from a real server ----


async def test_busy_device_is_retried_and_the_scan_succeeds(bus: ModbusBus, sim: SimSunSpecServer) -> None:
    bus.transient_retry_delay_s = 0.01
    sim.device.inject(40000, ExcCodes.DEVICE_BUSY, times=2)
    device = await scan_sunspec(bus, 1)
    assert device.base == 40000
    assert bus.counters["transient_retries"] == 2 and bus.counters["config_errors"] == 0


@pytest.mark.parametrize("code", [ExcCodes.DEVICE_BUSY, ExcCodes.GATEWAY_PATH_UNAVIABLE, ExcCodes.GATEWAY_NO_RESPONSE])
async def test_persistent_busy_or_gateway_error_is_an_io_error(
    bus: ModbusBus, sim: SimSunSpecServer, code: ExcCodes
) -> None:
    bus.transient_retry_delay_s = 0.01
    sim.device.inject(40000, code)
    with pytest.raises(DriverError) as info:
        await bus.read_holding(1, 40000, 2)
    assert not isinstance(info.value, ConfigurationError)
    assert f"exception {int(code)}" in str(info.value)
    assert bus.counters["transient_retries"] == bus.transient_retries
    driver = make_driver(bus)
    async with running(driver):
        await eventually(lambda: driver.counters["scan_errors"] >= 2)  # retried with backoff
        assert driver.counters["config_errors"] == 0
        del sim.device.faults[40000]  # the gateway recovers
        await eventually(lambda: driver.healthy)


@pytest.mark.parametrize("code", [ExcCodes.ILLEGAL_FUNCTION, ExcCodes.ILLEGAL_ADDRESS, ExcCodes.ILLEGAL_VALUE])
async def test_illegal_function_address_value_are_configuration_errors_not_hammered(
    bus: ModbusBus, sim: SimSunSpecServer, code: ExcCodes
) -> None:
    driver = make_driver(bus, backoff_max_s=30.0)
    await driver.scan()
    inverter = driver.device.model(103) if driver.device else None
    assert inverter is not None
    sim.device.inject(inverter.address + 2, code)
    async with running(driver) as readings:
        await eventually(lambda: driver.counters["config_errors"] >= 1)
        # ~8 poll periods: the error is not retried at the poll rate
        await stays(lambda: driver.counters["config_errors"] == 1 and not readings, 0.4, "one error, no readings")
    assert driver.counters["config_errors"] == 1 and not driver.healthy
    assert readings == []
    assert sim.device.counters["faults"] == 1
