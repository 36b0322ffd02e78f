"""Property: whatever power a plan asks for, a profile's control writes stay within the device's limits.

For a time-of-use slot profile (Deye) the written SoC target also stays within the battery's
configured reserve and max SoC, whatever those are.

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
from typing import Any, ClassVar, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.bus import ModbusBus, Priority
from drivers.modbus.hybrid_inverter import ModbusHybridInverter
from drivers.modbus.register_map import MAPS_DIR, load_register_map
from zapd.clock import SystemClock
from zapd.model import BatterySetpoint

FIXTURES = Path(__file__).parent.parent / "fixtures" / "devices"
# Every shipped profile with a register-level fixture that commands it: a profile added later is covered too.
PROFILES = sorted(
    p.stem
    for p in FIXTURES.glob("*.toml")
    if "commands" in tomllib.loads(p.read_text()) and (MAPS_DIR / p.name).is_file()
)


class FakeBus:
    """Registers per (unit, table, address); writes land in holding and are recorded."""

    endpoint = "fake"  # what the SunSpec scan logs

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

    async def write_register(
        self, unit_id: int, address: int, value: int, *, priority: Priority = Priority.CONTROL
    ) -> None:
        """Function 0x06 (a profile's `write_function = "single"`): one register, stored and recorded alike."""
        await self.write_registers(unit_id, address, [value], priority=priority)

    async def read_coils(
        self, unit_id: int, address: int, count: int, *, priority: Priority = Priority.POLL
    ) -> list[int]:
        return await self._read(unit_id, "coil", address, count)

    async def write_coil(
        self, unit_id: int, address: int, value: bool, *, priority: Priority = Priority.CONTROL
    ) -> None:
        """Recorded like a register write, at the coil's address with the value 0 or 1."""
        self.writes.append((unit_id, address, [int(value)]))
        self.regs[(unit_id, "coil", address)] = int(value)


def _fixture(profile: str) -> dict[str, Any]:
    return tomllib.loads((FIXTURES / f"{profile}.toml").read_text())


FIXTURE_DATA = {p: _fixture(p) for p in PROFILES}


def _image(fixture: dict[str, Any]) -> dict[tuple[int, str, int], int]:
    return {(b["unit"], b["table"], b["address"] + i): v for b in fixture["image"] for i, v in enumerate(b["values"])}


async def _run(
    profile: str, power_w: float, soc_bounds: tuple[float, float] = (0.1, 1.0)
) -> tuple[ModbusHybridInverter, FakeBus, bool]:
    fixture = FIXTURE_DATA[profile]
    bus = FakeBus(_image(fixture))
    overrides = {**fixture.get("overrides", {}), "reserve_soc": soc_bounds[0], "max_soc": soc_bounds[1]}
    inv = ModbusHybridInverter(
        device_id="d",
        bus=cast(ModbusBus, bus),
        unit_id=fixture["unit_id"],
        register_map=load_register_map(profile),
        poll_s=1.0,
        clock=SystemClock(),
        **overrides,
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
        # rounded towards zero to the register's step (1 W, Solis 10 W): never more than asked, less by < 1 step
        # (a float register carries the value itself, to float32 precision)
        is_float = field.dtype.value.startswith("float")
        step = 1e-6 if is_float else abs(field.decode(field.encode_raw_int(1)))
        slack = 1e-6 * abs(power_w) + 1e-9
        assert abs(power_w) - step - slack <= magnitude <= abs(power_w) + slack
    if ctl.style == "dispatch":
        _check_dispatch(rmap, bus, FIXTURE_DATA[profile]["unit_id"], power_w, (0.1, 1.0))
    if ctl.style == "grid_setpoint":
        _check_grid_setpoint(rmap, bus, FIXTURE_DATA[profile]["unit_id"], power_w)
    if ctl.style == "rate_slot":
        _check_rate_slot(rmap, bus, FIXTURE_DATA[profile]["unit_id"], power_w, (0.1, 1.0))


def _value(rmap: Any, bus: FakeBus, unit: int, name: str) -> float:
    f = rmap.field(name)
    at = f.unit_id if f.unit_id is not None else unit
    return float(f.decode([bus.regs.get((at, f.table.value, f.address + i), 0) for i in range(f.count)]))


def _check_grid_setpoint(rmap: Any, bus: FakeBus, unit: int, power_w: float) -> None:
    """A grid (or AC) set point moves the battery by the command: set point = grid + (P - battery),
    from the grid and battery power the device showed (SMA STP SE, Fox ESS H3 on their AC power)."""
    ctl = rmap.control
    assert ctl.setpoint
    grid = sum(_value(rmap, bus, unit, name) for name in ctl.grid_power)
    if rmap.get("battery_power") is not None:
        battery = _value(rmap, bus, unit, "battery_power")
    else:
        battery = _value(rmap, bus, unit, "battery_charge_power") - _value(rmap, bus, unit, "battery_discharge_power")
    step = abs(rmap.field(ctl.setpoint).decode(rmap.field(ctl.setpoint).encode_raw_int(1)))
    assert abs(_value(rmap, bus, unit, ctl.setpoint) - (grid + power_w - battery)) <= max(step, 1.0) / 2 + 1e-6


def _check_rate_slot(rmap: Any, bus: FakeBus, unit: int, power_w: float, bounds: tuple[float, float]) -> None:
    """The active slot's rate x the device's rated power is at most |P| (and less by under 1 %), the
    other direction's rate is 0 or its slot is off, the stop SoC is within reserve..max SoC, and exactly
    the mode writes of that direction hold."""
    ctl = rmap.control
    assert ctl.rate_reference and ctl.charge_rate and ctl.discharge_rate and ctl.charge_soc and ctl.discharge_soc

    def value(name: str) -> float:
        return _value(rmap, bus, unit, name)

    rated = value(ctl.rate_reference)
    reserve, max_soc = bounds
    modes = ctl.charge_writes if power_w > 0 else ctl.discharge_writes if power_w < 0 else ctl.idle_writes
    for w in modes:
        f = rmap.field(w.field)
        assert f.decode_raw_int(_reg(bus, unit, f.address, f.count)) == w.value, w.field
    if power_w == 0:
        return
    rate = ctl.charge_rate if power_w > 0 else ctl.discharge_rate
    socs = (ctl.charge_soc,) if power_w > 0 else (ctl.discharge_soc, *ctl.discharge_soc_also)
    share_w = value(rate) * rated
    assert abs(power_w) - 0.01 * rated - 1e-6 <= share_w <= abs(power_w) + 1e-6
    for soc in socs:  # every floor register the discharge may stop at
        target = value(soc)
        assert reserve - 1e-9 <= target <= max_soc + 1e-9
        if power_w < 0:  # a discharge never stops above the floor it may discharge to
            assert target < reserve + 0.01


def _check_dispatch(rmap: Any, bus: FakeBus, unit: int, power_w: float, bounds: tuple[float, float]) -> None:
    """The dispatch power decodes back to the command (sign included), its SoC target stays within
    the reserve and max SoC (the max only when charging), and the command has a duration."""
    ctl = rmap.control
    assert ctl.setpoint and ctl.soc_target and ctl.duration and ctl.duration_s
    fields = {name: rmap.field(name) for name in (ctl.setpoint, ctl.soc_target, ctl.duration)}
    got = {name: f.decode(_reg(bus, unit, f.address, f.count)) for name, f in fields.items()}
    reserve, max_soc = bounds
    assert math.isclose(got[ctl.setpoint], power_w, abs_tol=0.5 + abs(power_w) * 1e-6)
    target = got[ctl.soc_target]
    assert reserve - 1e-9 <= target <= max_soc + 1e-9
    if power_w <= 0:  # a discharge or a hold never aims above the floor it may discharge to
        assert target < reserve + 0.01
    assert got[ctl.duration] == ctl.duration_s
    for w in ctl.activate:
        f = rmap.field(w.field)
        assert f.decode_raw_int(_reg(bus, unit, f.address, f.count)) == w.value


def _reg(bus: FakeBus, unit: int, address: int, count: int) -> list[int]:
    return [bus.regs[(unit, "holding", address + i)] for i in range(count)]


def _run_within_nameplate(
    profile: str, power_w: float, bounds: tuple[float, float]
) -> tuple[ModbusHybridInverter, FakeBus | None]:
    """Run the command; beyond the nameplate it must fail with nothing written (then the bus is None)."""
    inv, bus, ok = asyncio.run(_run(profile, power_w, bounds))
    battery = inv.capabilities()[0]
    within = -battery.max_discharge_w <= power_w <= battery.max_charge_w
    assert ok == within
    if not within:
        assert bus.writes == []
        return inv, None
    return inv, bus


@st.composite
def _soc_bounds(draw: st.DrawFn) -> tuple[float, float]:
    reserve = draw(st.floats(0.0, 0.95, allow_nan=False))
    return reserve, draw(st.floats(reserve + 0.01, 1.0, allow_nan=False))


@settings(max_examples=150, deadline=None)
@given(power_w=st.floats(-20_000, 20_000, allow_nan=False), bounds=_soc_bounds())
def test_tou_slot_targets_stay_within_reserve_and_max_soc(power_w: float, bounds: tuple[float, float]) -> None:
    """Whatever the command and the configured SoC bounds: slot power within the nameplate, the slot's
    SoC target never below the reserve nor above the max SoC, grid charging only when charging."""
    profile = "deye_sunsynk_3p"
    inv, bus = _run_within_nameplate(profile, power_w, bounds)
    if bus is None:
        return
    battery = inv.capabilities()[0]
    rmap = load_register_map(profile)
    ctl = rmap.control
    assert ctl is not None and ctl.slot_power and ctl.slot_soc and ctl.slot_charge
    unit = FIXTURE_DATA[profile]["unit_id"]
    fields = {name: rmap.field(name) for name in (ctl.slot_power, ctl.slot_soc, ctl.slot_charge)}
    power = fields[ctl.slot_power].decode(_reg(bus, unit, fields[ctl.slot_power].address, 1))
    target = fields[ctl.slot_soc].decode(_reg(bus, unit, fields[ctl.slot_soc].address, 1))
    flag = _reg(bus, unit, fields[ctl.slot_charge].address, 1)[0]
    reserve, max_soc = bounds
    assert 0 <= power <= (battery.max_charge_w if power_w > 0 else battery.max_discharge_w)
    assert math.isclose(power, abs(power_w), abs_tol=0.5 + abs(power_w) * 1e-6)
    assert reserve - 1e-9 <= target <= max_soc + 1e-9
    assert flag == (ctl.slot_charge_on if power_w > 0 else ctl.slot_charge_off)


# Styles whose commands carry a SoC target of their own, and the check of what they put on the wire.
SOC_TARGET_CHECKS = {"dispatch": _check_dispatch, "rate_slot": _check_rate_slot}
SOC_TARGET_PROFILES = [p for p in PROFILES if getattr(load_register_map(p).control, "style", None) in SOC_TARGET_CHECKS]


@settings(max_examples=300, deadline=None)
@given(
    profile=st.sampled_from(SOC_TARGET_PROFILES),
    power_w=st.floats(-20_000, 20_000, allow_nan=False),
    bounds=_soc_bounds(),
)
def test_soc_targets_stay_within_reserve_and_max_soc(profile: str, power_w: float, bounds: tuple[float, float]) -> None:
    """A dispatch command (AlphaESS) or a rate slot (Growatt SPH) carries its own SoC target: whatever the
    command and the configured bounds, the power stays within the nameplate (a dispatch with its sign, a
    rate never standing for more than the command), the target within reserve..max SoC."""
    _inv, bus = _run_within_nameplate(profile, power_w, bounds)
    if bus is None:
        return
    rmap = load_register_map(profile)
    assert rmap.control is not None
    SOC_TARGET_CHECKS[rmap.control.style](rmap, bus, FIXTURE_DATA[profile]["unit_id"], power_w, bounds)


@pytest.mark.parametrize("rated_raw", [[0, 0], [0x0000, 0x0064], [0x0000, 50000]])
def test_rate_slot_refuses_without_a_rated_power_and_above_it(rated_raw: list[int]) -> None:
    """Growatt: Pmax 0 (missing) refuses every command with nothing written; Pmax 10 W refuses a 3 kW
    command rather than writing a rate over 100 %; Pmax 5 kW under a 6 kW battery limit refuses even a
    3 kW command (a rated power below the limit is a misread register or a misconfigured limit, and a
    % of it cannot be trusted)."""

    async def scenario() -> None:
        inv, bus, _clock = _on_manual_clock("growatt_sph", max_charge_w=6000.0, max_discharge_w=6000.0)
        bus.regs[(1, "holding", 6)], bus.regs[(1, "holding", 7)] = rated_raw
        for power_w in (3000.0, -3000.0):
            result = await inv.apply(BatterySetpoint(der_id="d.battery", power_w=power_w))
            assert not result.ok and "rated power" in result.detail
            assert bus.writes == []
        assert (await inv.apply(BatterySetpoint(der_id="d.battery", power_w=0.0))).ok  # idle needs no rate

    asyncio.run(scenario())


def test_rate_slot_rate_is_of_the_rated_power_not_of_a_lower_zapd_limit() -> None:
    """zapd.toml limits the battery to 3000 W on a 6000 W Growatt: a 3000 W command is 50 %, not 100 %
    (which the inverter would run at 6000 W)."""

    async def scenario() -> None:
        inv, bus, _clock = _on_manual_clock("growatt_sph", max_charge_w=3000.0, max_discharge_w=3000.0)
        assert (await inv.apply(BatterySetpoint(der_id="d.battery", power_w=3000.0))).ok
        assert (1, 1090, [50]) in bus.writes
        bus.writes.clear()
        assert (await inv.apply(BatterySetpoint(der_id="d.battery", power_w=-3000.0))).ok
        assert (1, 1070, [50]) in bus.writes

    asyncio.run(scenario())


def test_tou_slot_refuses_soc_bounds_with_no_whole_percent_between() -> None:
    """reserve 50.2 % and max 50.8 %: no whole-percent target is within both; a config error, not a guess."""
    fixture = FIXTURE_DATA["deye_sunsynk_3p"]
    with pytest.raises(ValueError, match="between reserve_soc"):
        ModbusHybridInverter(
            device_id="d",
            bus=cast(ModbusBus, FakeBus(_image(fixture))),
            unit_id=1,
            register_map=load_register_map("deye_sunsynk_3p"),
            poll_s=1.0,
            clock=SystemClock(),
            reserve_soc=0.502,
            max_soc=0.508,
        )


def _on_manual_clock(
    profile: str, *, max_charge_w: float, max_discharge_w: float
) -> tuple[ModbusHybridInverter, FakeBus, Any]:
    """The profile's fixture image on a fake bus (its unit id), driven on a manual clock with these limits."""
    from datetime import UTC, datetime

    from zapd.clock import ManualClock

    bus = FakeBus(_image(FIXTURE_DATA[profile]))
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    inv = ModbusHybridInverter(
        device_id="d",
        bus=cast(ModbusBus, bus),
        unit_id=FIXTURE_DATA[profile]["unit_id"],
        register_map=load_register_map(profile),
        poll_s=1.0,
        clock=clock,
        capacity_wh=10240.0,
        max_charge_w=max_charge_w,
        max_discharge_w=max_discharge_w,
    )
    return inv, bus, clock


def test_tou_slot_keepalive_rule_spares_the_program_table() -> None:
    """The slot table lives in the inverter's settings memory: a held command is not written again until
    keepalive_s (the profile's 3600 s) has passed; leaving the time-of-use mode on the device runs the
    enter sequence again; safe mode writes idle and then time of use off."""

    async def scenario() -> None:
        inv, bus, clock = _on_manual_clock("deye_sunsynk_3p", max_charge_w=8000.0, max_discharge_w=8000.0)
        cmd = BatterySetpoint(der_id="d.battery", power_w=-2000.0)
        assert (await inv.apply(cmd)).ok
        first = list(bus.writes)
        assert [a for _, a, _ in first] == [146, 148, 149, 150, 151, 152, 153, 154, 166, 172]
        bus.writes.clear()
        clock.advance(3000)
        assert (await inv.apply(cmd)).ok and bus.writes == []  # held, inside keepalive_s
        clock.advance(700)
        assert (await inv.apply(cmd)).ok
        assert [a for _, a, _ in bus.writes] == [154, 166, 172]  # the keep-alive rewrite
        bus.writes.clear()
        bus.regs[(1, "holding", 146)] = 0  # someone switched time of use off on the device
        assert (await inv.apply(cmd)).ok
        assert [a for _, a, _ in bus.writes][:1] == [146]  # the enter sequence runs again
        bus.writes.clear()
        await inv.safe_mode()
        assert bus.writes == [(1, 154, [0]), (1, 166, [10]), (1, 172, [0]), (1, 146, [0])]

    asyncio.run(scenario())


def test_dispatch_is_rewritten_before_its_duration_runs_out() -> None:
    """AlphaESS dispatch (duration 300 s): a held command is not written again within keepalive_s (150 s),
    then the whole command (power, duration, SoC, mode) goes out again, well before the device would drop
    it; a device that ended the dispatch on its own (0x0880 = 0) gets the start written first."""

    async def scenario() -> None:
        inv, bus, clock = _on_manual_clock("alpha_ess_smile", max_charge_w=5000.0, max_discharge_w=5000.0)
        cmd = BatterySetpoint(der_id="d.battery", power_w=-1500.0)
        assert (await inv.apply(cmd)).ok
        assert [a for _, a, _ in bus.writes] == [0x0880, 0x0881, 0x0887, 0x0886, 0x0885]
        bus.writes.clear()
        clock.advance(149)
        assert (await inv.apply(cmd)).ok and bus.writes == []  # held, inside keepalive_s
        clock.advance(2)
        assert (await inv.apply(cmd)).ok
        assert bus.writes == [(85, 0x0881, [0, 33500]), (85, 0x0887, [0, 300]), (85, 0x0886, [25]), (85, 0x0885, [2])]
        bus.writes.clear()
        bus.regs[(85, "holding", 0x0880)] = 0  # the dispatch ended on the device
        assert (await inv.apply(cmd)).ok
        assert [a for _, a, _ in bus.writes] == [0x0880, 0x0881, 0x0887, 0x0886, 0x0885]

    asyncio.run(scenario())


FRONIUS = tomllib.loads((FIXTURES.parent / "sunspec" / "fronius_gen24.toml").read_text())
_M124 = 40343  # wire address of the Fronius GEN24 image's model 124 (fixture header)


def _s16(raw: int) -> int:
    return raw - 0x10000 if raw >= 0x8000 else raw


async def _run_gen24(power_w: float) -> tuple[FakeBus, bool]:
    from drivers.modbus.sunspec import SunSpecInverter

    bus = FakeBus(_image(FRONIUS))
    inv = SunSpecInverter(device_id="d", bus=cast(ModbusBus, bus), unit_id=1, poll_s=1.0, clock=SystemClock())
    await inv.scan()
    result = await inv.apply(BatterySetpoint(der_id="d.battery", power_w=power_w))
    return bus, result.ok


@settings(max_examples=150, deadline=None)
@given(power_w=st.floats(-20_000, 20_000, allow_nan=False))
def test_sunspec_124_window_pins_the_command_within_wchamax(power_w: float) -> None:
    """Fronius GEN24 (model 124, WChaMax 5000 W for both directions, InOutWRte_SF -2): the written
    window [-OutWRte, InWRte] x WChaMax is the command to within one raw step; ChaGriSet is GRID only
    while charging; beyond WChaMax nothing is written."""
    bus, ok = asyncio.run(_run_gen24(power_w))
    assert ok == (-5000.0 <= power_w <= 5000.0)
    if not ok:
        assert bus.writes == []
        return
    out_w, in_w = (_s16(bus.regs[(1, "holding", _M124 + off)]) * 0.01 / 100 * 5000.0 for off in (12, 13))
    assert math.isclose(-out_w, power_w, abs_tol=0.26) and math.isclose(in_w, power_w, abs_tol=0.26)
    assert -5000.0 <= -out_w <= 5000.0 and -5000.0 <= in_w <= 5000.0
    assert bus.regs[(1, "holding", _M124 + 5)] == 3  # StorCtl_Mod: both limits
    assert bus.regs[(1, "holding", _M124 + 17)] == (1 if power_w > 0 else 0)  # ChaGriSet
    assert bus.regs[(1, "holding", _M124 + 15)] == 300  # the inverter's own revert


class WriteOnlyBus(FakeBus):
    """SMA's device control objects: written values are kept by the device, but every read of them
    answers NaN (0x80000000 for an S32, 0xFFFFFFFF for a U32/ENUM), as the SMA parameter lists say."""

    NAN: ClassVar[dict[int, int]] = {40149: 0x8000, 40150: 0x0000, 40151: 0xFFFF, 40152: 0xFFFF}

    async def _read(self, unit: int, table: str, address: int, count: int) -> list[int]:
        regs = await super()._read(unit, table, address, count)
        return [self.NAN.get(address + i, r) if table == "holding" else r for i, r in enumerate(regs)]


def _sma(clock: Any, register_map: Any = None) -> tuple[ModbusHybridInverter, WriteOnlyBus]:
    bus = WriteOnlyBus(_image(_fixture("sma_sunny_tripower_se")))
    inv = ModbusHybridInverter(
        device_id="d",
        bus=cast(ModbusBus, bus),
        unit_id=3,
        register_map=register_map or load_register_map("sma_sunny_tripower_se"),
        poll_s=1.0,
        clock=clock,
        max_charge_w=6000.0,
        max_discharge_w=6000.0,
    )
    return inv, bus


def test_write_only_control_is_not_read_back_and_is_refreshed_with_its_mode_after_keepalive() -> None:
    """`readback = false` (SMA STP SE): a command is the enter write (40151 = 802) and the set point, nothing
    read back; a held command is not rewritten within keepalive_s (60 s), and after it both are written again,
    since zapd cannot read whether the inverter is still under external control."""
    from datetime import UTC, datetime

    from zapd.clock import ManualClock

    async def scenario() -> None:
        clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
        inv, bus = _sma(clock)
        bus.regs[(3, "holding", 31394)] = 0  # battery idle now, AC feed-in 1330 W
        cmd = BatterySetpoint(der_id="d.battery", power_w=1000.0)
        result = await inv.apply(cmd)
        assert result.ok and "not read back" in result.detail
        assert bus.writes == [(3, 40151, [0, 802]), (3, 40149, [0, 330])]  # AC 1330 - (1000 - 0)
        bus.writes.clear()
        clock.advance(59)
        assert (await inv.apply(cmd)).ok and bus.writes == []
        clock.advance(2)
        assert (await inv.apply(cmd)).ok
        assert bus.writes == [(3, 40151, [0, 802]), (3, 40149, [0, 330])]

    asyncio.run(scenario())


def test_the_same_device_read_back_would_fail_every_command(tmp_path: Path) -> None:
    """Why the rule exists: with read-back (and the mode read before each command) a write-only register
    never matches, so every command on a real STP SE would fail."""
    text = (Path(load_register_map("sma_sunny_tripower_se").path)).read_text()
    variant = tmp_path / "sma_readback.toml"
    variant.write_text(text.replace("readback = false\n", ""))

    async def scenario() -> None:
        inv, _bus = _sma(SystemClock(), load_register_map(variant))
        result = await inv.apply(BatterySetpoint(der_id="d.battery", power_w=1000.0))
        assert not result.ok and "read back" in result.detail

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('readback = "no"\nkeepalive_s = 60\n', "readback must be true or false"),
        ("readback = false\n", "needs control.keepalive_s"),
        ('readback = false\nkeepalive_s = 60\nmode_field = "mode"\n', "no mode_field"),
    ],
)
def test_readback_false_needs_a_keepalive_and_no_mode_field(extra: str, message: str) -> None:
    from drivers.modbus.control_spec import ControlSpecError, parse_control

    doc = tomllib.loads('style = "signed_setpoint"\nsetpoint = "sp"\nenter = [{ field = "mode", value = 1 }]\n' + extra)
    fields = {"sp": _Writable(), "mode": _Writable()}
    with pytest.raises(ControlSpecError, match=message):
        parse_control(doc, fields)


class _Writable:
    writable = True
    scale_factor = None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (("battery_power", "battery_charge_power", "battery_discharge_power"), "not both"),
        (("battery_charge_power",), "is not declared"),
    ],
)
def test_battery_power_is_one_field_or_the_charge_discharge_pair(
    tmp_path: Path, fields: tuple[str, ...], message: str
) -> None:
    from drivers.modbus.register_map import RegisterMapError

    text = '[device]\nname = "x"\n[fields.battery_soc]\naddress = 0\ntable = "holding"\ntype = "u16"\nunit = "%"\n'
    for i, name in enumerate(fields, start=1):
        text += f'[fields.{name}]\naddress = {i}\ntable = "holding"\ntype = "u16"\nunit = "W"\n'
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(RegisterMapError, match=message):
        ModbusHybridInverter(
            device_id="d",
            bus=cast(ModbusBus, FakeBus({})),
            unit_id=1,
            register_map=load_register_map(path),
            poll_s=1.0,
            clock=SystemClock(),
        )


def test_solis_mode_first_and_10_w_steps_never_round_past_the_nameplate() -> None:
    """Solis: 43135 (RC force mode) is written before the power, whose register counts 10 W. With a
    nameplate that is not a whole number of steps (4995 W), a full-power command is 499 steps = 4990 W:
    rounding to the nearest step would have written 500 = 5000 W, past the nameplate. The 5 min RC
    timeout is written once; a held command goes out again (mode first) after keepalive_s (60 s)."""

    async def scenario() -> None:
        inv, bus, clock = _on_manual_clock("solis_hybrid", max_charge_w=4995.0, max_discharge_w=4995.0)
        cmd = BatterySetpoint(der_id="d.battery", power_w=4995.0)
        assert (await inv.apply(cmd)).ok
        assert bus.writes == [(1, 43282, [5]), (1, 43135, [1]), (1, 43136, [499])]
        bus.writes.clear()
        clock.advance(59)
        assert (await inv.apply(cmd)).ok and bus.writes == []
        clock.advance(2)
        assert (await inv.apply(cmd)).ok and bus.writes == [(1, 43135, [1]), (1, 43136, [499])]
        bus.writes.clear()
        assert (await inv.apply(BatterySetpoint(der_id="d.battery", power_w=-4995.0))).ok
        assert bus.writes == [(1, 43135, [2]), (1, 43129, [499])]

    asyncio.run(scenario())
