"""`modbus_ev_rtu` in zapd.toml: an EV charger on an RS-485 line, held to the line rules of the other RTU kinds.

Every refusal is a `file: key: reason` line naming the device's key, as `zapd config check` prints it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from drivers.modbus.bus import close_all_buses, get_serial_bus
from drivers.modbus.config import ModbusEvRtuDevice
from drivers.modbus.ev_charger import ModbusEvCharger
from zapd.clock import SystemClock
from zapd.config import ConfigError, ZapdConfig, load_config
from zapd.devices import build_devices
from zapd.model import DerKind

SITE = '[site]\nid = "home"\nfuse_a = 25\n'
CHARGER = """
[[devices]]
driver = "modbus_ev_rtu"
id = "terra"
port = "/dev/ttyUSB0"
{line}
map = "abb_terra_ac"

[devices.ev]
max_current_a = 16
"""
METER = """
[[devices]]
driver = "modbus_meter_rtu"
id = "grid"
port = "/dev/ttyUSB0"
{line}
map = "eastron_sdm630"
"""


def load(tmp_path: Path, text: str) -> ZapdConfig | list[str]:
    path = tmp_path / "zapd.toml"
    path.write_text(SITE + text)
    try:
        return load_config(path)
    except ConfigError as exc:
        assert all(line.startswith(f"{path}: ") for line in exc.lines), exc.lines
        return [line.removeprefix(f"{path}: ") for line in exc.lines]


def test_an_rs485_charger_and_a_meter_share_one_line(tmp_path: Path) -> None:
    line = 'baudrate = 19200\nparity = "E"\nunit_id = {unit}'
    config = load(tmp_path, CHARGER.format(line=line.format(unit=1)) + METER.format(line=line.format(unit=2)))
    assert isinstance(config, ZapdConfig), config
    charger = config.devices[0]
    assert isinstance(charger, ModbusEvRtuDevice)
    assert (charger.baudrate, charger.parity, charger.stopbits, charger.unit_id) == (19200, "E", 1, 1)
    assert charger.min_gap_ms is None and charger.keepalive_s == 30.0
    devices = build_devices(config, SystemClock())
    try:
        ev, _meter = devices.drivers
        assert isinstance(ev, ModbusEvCharger)
        assert get_serial_bus("/dev/ttyUSB0", baudrate=19200, parity="E") is ev._bus  # one owner of the port
        assert ev._bus.min_gap_s == pytest.approx(3.5 * 11 / 19200)  # 8E1: 11 bits a character
        assert devices.kinds == {"terra.ev": DerKind.EV_CHARGER, "grid": DerKind.METER}
        assert list(devices.ev_limits) == ["terra.ev"]
    finally:
        asyncio.run(close_all_buses())


@pytest.mark.parametrize(
    ("line", "key", "reason"),
    [
        ('parity = "X"', "devices.terra.parity", "'N', 'E' or 'O'"),
        ("stopbits = 3", "devices.terra.stopbits", "1 or 2"),
        ("baudrate = 100", "devices.terra.baudrate", "greater than or equal to 300"),
        ("baudrate = 9600.5", "devices.terra.baudrate", "integer"),
        ("bytesize = 9", "devices.terra.bytesize", "7 or 8"),
        ("unit_id = 0", "devices.terra.unit_id", "greater than or equal to 1"),
        ("unit_id = 248", "devices.terra.unit_id", "less than or equal to 247"),
        ('host = "192.0.2.5"', "devices.terra.host", "unknown key"),
        ("timeout_s = nan", "devices.terra.timeout_s", ""),
        ("min_gap_ms = -1", "devices.terra.min_gap_ms", "greater than or equal to 0"),
    ],
)
def test_bad_serial_settings_name_the_file_and_key(tmp_path: Path, line: str, key: str, reason: str) -> None:
    lines = load(tmp_path, CHARGER.format(line=line))
    assert isinstance(lines, list) and len(lines) == 1, lines
    assert lines[0].startswith(f"{key}: ") and reason in lines[0], lines


def test_one_port_with_two_line_settings_names_the_charger_and_the_meter(tmp_path: Path) -> None:
    lines = load(tmp_path, CHARGER.format(line="baudrate = 19200") + METER.format(line="baudrate = 9600\nunit_id = 2"))
    assert isinstance(lines, list) and len(lines) == 1, lines
    assert "'terra'" in lines[0] and "'grid'" in lines[0] and "19200 8N1 vs 9600 8N1" in lines[0]


def test_the_same_unit_id_twice_on_one_line_is_refused(tmp_path: Path) -> None:
    lines = load(tmp_path, CHARGER.format(line="unit_id = 1") + METER.format(line="unit_id = 1"))
    assert isinstance(lines, list) and len(lines) == 1 and "unit id 1" in lines[0], lines


def test_a_tcp_only_profile_cannot_be_driven_over_rtu(tmp_path: Path) -> None:
    for name in ("alfen_eve", "mennekes_amtron", "phoenix_ev_eth", "wallbe_phoenix_ev", "schneider_evlink_pro_ac"):
        lines = load(tmp_path, CHARGER.format(line="").replace("abb_terra_ac", name))
        assert isinstance(lines, list) and len(lines) == 1, (name, lines)
        assert lines[0].startswith("devices.terra.map: ") and "Modbus-TCP only" in lines[0], lines


def test_the_example_in_docs_devices_md_loads(tmp_path: Path) -> None:
    """docs/devices.md's `modbus_ev_rtu` example is valid config as printed."""
    text = (Path(__file__).parents[2] / "docs" / "devices.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```toml\n")[1:]]
    (block,) = [b for b in blocks if 'driver = "modbus_ev_rtu"' in b]
    config = load(tmp_path, "\n" + block)
    assert isinstance(config, ZapdConfig), config
    (dev,) = config.devices
    assert isinstance(dev, ModbusEvRtuDevice) and (dev.map, dev.baudrate, dev.parity) == ("abb_terra_ac", 19200, "E")


@pytest.mark.parametrize("value", ['["serial"]', "[]", '"rtu"'])
def test_a_profile_with_bad_transports_is_refused(tmp_path: Path, value: str) -> None:
    from drivers.modbus.ev_charger import ev_profile
    from drivers.modbus.register_map import MAPS_DIR, RegisterMapError, load_register_map

    own = tmp_path / "charger.toml"
    own.write_text(
        (MAPS_DIR / "abb_terra_ac.toml").read_text().replace('transports = ["tcp", "rtu"]', f"transports = {value}")
    )
    with pytest.raises(RegisterMapError, match=r"ev\.transports must be a list of 'tcp' and/or 'rtu'"):
        ev_profile(load_register_map(own))
