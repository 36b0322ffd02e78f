"""Growatt TL-XH on firmware without 3067 (the on-grid discharge floor solax-modbus reads on newer
firmware; the V1.24 document lists 3060-3069 as reserved): a discharge must fail before grid first is
switched on, since zapd could not set the floor it would discharge to; charge and idle still work.

The peer is the vendor-document fixture without its 3067 block, served over Modbus-TCP by the
register-image server, which answers a write to an address it does not hold with an exception, as a
device does.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from drivers.modbus.hybrid_inverter import ModbusHybridInverter
from drivers.modbus.register_map import load_register_map
from tests.integration.profile_peers import served
from zapd.clock import SystemClock
from zapd.model import BatterySetpoint

FIXTURE = Path(__file__).parent.parent / "fixtures" / "devices" / "growatt_tl_xh.toml"


async def test_discharge_without_the_on_grid_floor_register_fails_before_grid_first() -> None:
    fixture = tomllib.loads(FIXTURE.read_text())
    fixture["image"] = [block for block in fixture["image"] if block["address"] != 3067]
    async with served(fixture, "tcp") as (server, bus):
        inv = ModbusHybridInverter(
            device_id="gw",
            bus=bus,
            unit_id=1,
            register_map=load_register_map("growatt_tl_xh"),
            poll_s=1.0,
            clock=SystemClock(),
            **fixture["overrides"],
        )
        await inv.probe()
        result = await inv.apply(BatterySetpoint(der_id="gw.battery", power_w=-2500.0))
        assert not result.ok
        written = {(w.address, w.values) for w in server.writes}
        assert (3038, (0xC000,)) not in written  # grid first never switched on
        assert inv.counters["command_errors"] == 1
        server.clear()
        assert (await inv.apply(BatterySetpoint(der_id="gw.battery", power_w=3000.0))).ok
        assert [(w.address, w.values) for w in server.writes][-1] == (3038, (0xA000,))  # battery first on
        server.clear()
        assert (await inv.apply(BatterySetpoint(der_id="gw.battery", power_w=0.0))).ok
        assert [(w.address, w.values) for w in server.writes] == [(3038, (0x0000,)), (3049, (0,))]
