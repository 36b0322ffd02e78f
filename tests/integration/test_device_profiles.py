"""Each vendor profile against its register-level fixture, over a real Modbus TCP socket (and, for
an RS-485 device, a fixture with an `rtu` table, over Modbus RTU on a pty null modem too).

The fixtures (tests/fixtures/devices/*.toml) are written from the vendor documents: raw registers
as the device holds them, the values they must decode to, and the exact register writes (unit,
address, raw words, in order) each command must produce. The peer is a pymodbus server serving
only those registers (drivers/sim/register_image.py), so a wrong address, word order, sign, scale
or write sequence in a profile fails here; nothing on the expected side is read from the profile.
"""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.bus import close_all_buses, get_tcp_bus
from drivers.modbus.hybrid_inverter import ModbusHybridInverter
from drivers.modbus.map_meter import ModbusMapMeter
from drivers.modbus.register_map import load_register_map
from drivers.sim.register_image import RecordedWrite, RegisterImageServer, fixture_units, start_register_image
from tests.integration.profile_peers import expected_writes, served, transports
from zapd.clock import SystemClock
from zapd.model import EXPORT_WH, IMPORT_WH, PHASE_CURRENT_A, POWER_W, SOC, BatterySetpoint, DerKind, Reading

FIXTURES = Path(__file__).parent.parent / "fixtures" / "devices"
# Read once at collection: (fixture name, its tables) for every fixture that commands a battery.
INVERTER_FIXTURES = [
    (p.stem, doc) for p in sorted(FIXTURES.glob("*.toml")) if "commands" in (doc := tomllib.loads(p.read_text()))
]


INVERTER_PEERS = transports(INVERTER_FIXTURES)


@contextlib.asynccontextmanager
async def serving(
    fixture: dict[str, Any], transport: str = "tcp"
) -> AsyncIterator[tuple[RegisterImageServer, ModbusHybridInverter]]:
    """The fixture's registers on a real TCP socket (or RTU pty), and a probed driver for its profile."""
    async with served(fixture, transport) as (server, bus):
        inv = ModbusHybridInverter(
            device_id="dev",
            bus=bus,
            unit_id=fixture["unit_id"],
            register_map=load_register_map(fixture["profile"]),
            poll_s=1.0,
            clock=SystemClock(),
            **fixture.get("overrides", {}),
        )
        await inv.probe()
        yield server, inv


@pytest.mark.parametrize(
    ("name", "fixture", "transport"), INVERTER_PEERS, ids=[f"{n}-{t}" for n, _, t in INVERTER_PEERS]
)
async def test_profile_decodes_and_commands_at_register_level(
    name: str, fixture: dict[str, Any], transport: str
) -> None:
    async with serving(fixture, transport) as (server, inv):
        got: dict[str, Reading] = {}
        await inv.poll_once(lambda r: got.__setitem__(r.der_id, r))
        expect = fixture["expect"]
        assert got["dev.battery"].values[SOC] == pytest.approx(expect["battery_soc"])
        assert got["dev.battery"].values[POWER_W] == pytest.approx(expect["battery_w"])
        if "pv_w" in expect:
            assert got["dev.pv"].values[POWER_W] == pytest.approx(expect["pv_w"])
        battery = inv.capabilities()[0]
        for key in ("max_charge_w", "max_discharge_w", "capacity_wh"):
            if key in expect:
                assert getattr(battery, key) == pytest.approx(expect[key])
        assert battery.controllable
        assert server.writes == []  # probing and polling never write

        for step in fixture["commands"]:
            server.clear()
            result = await inv.apply(BatterySetpoint(der_id="dev.battery", power_w=step["power_w"]))
            assert result.ok, f"{name}: {result.detail}"
            assert server.writes == expected_writes(step["writes"]), step["power_w"]

        server.clear()
        await inv.safe_mode()
        assert inv.counters["safe_mode_errors"] == 0
        assert server.writes == expected_writes(fixture["safe_mode"]["writes"])


@pytest.mark.parametrize(("name", "fixture"), INVERTER_FIXTURES, ids=[n for n, _ in INVERTER_FIXTURES])
async def test_profile_refuses_beyond_nameplate_without_writing(name: str, fixture: dict[str, Any]) -> None:
    """The last line of safety: a command over the device's limit never reaches the wire."""
    async with serving(fixture) as (server, inv):
        limit = inv.capabilities()[0].max_discharge_w
        result = await inv.apply(BatterySetpoint(der_id="dev.battery", power_w=-(limit + 1.0)))
        assert not result.ok and "nameplate" in result.detail, name
        assert server.writes == []


METER_FIXTURES = [
    (p.stem, doc) for p in sorted(FIXTURES.glob("*.toml")) if "meter" in (doc := tomllib.loads(p.read_text()))
]


@pytest.mark.parametrize(("name", "fixture"), METER_FIXTURES, ids=[n for n, _ in METER_FIXTURES])
async def test_meter_profile_decodes_at_register_level(name: str, fixture: dict[str, Any]) -> None:
    server = await start_register_image(fixture_units(fixture["image"]))
    try:
        bus = get_tcp_bus(server.host, server.port, timeout_s=0.5, backoff_initial_s=0.05, backoff_max_s=0.2)
        meter = ModbusMapMeter(
            device_id="gm",
            bus=bus,
            unit_id=fixture["unit_id"],
            register_map=load_register_map(fixture["profile"]),
            poll_s=1.0,
            clock=SystemClock(),
        )
        got: dict[str, Reading] = {}
        await meter.poll_once(lambda r: got.__setitem__(r.der_id, r))
        values, expect = got["gm"].values, fixture["meter"]
        assert values[POWER_W] == pytest.approx(expect["power_w"]), name
        assert values[IMPORT_WH] == pytest.approx(expect["import_wh"])
        assert values[EXPORT_WH] == pytest.approx(expect["export_wh"])
        phases = PHASE_CURRENT_A[: len(expect["currents_a"])]  # a single-phase meter has L1 only
        assert [values[k] for k in phases] == pytest.approx(expect["currents_a"])
        for key, value in expect.get("phase_power_w", {}).items():  # per-phase power, when the meter has it
            assert values[key] == pytest.approx(value), key
        assert meter.capabilities()[0].kind is DerKind.METER and meter.capabilities()[0].role == "grid"
        assert server.writes == []
    finally:
        await close_all_buses()
        await server.stop()


async def test_configured_reserve_bounds_the_deye_slot_target_from_zapd_toml(tmp_path: Path) -> None:
    """The battery's reserve_soc / max_soc in zapd.toml reach the time-of-use slot's SoC target on the wire."""
    from zapd.config import load_config
    from zapd.devices import build_devices

    fixture = dict(INVERTER_FIXTURES)["deye_sunsynk_3p"]
    server = await start_register_image(fixture_units(fixture["image"]))
    try:
        path = tmp_path / "zapd.toml"
        path.write_text(
            '[site]\nid = "home"\nfuse_a = 25\n\n[[devices]]\ndriver = "modbus_tcp"\nid = "deye"\n'
            f'host = "{server.host}"\nport = {server.port}\nunit_id = 1\nmap = "deye_sunsynk_3p"\n\n'
            "[devices.battery]\nmax_charge_w = 8000\nmax_discharge_w = 8000\ncapacity_wh = 10240\n"
            "reserve_soc = 0.305\nmax_soc = 0.9\n"
        )
        (driver,) = build_devices(load_config(path), SystemClock()).drivers
        assert isinstance(driver, ModbusHybridInverter)
        await driver.probe()
        assert (await driver.apply(BatterySetpoint(der_id="deye.battery", power_w=-1000.0))).ok
        assert RecordedWrite(1, 166, (31,)) in server.writes  # Prog1 SoC floor: 30.5 % rounded up
        server.clear()
        assert (await driver.apply(BatterySetpoint(der_id="deye.battery", power_w=1000.0))).ok
        assert RecordedWrite(1, 166, (90,)) in server.writes  # Prog1 SoC ceiling: the max SoC
    finally:
        await close_all_buses()
        await server.stop()
