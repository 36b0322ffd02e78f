"""Property: whatever power a plan asks for, a profile's control writes stay within the device's limits.

A fake bus that stores registers like a device (unit tests may use fakes; the wire is covered by
tests/integration/test_device_profiles.py) runs each shipped controllable profile. For any
command: within the nameplate it is written with the right direction and a magnitude that decodes
back to |P|; beyond it nothing at all is written. (This is the safety property. That the
direction and mode values are the vendor's is checked against the vendor-document fixtures.)
"""

from __future__ import annotations

import asyncio
import math
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.bus import ModbusBus, Priority
from drivers.modbus.hybrid_inverter import ModbusHybridInverter
from drivers.modbus.register_map import load_register_map
from zapd.clock import SystemClock
from zapd.model import BatterySetpoint

FIXTURES = Path(__file__).parent.parent / "fixtures" / "devices"
PROFILES = ["sungrow_sh", "huawei_sun2000_luna2000", "solaredge_storedge", "victron_gx_ess"]


class FakeBus:
    """Registers per (unit, table, address); writes land in holding and are recorded."""

    def __init__(self, image: dict[tuple[int, str, int], int]) -> None:
        self.regs = dict(image)
        self.writes: list[tuple[int, int, list[int]]] = []

    async def _read(self, unit: int, table: str, address: int, count: int) -> list[int]:
        return [self.regs.get((unit, table, address + i), 0) for i in range(count)]

    async def read_holding(
        self, unit_id: int, address: int, count: int, *, priority: Priority = Priority.POLL
    ) -> list[int]:
        return await self._read(unit_id, "holding", address, count)

    async def read_input(
        self, unit_id: int, address: int, count: int, *, priority: Priority = Priority.POLL
    ) -> list[int]:
        return await self._read(unit_id, "input", address, count)

    async def write_registers(
        self, unit_id: int, address: int, values: Sequence[int], *, priority: Priority = Priority.CONTROL
    ) -> None:
        self.writes.append((unit_id, address, list(values)))
        for i, v in enumerate(values):
            self.regs[(unit_id, "holding", address + i)] = v


def _fixture(profile: str) -> dict[str, Any]:
    return tomllib.loads((FIXTURES / f"{profile}.toml").read_text())


FIXTURE_DATA = {p: _fixture(p) for p in PROFILES}


def _image(fixture: dict[str, Any]) -> dict[tuple[int, str, int], int]:
    return {(b["unit"], b["table"], b["address"] + i): v for b in fixture["image"] for i, v in enumerate(b["values"])}


async def _run(profile: str, power_w: float) -> tuple[ModbusHybridInverter, FakeBus, bool]:
    fixture = FIXTURE_DATA[profile]
    bus = FakeBus(_image(fixture))
    inv = ModbusHybridInverter(
        device_id="d",
        bus=cast(ModbusBus, bus),
        unit_id=fixture["unit_id"],
        register_map=load_register_map(profile),
        poll_s=1.0,
        clock=SystemClock(),
        **fixture.get("overrides", {}),
    )
    await inv.probe()
    result = await inv.apply(BatterySetpoint(der_id="d.battery", power_w=power_w))
    return inv, bus, result.ok


@settings(max_examples=150, deadline=None)
@given(profile=st.sampled_from(PROFILES), power_w=st.floats(-20_000, 20_000, allow_nan=False))
def test_commands_never_exceed_the_nameplate(profile: str, power_w: float) -> None:
    inv, bus, ok = asyncio.run(_run(profile, power_w))
    battery = inv.capabilities()[0]
    within = -battery.max_discharge_w <= power_w <= battery.max_charge_w
    assert ok == within
    if not within:
        assert bus.writes == []
        return
    rmap = load_register_map(profile)
    ctl = rmap.control
    assert ctl is not None
    if ctl.style == "direction_magnitude":
        assert ctl.direction and ctl.charge_power and ctl.discharge_power
        direction = rmap.field(ctl.direction)
        unit = FIXTURE_DATA[profile]["unit_id"]
        got = direction.decode_raw_int(
            [bus.regs[(unit, "holding", direction.address + i)] for i in range(direction.count)]
        )
        if power_w == 0:
            assert got == ctl.idle_value
            return
        field = rmap.field(ctl.charge_power if power_w > 0 else ctl.discharge_power)
        magnitude = field.decode([bus.regs[(unit, "holding", field.address + i)] for i in range(field.count)])
        assert got == (ctl.charge_value if power_w > 0 else ctl.discharge_value)
        assert 0 <= magnitude <= (battery.max_charge_w if power_w > 0 else battery.max_discharge_w)
        assert math.isclose(magnitude, abs(power_w), abs_tol=0.5 + abs(power_w) * 1e-6)
