"""Fronius GEN24 Plus through the SunSpec driver, against a register image written from Fronius' map.

The image (tests/fixtures/sunspec/fronius_gen24.toml, sources in its header) is served by a pymodbus
server over TCP and, since the GEN24 also speaks Modbus RTU on RS-485, over RTU on a pty null modem.
A GEN24 reports its battery not in a storage model but as two model-160 (multiple MPPT) modules,
"StCha 3" (charging) and "StDisCha 4" (discharging); its PV is the other modules. Control goes
through model 124's rate window, with ChaGriSet = GRID while charging (else the inverter charges
from PV only). Expected values and writes are the fixture's, worked by hand from the documents.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.recognize import recognize
from drivers.modbus.sunspec import SunSpecInverter
from drivers.sim.register_image import RecordedWrite, RegisterImageServer
from tests.integration.profile_peers import served
from zapd.clock import SystemClock
from zapd.model import POWER_W, SOC, BatterySetpoint, DerKind, Reading

FIXTURE: dict[str, Any] = tomllib.loads(
    (Path(__file__).parent.parent / "fixtures" / "sunspec" / "fronius_gen24.toml").read_text()
)
MODULE_DCW = {3: 40314, 4: 40334}  # wire addresses of the storage modules' DCW (fixture header)


@asynccontextmanager
async def gen24(
    fixture: dict[str, Any], transport: str = "tcp"
) -> AsyncIterator[tuple[RegisterImageServer, SunSpecInverter]]:
    async with served(fixture, transport) as (server, bus):
        inv = SunSpecInverter(device_id="dev", bus=bus, unit_id=fixture["unit_id"], poll_s=1.0, clock=SystemClock())
        await inv.scan()
        yield server, inv


async def _poll(inv: SunSpecInverter) -> dict[str, Reading]:
    got: dict[str, Reading] = {}
    await inv.poll_once(lambda r: got.__setitem__(r.der_id, r))
    return got


def _with(fixture: dict[str, Any], address: int, value: int) -> dict[str, Any]:
    """A copy of the fixture with one register changed."""
    doc = copy.deepcopy(fixture)
    for block in doc["image"]:
        if block["address"] <= address < block["address"] + len(block["values"]):
            block["values"][address - block["address"]] = value
            return doc
    raise AssertionError(f"register {address} is not in the image")


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
async def test_gen24_battery_from_model_160_and_control_through_model_124(transport: str) -> None:
    expect = FIXTURE["expect"]
    async with gen24(FIXTURE, transport) as (server, inv):
        caps = {c.der_id: c for c in inv.capabilities()}
        battery = caps["dev.battery"]
        assert battery.controllable
        assert battery.max_charge_w == expect["max_charge_w"] and battery.max_discharge_w == expect["max_discharge_w"]
        assert caps["dev.pv"].max_power_w == expect["pv_max_w"]
        got = await _poll(inv)
        assert got["dev.battery"].values[SOC] == pytest.approx(expect["battery_soc"])
        assert got["dev.battery"].values[POWER_W] == pytest.approx(expect["battery_w"])
        assert got["dev.pv"].values[POWER_W] == pytest.approx(expect["pv_w"])
        assert server.writes == []  # scanning and polling never write

        for step in FIXTURE["commands"]:
            server.clear()
            result = await inv.apply(BatterySetpoint(der_id="dev.battery", power_w=step["power_w"]))
            assert result.ok, result.detail
            assert server.writes == [RecordedWrite(u, a, tuple(v)) for u, a, v in step["writes"]], step["power_w"]

        server.clear()
        await inv.safe_mode()
        assert inv.counters["safe_mode_errors"] == 0
        assert server.writes == [RecordedWrite(u, a, tuple(v)) for u, a, v in FIXTURE["safe_mode"]["writes"]]


async def test_gen24_discharging_reads_negative_and_no_command_beyond_wchamax_reaches_the_wire() -> None:
    fixture = _with(_with(FIXTURE, MODULE_DCW[3], 0), MODULE_DCW[4], 800)  # StCha 0 W, StDisCha 800 W
    async with gen24(fixture) as (server, inv):
        got = await _poll(inv)
        assert got["dev.battery"].values[POWER_W] == pytest.approx(-800.0)
        result = await inv.apply(BatterySetpoint(der_id="dev.battery", power_w=-5001.0))
        assert not result.ok and "outside limits" in result.detail
        result = await inv.apply(BatterySetpoint(der_id="dev.battery", power_w=5001.0))
        assert not result.ok
        assert server.writes == []


async def test_storage_modules_are_only_read_as_a_battery_for_the_manufacturer_that_defines_them() -> None:
    """The same IDStr on another manufacturer's model 160 stays PV strings: no battery power is guessed."""
    fixture = _with(FIXTURE, 40004, 0x4163)  # Mn "Aconius": the first two letters changed, not "Fronius"
    async with gen24(fixture) as (_server, inv):
        got = await _poll(inv)
        assert POWER_W not in got["dev.battery"].values
        assert got["dev.battery"].values[SOC] == pytest.approx(0.55)


async def test_gen24_is_recognised_as_sunspec_with_a_controllable_battery() -> None:
    async with served(FIXTURE, "tcp") as (server, bus):
        found = await recognize(bus, FIXTURE["unit_id"])
    (match,) = found
    assert match.driver == "sunspec_tcp" and match.profile == ""
    assert match.description == "Fronius Primo GEN24 6.0 Plus"
    assert "battery (controllable)" in match.capabilities and match.settings["has_battery"] is True
    assert "160" in match.evidence.split() and "124" in match.evidence.split()
    assert server.writes == []
    assert DerKind.BATTERY.value in " ".join(match.capabilities)
