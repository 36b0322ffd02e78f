"""Write budget against the real TCP simulator: skip what the device holds, cap writes per hour, log once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from structlog.testing import capture_logs

from drivers.modbus.bus import close_all_buses, get_tcp_bus
from drivers.modbus.hybrid_inverter import ModbusHybridInverter
from drivers.modbus.register_map import load_register_map
from drivers.sim.modbus_server import SimModbusServer, start_modbus_sim
from drivers.sim.physics import SimSite
from zapd.clock import ManualClock
from zapd.model import BatterySetpoint

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def site() -> SimSite:
    return SimSite()


@pytest.fixture
async def sim(site: SimSite) -> AsyncIterator[SimModbusServer]:
    server = await start_modbus_sim(site)
    yield server
    await close_all_buses()
    await server.stop()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


async def make_driver(sim: SimModbusServer, clock: ManualClock, max_writes: int | None) -> ModbusHybridInverter:
    driver = ModbusHybridInverter(
        device_id="inv",
        bus=get_tcp_bus(sim.host, sim.port, timeout_s=0.5),
        unit_id=1,
        register_map=load_register_map("sim_hybrid"),
        poll_s=1.0,
        clock=clock,
        max_writes_per_hour=max_writes,
    )
    await driver.probe()
    return driver


def setpoint(w: float) -> BatterySetpoint:
    return BatterySetpoint(der_id="inv.battery", power_w=w)


async def test_a_setpoint_the_device_holds_is_not_written_again(
    sim: SimModbusServer, clock: ManualClock, site: SimSite
) -> None:
    driver = await make_driver(sim, clock, None)
    assert (await driver.apply(setpoint(1000.0))).ok
    writes = sim.counters()["writes"]
    clock.advance(60)
    result = await driver.apply(setpoint(1000.0))
    assert result.ok and "already held" in result.detail
    assert sim.counters()["writes"] == writes
    assert driver.counters["writes_skipped"] == 1
    assert (await driver.apply(setpoint(1200.0))).ok
    assert sim.counters()["writes"] == writes + 1 and site.battery.setpoint_w == 1200.0


async def test_held_setpoint_is_refreshed_before_the_device_command_timeout(
    sim: SimModbusServer, clock: ManualClock
) -> None:
    driver = await make_driver(sim, clock, None)
    assert (await driver.apply(setpoint(1000.0))).ok
    writes = sim.counters()["writes"]
    clock.advance(151)  # past half of the 300 s command timeout the driver gave the device
    result = await driver.apply(setpoint(1000.0))
    assert result.ok and "read back" in result.detail
    assert sim.counters()["writes"] == writes + 1


async def test_a_device_that_fell_back_gets_the_setpoint_again(
    sim: SimModbusServer, clock: ManualClock, site: SimSite
) -> None:
    driver = await make_driver(sim, clock, None)
    site.step(T0)
    assert (await driver.apply(setpoint(1000.0))).ok
    site.step(T0.replace(minute=6))  # the simulator's own deadman (300 s of site time) expires
    clock.advance(10)
    assert (await driver.apply(setpoint(1000.0))).ok
    assert sim.remote_control() and site.battery.setpoint_w == 1000.0
    assert driver.counters["writes_skipped"] == 0


async def test_budget_refuses_counts_and_logs_once_per_window(
    sim: SimModbusServer, clock: ManualClock, site: SimSite
) -> None:
    driver = await make_driver(sim, clock, 4)
    with capture_logs() as logs:
        assert (await driver.apply(setpoint(100.0))).ok  # timeout + mode + setpoint = 3 writes
        assert (await driver.apply(setpoint(200.0))).ok  # 4
        for i in range(6):
            clock.advance(60)
            result = await driver.apply(setpoint(300.0 + i))
            assert (result.ok, result.detail) == (False, "write budget exhausted")
    assert sim.counters()["writes"] == 4 and site.battery.setpoint_w == 200.0
    assert driver.counters["commands_over_budget"] == 6
    exhausted = [e for e in logs if e["event"] == "modbus.write_budget_exhausted"]
    assert len(exhausted) == 1, logs
    assert not [e for e in logs if e["event"] == "modbus.command_failed"]

    clock.advance(3600)  # the window rolled over: budget back, and a new window may log again
    assert (await driver.apply(setpoint(500.0))).ok
    with capture_logs() as logs:
        for _ in range(4):
            await driver.apply(setpoint(600.0 + _))
    assert [e["event"] for e in logs].count("modbus.write_budget_exhausted") == 1
    # The one line of the new window also tells how many were refused silently since the last one.
    assert [e["refused_since_last_log"] for e in logs if e["event"] == "modbus.write_budget_exhausted"] == [6]


async def test_safe_mode_is_not_blocked_by_the_budget(sim: SimModbusServer, clock: ManualClock, site: SimSite) -> None:
    driver = await make_driver(sim, clock, 3)
    assert (await driver.apply(setpoint(-2000.0))).ok
    assert not (await driver.apply(setpoint(-1000.0))).ok
    await driver.safe_mode()
    assert site.battery.setpoint_w == 0.0
