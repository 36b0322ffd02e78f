"""RS-485 meter profiles over Modbus RTU on a pty, and the meter driver's poll loop.

test_device_profiles.py checks every meter fixture (tests/fixtures/devices/*.toml with a `[meter]`
table) over Modbus-TCP; the meters that live on an RS-485 line (fixtures with an `rtu` table: the
line settings) are served here by pymodbus's RTU server on a pty null modem, with the same
fixture's raw registers, and must decode to the same hand-worked values. Nothing on the expected
side is read from the profile.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from drivers.health import HealthState
from drivers.modbus.bus import ModbusBus
from drivers.modbus.map_meter import ModbusMapMeter
from drivers.modbus.recognize import recognize
from drivers.modbus.register_map import load_register_map
from tests.integration.profile_peers import over_rtu, over_tcp
from tests.waiting import wait_until
from zapd.clock import SystemClock
from zapd.model import EXPORT_WH, IMPORT_WH, PHASE_CURRENT_A, POWER_W, DerKind, Reading

FIXTURES = Path(__file__).parent.parent / "fixtures" / "devices"
METER_FIXTURES = [
    (p.stem, doc) for p in sorted(FIXTURES.glob("*.toml")) if "meter" in (doc := tomllib.loads(p.read_text()))
]
RTU_FIXTURES = [(n, d) for n, d in METER_FIXTURES if "rtu" in d]


def _meter(fixture: dict[str, Any], bus: ModbusBus, profile: str | Path | None = None) -> ModbusMapMeter:
    return ModbusMapMeter(
        device_id="grid",
        bus=bus,
        unit_id=fixture["unit_id"],
        register_map=load_register_map(profile or fixture["profile"]),
        poll_s=0.05,
        clock=SystemClock(),
        backoff_max_s=0.2,
    )


def _check(name: str, reading: Reading, expect: dict[str, Any]) -> None:
    values = reading.values
    assert reading.der_id == "grid" and reading.kind is DerKind.METER
    assert values[POWER_W] == pytest.approx(expect["power_w"]), name
    assert values[IMPORT_WH] == pytest.approx(expect["import_wh"]), name
    assert values[EXPORT_WH] == pytest.approx(expect["export_wh"]), name
    phases = PHASE_CURRENT_A[: len(expect["currents_a"])]
    assert [values[k] for k in phases] == pytest.approx(expect["currents_a"]), name
    for key, value in expect.get("phase_power_w", {}).items():
        assert values[key] == pytest.approx(value), f"{name}: {key}"


@pytest.mark.parametrize(("name", "fixture"), RTU_FIXTURES, ids=[n for n, _ in RTU_FIXTURES])
async def test_meter_profile_decodes_over_rtu(name: str, fixture: dict[str, Any]) -> None:
    async with over_rtu(fixture) as (server, bus):
        meter = _meter(fixture, bus)
        got: list[Reading] = []
        await meter.poll_once(got.append)
        _check(name, got[0], fixture["meter"])
        assert server.writes == []


async def test_meter_poll_loop_reports_readings_and_health() -> None:
    """The shared poll loop (device_loop.py) drives the meter: readings keep coming and health is ok."""
    name, fixture = METER_FIXTURES[0]
    async with over_tcp(fixture) as (_, bus):
        meter = _meter(fixture, bus)
        got: list[Reading] = []
        task = asyncio.create_task(meter.run(got.append))
        try:
            await wait_until(lambda: len(got) >= 3, 2.0, f"three readings from {name}")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert len(got) >= 3, name
        _check(name, got[-1], fixture["meter"])
        assert meter.health.state is HealthState.OK and meter.counters["poll_errors"] == 0


async def test_meter_profile_pointing_off_the_image_is_unusable(tmp_path: Path) -> None:
    """A profile whose power register is not where the device has one: illegal address, not a value."""
    name, fixture = METER_FIXTURES[0]
    text = (load_register_map(fixture["profile"]).path).read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(re.sub(r"(\[fields\.meter_power\]\naddress = )\S+", r"\g<1>40000", text))
    async with over_tcp(fixture) as (_, bus):
        broken = _meter(fixture, bus, bad)
        task = asyncio.create_task(broken.run(lambda r: None))
        try:
            await wait_until(lambda: broken.counters["config_errors"], 2.0, f"a configuration error from {name}")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert broken.counters["config_errors"] >= 1, name
        assert broken.health.state is HealthState.UNUSABLE


async def test_a_recognized_meter_gets_a_meter_snippet() -> None:
    """`zapd devices scan` on a meter must print a `modbus_meter_tcp` device, not a battery kind."""
    fixture = dict(METER_FIXTURES)["carlo_gavazzi_em24"]
    async with over_tcp(fixture) as (server, bus):
        found = await recognize(bus, fixture["unit_id"])
    assert [(m.profile, m.driver) for m in found] == [("carlo_gavazzi_em24", "modbus_meter_tcp")]
    assert 'driver = "modbus_meter_tcp"' in found[0].snippet(server.host, server.port)
    assert server.writes == []
