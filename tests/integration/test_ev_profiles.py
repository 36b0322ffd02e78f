"""EV charger profiles against their register-level fixtures, over a real Modbus-TCP socket, and over
Modbus RTU on a pty for the chargers whose vendor document offers RS-485 (a fixture with an `rtu` table).

The fixtures (tests/fixtures/devices/*.toml with `[ev_expect]`) are written from the vendor
documents: raw registers as the charger holds them, the state/power/current they must decode to,
and the exact writes (unit, address, raw words, in order) each current command (with its `phases`,
3 unless the step says) and the safe mode must produce. The peer serves only those registers
(drivers/sim/register_image.py), so a wrong address, table, width, scale, word order or state code
in a profile fails here.
"""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.config_structs import EvLimits
from drivers.modbus.ev_charger import CURRENT_A, ModbusEvCharger
from drivers.modbus.register_map import load_register_map
from drivers.sim.register_image import RegisterImageServer
from tests.integration.profile_peers import expected_writes, served, transports
from zapd.clock import SystemClock
from zapd.model import CHARGING, CONNECTED, POWER_W, SESSION_WH, EvCurrent, Reading

FIXTURES = Path(__file__).parent.parent / "fixtures" / "devices"
EV_FIXTURES = [
    (p.stem, doc) for p in sorted(FIXTURES.glob("*.toml")) if "ev_expect" in (doc := tomllib.loads(p.read_text()))
]
EV_PEERS = transports(EV_FIXTURES)  # (name, fixture, "tcp" | "rtu")
_KEYS = {
    "power_w": POWER_W,
    "connected": CONNECTED,
    "charging": CHARGING,
    "current_a": CURRENT_A,
    "session_wh": SESSION_WH,
}


@contextlib.asynccontextmanager
async def serving(
    fixture: dict[str, Any], transport: str = "tcp"
) -> AsyncIterator[tuple[RegisterImageServer, ModbusEvCharger]]:
    async with served(fixture, transport) as (server, bus):
        yield (
            server,
            ModbusEvCharger(
                device_id="wb",
                bus=bus,
                unit_id=fixture["unit_id"],
                register_map=load_register_map(fixture["profile"]),
                poll_s=1.0,
                clock=SystemClock(),
                limits=EvLimits(max_current_a=fixture["max_current_a"]),
                transport="rtu" if transport == "rtu" else "tcp",
            ),
        )


@pytest.mark.parametrize(("name", "fixture", "transport"), EV_PEERS, ids=[f"{n}-{t}" for n, _, t in EV_PEERS])
async def test_ev_profile_decodes_and_commands_at_register_level(
    name: str, fixture: dict[str, Any], transport: str
) -> None:
    async with serving(fixture, transport) as (server, charger):
        got: list[Reading] = []
        await charger.poll_once(got.append)
        values = got[0].values
        for key, want in fixture["ev_expect"].items():
            assert values[_KEYS[key]] == pytest.approx(want), f"{name}: {key}"
        assert server.writes == []  # polling never writes

        for step in fixture["ev_commands"]:
            server.clear()
            command = EvCurrent(der_id="wb.ev", current_a=step["current_a"], phases=step.get("phases", 3))
            result = await charger.apply(command)
            assert result.ok, f"{name}: {result.detail}"
            assert server.writes == expected_writes(step["writes"]), (step["current_a"], command.phases)

        server.clear()
        await charger.safe_mode()
        assert server.writes == expected_writes(fixture["ev_safe_mode"]["writes"])


@pytest.mark.parametrize(("name", "fixture", "transport"), EV_PEERS, ids=[f"{n}-{t}" for n, _, t in EV_PEERS])
async def test_ev_profile_refuses_beyond_limits_without_writing(
    name: str, fixture: dict[str, Any], transport: str
) -> None:
    """Above the installed maximum or between 0 and 6 A (IEC 61851): refused, nothing on the wire."""
    async with serving(fixture, transport) as (server, charger):
        for current in (fixture["max_current_a"] + 1.0, 3.0):
            result = await charger.apply(EvCurrent(der_id="wb.ev", current_a=current))
            assert not result.ok, f"{name}: {current} A accepted"
        assert server.writes == []


def test_rtu_chargers_are_the_ones_whose_vendor_document_offers_rs485() -> None:
    """Each shipped charger profile's `[ev] transports` as its vendor document gives them (docs/devices.md):
    only the ABB Terra AC has a Modbus RTU slave on RS-485; its fixture is served over RTU above."""
    from drivers.modbus.ev_charger import ev_profile

    offered = {name: sorted(ev_profile(load_register_map(name)).transports) for name, _ in EV_FIXTURES}
    assert offered == {
        "abb_terra_ac": ["rtu", "tcp"],
        "alfen_eve": ["tcp"],
        "mennekes_amtron": ["tcp"],
        "phoenix_ev_eth": ["tcp"],
        "schneider_evlink_pro_ac": ["tcp"],
        "wallbe_phoenix_ev": ["tcp"],
    }
    assert [n for n, _, t in EV_PEERS if t == "rtu"] == ["abb_terra_ac"]
