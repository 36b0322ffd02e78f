"""An EV charger on RS-485 end to end: zapd.toml `modbus_ev_rtu` -> config check -> the daemon's config
structs and device builder -> controller -> EvCurrent -> Modbus RTU frames on a pty -> pymodbus's RTU server.

The peer serves the ABB Terra AC fixture (tests/fixtures/devices/abb_terra_ac.toml, written from ABB's
"Terra AC Charger Modbus Communication" v1.7). The expected writes are worked here from that document,
not read from the profile: 4100h "Set charging current limit" is a U32 in mA, most significant word
first, written with function 0x10 and never read back (write-only).
"""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from drivers.config_structs import ModbusEvRtuDevice
from drivers.modbus.bus import close_all_buses
from drivers.modbus.ev_charger import ModbusEvCharger
from drivers.sim.register_image import RecordedWrite
from fallback.policy import Decision, Rung
from tests.integration.profile_peers import rtu_peer
from zapd.clock import ManualClock
from zapd.config import load_config
from zapd.config_load import to_structs
from zapd.controller import Controller
from zapd.devices import build_devices
from zapd.envelope import SiteLimits
from zapd.model import POWER_W, DerKind, Intent, Reading
from zapd.state import SiteState
from zapd.store import Store

FIXTURE: dict[str, Any] = tomllib.loads(
    (Path(__file__).parent.parent / "fixtures" / "devices" / "abb_terra_ac.toml").read_text()
)
FUSE_A, VOLTAGE_V, PHASES = 25, 230.0, 3
EV_W_MEASURED = 11040.0  # 401Ch active power in the fixture's image


def _set_current(ma: int) -> RecordedWrite:
    """ABB 4100h: U32 mA, high word first, unit 1."""
    return RecordedWrite(1, 0x4100, (ma >> 16, ma & 0xFFFF))


def _config(tmp_path: Path, port: str, *, map_name: str = "abb_terra_ac", extra: str = "") -> Path:
    line = FIXTURE["rtu"]
    path = tmp_path / "zapd.toml"
    path.write_text(
        f'[site]\nid = "home"\nfuse_a = {FUSE_A}\n\n'
        '[[devices]]\ndriver = "modbus_ev_rtu"\nid = "terra"\n'
        f'port = "{port}"\nbaudrate = {line["baudrate"]}\nparity = "{line["parity"]}"\nstopbits = {line["stopbits"]}\n'
        f'unit_id = 1\nmap = "{map_name}"\npoll_s = 1\ntimeout_s = 0.5\n{extra}\n'
        "[devices.ev]\nmax_current_a = 16\n"
    )
    return path


async def test_the_controller_commands_an_rs485_charger_and_the_fuse_bounds_it(tmp_path: Path) -> None:
    async with rtu_peer(FIXTURE) as (server, port):
        config = to_structs(load_config(_config(tmp_path, port)))  # as `zapd run` decodes its child's check
        (dev,) = config.devices
        assert isinstance(dev, ModbusEvRtuDevice)
        clock = ManualClock(datetime(2026, 6, 1, 12, tzinfo=UTC))
        devices = build_devices(config, clock)
        charger = devices.actuators["terra.ev"]
        assert isinstance(charger, ModbusEvCharger) and devices.kinds == {"terra.ev": DerKind.EV_CHARGER}
        store = await Store.open(tmp_path / "zapd.sqlite")
        try:
            state = SiteState()
            state.register("meter", DerKind.METER, 5)
            state.register("terra.ev", DerKind.EV_CHARGER, 5)
            intent = Intent(ev_w=11 * PHASES * VOLTAGE_V)  # 11 A on three phases
            ctl = Controller(
                clock=clock,
                state=state,
                store=store,
                batteries=dict,
                actuators=devices.actuators,
                site=SiteLimits(
                    fuse_limit_w=FUSE_A * VOLTAGE_V * PHASES,
                    fuse_a=FUSE_A,
                    voltage_v=VOLTAGE_V,
                    phases=PHASES,
                    max_export_w=None,
                ),
                tick_s=10,
                refresh_s=60,
                deadband_w=50,
                plan_source=lambda: None,
                plan_fresh=lambda: True,
                forced_rung=lambda: Decision(Rung.PLAN, intent, "test"),
                evs=lambda: devices.ev_limits,
            )

            async def tick(house_w: float) -> list[RecordedWrite]:
                server.clear()
                grid_w = house_w + EV_W_MEASURED  # the meter sees the car too
                state.update(Reading(der_id="meter", kind=DerKind.METER, ts=clock.now(), values={POWER_W: grid_w}))
                await charger.poll_once(state.update)  # over RTU: the state, current and power registers
                assert server.writes == [], "a poll only reads"
                await ctl.cycle()
                clock.advance(10)
                return list(server.writes)

            assert await tick(500.0) == [_set_current(11_000)]  # 11 A = 11000 mA = 0x00002AF8
            # The house draws 12 kW: the 25 A fuse (17250 W) leaves the car 5250 W = 7.6 A = 7600 mA.
            assert await tick(12_000.0) == [_set_current(7_600)]
            logged = await store.recent_commands()
            assert [r.clamped_reason for r in reversed(logged)] == ["", "fuse limit"]
            assert all(r.ok for r in logged)

            server.clear()
            await charger.safe_mode()  # minimum current on the way out: 6 A = 6000 mA
            assert server.writes == [_set_current(6_000)]
        finally:
            await store.close()
            await close_all_buses()


async def test_a_tcp_only_charger_profile_on_rs485_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    """The Alfen Eve's document offers a Modbus-TCP slave only: as `modbus_ev_rtu` it is refused at load."""
    from zapd.config import ConfigError

    path = _config(tmp_path, "/dev/null", map_name="alfen_eve")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    (line,) = err.value.lines
    assert line.startswith(f"{path}: devices.terra.map: ")
    assert "Modbus-TCP only" in line and 'driver = "modbus_ev"' in line
