"""modbus_meter_tcp / modbus_meter_rtu in the config: one grid meter per site, line rules, construction."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from drivers.modbus.bus import close_all_buses
from drivers.modbus.hybrid_inverter import ModbusHybridInverter
from drivers.modbus.map_meter import ModbusMapMeter
from tests.unit.test_config_modbus import load
from zapd.clock import ManualClock
from zapd.config import ZapdConfig
from zapd.devices import build_devices
from zapd.model import DerKind

METER_RTU = """
[[devices]]
driver = "modbus_meter_rtu"
id = "{id}"
port = "/dev/ttyUSB0"
baudrate = {baud}
unit_id = {unit}
map = "{map}"
role = "{role}"
"""

METER_TCP = """
[[devices]]
driver = "modbus_meter_tcp"
id = "em24"
host = "192.0.2.20"
map = "carlo_gavazzi_em24"
role = "{role}"
"""

INVERTER_RTU = """
[[devices]]
driver = "modbus_rtu"
id = "bat"
port = "/dev/ttyUSB0"
baudrate = {baud}
unit_id = 3
map = "sim_hybrid"
"""


def meter_rtu(id_: str, unit: int, *, map_: str = "eastron_sdm72", role: str = "grid", baud: int = 9600) -> str:
    return METER_RTU.format(id=id_, unit=unit, map=map_, role=role, baud=baud)


def test_meters_on_a_line_with_an_inverter_build_one_bus_and_the_grid_meter(tmp_path: Path) -> None:
    text = meter_rtu("grid", 1) + meter_rtu("pv", 2, map_="eastron_sdm120", role="pv") + INVERTER_RTU.format(baud=9600)
    config = load(tmp_path, text + METER_TCP.format(role="submeter"))
    assert isinstance(config, ZapdConfig), config
    assert config.grid_meter == "grid"
    devices = build_devices(config, ManualClock(datetime(2026, 1, 1, tzinfo=UTC)))
    try:
        grid, pv, inverter, em24 = devices.drivers
        assert isinstance(grid, ModbusMapMeter) and isinstance(pv, ModbusMapMeter) and isinstance(em24, ModbusMapMeter)
        assert isinstance(inverter, ModbusHybridInverter)
        assert grid._fields.bus is pv._fields.bus is inverter._bus  # one owner per serial port
        assert em24._fields.bus is not grid._fields.bus
        assert pv.capabilities()[0].role == "pv" and em24.capabilities()[0].role == "submeter"
        assert devices.kinds["grid"] is DerKind.METER and devices.kinds["em24"] is DerKind.METER
        assert devices.grid_meter == "grid"
        assert "grid" not in devices.actuators  # read-only
    finally:
        asyncio.run(close_all_buses())


def test_two_grid_meters_are_refused(tmp_path: Path) -> None:
    got = load(tmp_path, meter_rtu("a", 1) + METER_TCP.format(role="grid"))
    assert isinstance(got, list) and any("grid" in line for line in got), got


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (meter_rtu("m", 1) + INVERTER_RTU.format(baud=19200), "different line settings"),
        (meter_rtu("m", 1) + meter_rtu("n", 1, role="pv"), "both use unit id 1"),
        (meter_rtu("m", 1).replace('role = "grid"', 'role = "house"'), "role"),
        (meter_rtu("m", 1) + "battery = { max_charge_w = 1 }\n", "battery"),
    ],
)
def test_meter_config_mistakes_are_named(tmp_path: Path, text: str, needle: str) -> None:
    got = load(tmp_path, text)
    assert isinstance(got, list) and any(needle in line for line in got), got


def test_an_unknown_meter_profile_is_named_at_load(tmp_path: Path) -> None:
    got = load(tmp_path, meter_rtu("m", 1, map_="eastron_sdm999"))
    assert isinstance(got, list) and any("devices.m.map" in line for line in got), got
