"""Property: model 704 commands reach a SunSpec DER only when its AC terminals carry the battery alone.

Whatever DC ports model 714 shows (types PV, ESS, EV, ... in any mix) and whatever battery power a
plan asks for: a device whose ports are not all storage gets no write at all (the command is refused,
safe mode writes nothing), because 704's WSet would be its net AC power, not the battery's
(docs/decisions.md, "SunSpec 704 on hybrids"). A storage-only DER gets WSet = -command within its
5 kW nameplate and nothing beyond it. The device is SunSpec's sample 1547 device with a battery,
encoded by pysunspec2 (tests/integration/test_sunspec_1547.py), behind a fake bus that stores
registers like a device (the wire is covered by that integration test).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.bus import ModbusBus
from drivers.modbus.sunspec import SunSpecInverter
from tests.integration.test_sunspec_1547 import _image, _with_704_battery
from tests.unit.test_control_property import FakeBus
from zapd.clock import SystemClock
from zapd.model import BatterySetpoint

SAMPLE: dict[str, Any] = json.loads(
    (resources.files("sunspec2") / "tests" / "test_data" / "device_1547.json").read_text()
)
NAMEPLATE_W = 5000.0  # the battery's 702 WChaRteMax / WDisChaRteMax in _with_704_battery
ESS = 1
port_type = st.one_of(st.just(ESS), st.integers(0, 6))  # storage-only devices come up often too
ports = st.lists(st.tuples(port_type, st.integers(-5000, 5000)), min_size=1, max_size=4)


async def _command(device_ports: list[tuple[int, int]], power_w: float) -> tuple[SunSpecInverter, FakeBus, bool]:
    with tempfile.TemporaryDirectory() as tmp:
        image = _image(_with_704_battery(SAMPLE, ports=tuple(device_ports)), Path(tmp))
    bus = FakeBus({(1, "holding", address): value for address, value in image.items()})
    inv = SunSpecInverter(device_id="d", bus=cast(ModbusBus, bus), unit_id=1, poll_s=1.0, clock=SystemClock())
    await inv.scan()
    result = await inv.apply(BatterySetpoint(der_id="d.battery", power_w=power_w))
    return inv, bus, result.ok


@settings(max_examples=60, deadline=None)
@given(ports, st.floats(-8000.0, 8000.0))
def test_704_writes_only_on_a_storage_only_der_and_within_its_nameplate(
    device_ports: list[tuple[int, int]], power_w: float
) -> None:
    inv, bus, ok = asyncio.run(_command(device_ports, power_w))
    assert inv.device is not None
    storage_only = {t for t, _ in device_ports} == {ESS}
    (battery,) = [c for c in inv.capabilities() if c.der_id == "d.battery"]
    assert battery.controllable is storage_only
    assert (inv.device.control_model == 704) is storage_only
    if not storage_only:
        assert not ok and bus.writes == [] and inv.device.no_control_reason is not None
        asyncio.run(inv.safe_mode())
        assert bus.writes == []
        return
    if abs(power_w) > NAMEPLATE_W:
        assert not ok and bus.writes == []
        return
    assert ok
    values = bus.writes[0][2]  # WSetMod, WSet (int32, WSet_SF 0), ...: one write, then WSetEna
    wset = ((values[1] << 16) | values[2]) - (1 << 32 if values[1] & 0x8000 else 0)
    assert values[0] == 1 and wset == round(-power_w)  # WATTS; + = injection = discharge
