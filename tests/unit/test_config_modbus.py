"""modbus_rtu and sunspec_tcp devices in the config: validation, one owner per serial port, construction."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pytest

from drivers.modbus.bus import close_all_buses
from drivers.modbus.hybrid_inverter import ModbusHybridInverter
from drivers.modbus.sunspec import SunSpecInverter
from zapd.clock import ManualClock
from zapd.config import ConfigError, ModbusRtuDevice, SunSpecTcpDevice, load_config
from zapd.devices import build_devices
from zapd.model import DerKind

SITE = """
[site]
id = "home-1"
fuse_a = 25
"""

RTU = """
[[devices]]
driver = "modbus_rtu"
id = "{id}"
port = "{port}"
baudrate = {baud}
parity = "{parity}"
unit_id = {unit}
map = "sim_hybrid"
"""

SUNSPEC = """
[[devices]]
driver = "sunspec_tcp"
id = "fronius"
host = "192.0.2.10"
unit_id = 1
min_gap_ms = 50
max_requests_per_s = 10
max_writes_per_hour = 120
revert_timeout_s = 120
has_battery = true
has_meter = true

[devices.battery]
reserve_soc = 0.2
"""


def rtu(id_: str, unit: int, *, port: str = "/dev/ttyUSB0", baud: int = 9600, parity: str = "N") -> str:
    return RTU.format(id=id_, port=port, baud=baud, parity=parity, unit=unit)


def load(tmp_path: Path, text: str) -> list[str] | object:
    path = tmp_path / "zapd.toml"
    path.write_text(SITE + text)
    try:
        return load_config(path)
    except ConfigError as exc:
        return [line.removeprefix(f"{path}: ") for line in exc.lines]


def test_rtu_and_sunspec_devices_load(tmp_path: Path) -> None:
    config = load(tmp_path, rtu("bat1", 1) + rtu("bat2", 2) + SUNSPEC)
    assert not isinstance(config, list), config
    devices = config.devices  # type: ignore[attr-defined]
    assert isinstance(devices[0], ModbusRtuDevice) and devices[0].min_gap_ms is None
    assert devices[0].max_writes_per_hour == 360
    ss = devices[2]
    assert isinstance(ss, SunSpecTcpDevice)
    assert (ss.min_gap_ms, ss.max_requests_per_s, ss.max_writes_per_hour, ss.revert_timeout_s) == (50, 10, 120, 120)


def test_one_port_with_two_line_settings_names_both_devices(tmp_path: Path) -> None:
    lines = load(tmp_path, rtu("bat1", 1) + rtu("bat2", 2, baud=19200, parity="E"))
    assert isinstance(lines, list) and len(lines) == 1
    assert "'bat1'" in lines[0] and "'bat2'" in lines[0] and "/dev/ttyUSB0" in lines[0]
    assert "9600 8N1 vs 19200 8E1" in lines[0]


def test_same_unit_twice_on_a_line_and_p1_on_a_modbus_port_are_refused(tmp_path: Path) -> None:
    lines = load(tmp_path, rtu("bat1", 3) + rtu("bat2", 3))
    assert isinstance(lines, list) and "unit id 3" in lines[0]
    p1 = '\n[[devices]]\ndriver = "p1_serial"\nid = "meter"\nport = "/dev/ttyUSB0"\n'
    lines = load(tmp_path, rtu("bat1", 1) + p1)
    assert isinstance(lines, list) and "'bat1' and 'meter' cannot share serial port" in lines[0]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (RTU.format(id="x", port="/dev/ttyUSB0", baud=9600, parity="X", unit=1), "devices.x.parity"),
        (RTU.format(id="x", port="/dev/ttyUSB0", baud=9600, parity="N", unit=0), "devices.x.unit_id"),
        (SUNSPEC.replace("revert_timeout_s = 120", "revert_timeout_s = 0"), "devices.fronius.revert_timeout_s"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    lines = load(tmp_path, text)
    assert isinstance(lines, list) and lines[0].startswith(key), lines


def test_devices_on_one_port_share_one_bus(tmp_path: Path) -> None:
    config = load(tmp_path, rtu("bat1", 1) + rtu("bat2", 2) + SUNSPEC)
    devices = build_devices(config, ManualClock(datetime(2026, 1, 1, tzinfo=UTC)))  # type: ignore[arg-type]
    try:
        rtu1, rtu2, ss = devices.drivers
        assert isinstance(rtu1, ModbusHybridInverter) and isinstance(rtu2, ModbusHybridInverter)
        assert rtu1._bus is rtu2._bus and rtu1._bus.min_gap_s == pytest.approx(3.5 * 10 / 9600)
        assert isinstance(ss, SunSpecInverter) and ss._bus.max_requests_per_s == 10
        assert devices.kinds["fronius.battery"] is DerKind.BATTERY and "fronius.battery" in devices.actuators
        assert devices.kinds["fronius.meter"] is DerKind.METER
        assert devices.battery_limits["fronius.battery"].reserve_soc == 0.2
    finally:
        asyncio.run(close_all_buses())


LINE_KEYS = ("port", "baudrate", "parity", "stopbits", "bytesize", "unit_id")


def test_every_rtu_kind_takes_its_serial_line_from_one_definition() -> None:
    """The RS-485 line keys are written once (RtuLineDevice), not per RTU kind: a new RTU kind inherits them,
    so their bounds, defaults and descriptions cannot drift apart, and every kind lists them in the same place."""
    from drivers.modbus.config import RtuLineDevice
    from drivers.registry import device_models

    serial = [m for m in device_models() if {"baudrate", "parity", "unit_id"} <= m.model_fields.keys()]
    assert {m.model_fields["driver"].annotation for m in serial} == {
        Literal["modbus_rtu"],
        Literal["modbus_meter_rtu"],
        Literal["sunspec_rtu"],
        Literal["modbus_ev_rtu"],
    }
    for model in serial:
        assert issubclass(model, RtuLineDevice), model
        assert not LINE_KEYS & vars(model).get("__annotations__", {}).keys(), f"{model.__name__} redeclares a line key"
        assert tuple(model.model_fields)[: 2 + len(LINE_KEYS)] == ("driver", "id", *LINE_KEYS)
        for key in LINE_KEYS:
            assert repr(model.model_fields[key]) == repr(RtuLineDevice.model_fields[key]), (model, key)
