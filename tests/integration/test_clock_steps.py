"""Clock steps of ±1 h and a DST change through the controller, the ladder, plan slots and the store.

A gateway's clock is stepped by NTP after a boot without RTC, or by hand; DST changes the
meter's local time twice a year. zapd keeps UTC everywhere and takes `now` from one clock, so
these tests drive the real Controller, SiteState, fallback ladder and a real SQLite store
with a ManualClock that jumps, and check the promises that could break on a jump:
stale is unknown (never act on a value that only *looks* fresh), a setpoint is kept alive
(re-written) after the clock goes back, and plan slots are chosen by UTC across DST.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from dsmr_parser import telegram_specifications
from dsmr_parser.parsers import TelegramParser

from drivers.config_structs import BatteryLimits
from drivers.sim.p1_pty import TelegramBuilder, dsmr_timestamp, frame_telegram
from drivers.sim.physics import SimSite
from fallback.policy import Rung
from zapd.clock import ManualClock
from zapd.controller import Controller
from zapd.envelope import SiteLimits
from zapd.model import POWER_W, SOC, BatterySetpoint, Command, CommandResult, DerKind, Intent, Plan, PlanSlot, Reading
from zapd.state import SiteState
from zapd.store import Store

T0 = datetime(2026, 6, 21, 12, tzinfo=UTC)
BATTERY = "inverter.battery"
AMSTERDAM = ZoneInfo("Europe/Amsterdam")


class FakeBattery:
    def __init__(self) -> None:
        self.commands: list[Command] = []

    async def apply(self, command: Command) -> CommandResult:
        self.commands.append(command)
        return CommandResult(command=command, ok=True)

    async def safe_mode(self) -> None:
        return None

    def setpoints(self) -> list[float]:
        return [c.power_w for c in self.commands if isinstance(c, BatterySetpoint)]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "zapd.sqlite")
    yield s
    await s.close()


def plan_from(start: datetime, hours: int, watts: list[float], slot_min: int = 15) -> Plan:
    """Slots of `slot_min` minutes from `start`, cycling through `watts`."""
    slots = []
    t = start
    i = 0
    while t < start + timedelta(hours=hours):
        end = t + timedelta(minutes=slot_min)
        slots.append(PlanSlot(start=t, end=end, intent=Intent(battery_w=watts[i % len(watts)])))
        t, i = end, i + 1
    return Plan(site_id="s", version=1, issued_at=start, valid_until=t, slots=tuple(slots))


def make(store: Store, clock: ManualClock, state: SiteState, battery: FakeBattery, plan: Plan | None) -> Controller:
    state.register("meter", DerKind.METER, 10)
    state.register(BATTERY, DerKind.BATTERY, 10)
    return Controller(
        clock=clock,
        state=state,
        store=store,
        batteries=lambda: {BATTERY: BatteryLimits(capacity_wh=10_000, max_charge_w=5000, max_discharge_w=5000)},
        actuators={BATTERY: battery},
        site=SiteLimits(fuse_limit_w=25 * 230 * 3, fuse_a=25, voltage_v=230, phases=3, max_export_w=None),
        tick_s=10,
        refresh_s=60,
        deadband_w=50,
        plan_source=lambda: plan,
        plan_fresh=lambda: True,
    )


def feed(state: SiteState, now: datetime, battery_w: float = 0.0) -> None:
    """What the drivers and the daemon's sink do every poll: stamp with the daemon clock's now, pass it on."""
    state.update(Reading(der_id="meter", kind=DerKind.METER, ts=now, values={POWER_W: 500.0}), now=now)
    battery = Reading(der_id=BATTERY, kind=DerKind.BATTERY, ts=now, values={POWER_W: battery_w, SOC: 0.5})
    state.update(battery, now=now)


async def test_clock_step_forward_one_hour_holds_until_fresh_readings(store: Store) -> None:
    """Promise: stale is unknown. After a +1 h step every reading is an hour old: safe hold (0 W, never the
    last setpoint) until the drivers report again; then the plan slot of the *new* time is executed."""
    clock, state, battery = ManualClock(T0), SiteState(), FakeBattery()
    plan = plan_from(T0, 3, [1000.0 + 100 * i for i in range(12)])  # slot 4, one hour on, is 1400 W
    ctl = make(store, clock, state, battery, plan)
    feed(state, clock.now())
    await ctl.cycle()
    assert ctl.stats.rung is Rung.PLAN and battery.setpoints() == [1000.0]

    clock.advance(3600)
    await ctl.cycle()
    assert ctl.stats.rung is Rung.SAFE_HOLD
    assert battery.setpoints()[-1] == 0.0  # hold, never the last setpoint

    feed(state, clock.now())
    await ctl.cycle()
    assert ctl.stats.rung is Rung.PLAN
    assert battery.setpoints()[-1] == pytest.approx(1400.0)  # the slot one hour on, by UTC
    events = await store.events("fallback")
    assert [e.detail.split(":")[0] for e in reversed(events)] == ["plan", "safe_hold", "plan"]


async def test_clock_step_back_one_hour_takes_new_readings_and_keeps_setpoint_alive(store: Store) -> None:
    """Promise: a clock stepped back does not freeze the site. Readings stamped after the step are taken
    although they look older than the ones before it (else the site would sit in safe hold for an hour),
    and an unchanged setpoint is still re-written every refresh interval (else the inverter's own command
    timeout would drop remote control while zapd believes it holds the setpoint)."""
    clock, state, battery = ManualClock(T0), SiteState(), FakeBattery()
    plan = plan_from(T0 - timedelta(hours=2), 4, [1500.0])
    ctl = make(store, clock, state, battery, plan)
    feed(state, clock.now())
    await ctl.cycle()
    assert battery.setpoints() == [1500.0]

    clock.advance(-3600)
    for _ in range(3):  # 30 s of polls and ticks after the step
        clock.advance(10)
        feed(state, clock.now())
        await ctl.cycle()
        assert ctl.stats.rung is Rung.PLAN, ctl.stats.rung_reason
    assert state.fresh("meter", clock.now()) is not None

    writes_before = len(battery.setpoints())
    for _ in range(7):  # 70 s > refresh_s: the unchanged 1500 W must be re-written at least once
        clock.advance(10)
        feed(state, clock.now())
        await ctl.cycle()
    assert len(battery.setpoints()) > writes_before, "setpoint not refreshed after the clock went back"


async def test_dst_fall_back_plan_slots_follow_utc(store: Store) -> None:
    """Promise: a DST change does nothing to control. Europe/Amsterdam falls back at 01:00 UTC on
    2026-10-25 (local 02:00-03:00 happens twice); zapd is UTC inside, so each 15-minute slot is executed
    exactly in its UTC window, in order, with no slot skipped or run twice."""
    start = datetime(2026, 10, 24, 23, 0, tzinfo=UTC)
    watts = [100.0 * (i + 1) for i in range(16)]
    plan = plan_from(start, 4, watts)
    clock, state, battery = ManualClock(start), SiteState(), FakeBattery()
    ctl = make(store, clock, state, battery, plan)
    executed: list[float] = []
    while clock.now() < start + timedelta(hours=4):
        feed(state, clock.now())
        await ctl.cycle()
        sp = round(ctl.stats.last_setpoints[BATTERY].power_w, 3)
        if not executed or executed[-1] != sp:
            executed.append(sp)
        clock.advance(60)
    assert executed == watts
    local = [(start + timedelta(minutes=15 * i)).astimezone(AMSTERDAM).strftime("%H:%M") for i in range(16)]
    assert local.count("02:15") == 2  # the repeated local hour really is in the window


def test_dsmr_timestamp_flag_on_dst_change() -> None:
    """Promise: the meter's local time with its S/W flag maps to one UTC instant on both sides of a DST
    change. The simulated meter prints S in summer and W in winter; the repeated hour 02:00-03:00
    local appears once with S and once with W, and dsmr_parser turns both into the right UTC."""
    spec = telegram_specifications.V5
    parser = TelegramParser(spec, apply_checksum_validation=True)
    site = SimSite()
    builder = TelegramBuilder()
    for utc, flag in (
        (datetime(2026, 10, 25, 0, 30, tzinfo=UTC), "S"),  # 02:30 local, summer time
        (datetime(2026, 10, 25, 1, 30, tzinfo=UTC), "W"),  # 02:30 local again, winter time
        (datetime(2026, 3, 29, 0, 30, tzinfo=UTC), "W"),  # 01:30 local, before spring forward
        (datetime(2026, 3, 29, 1, 30, tzinfo=UTC), "S"),  # 03:30 local, after it
    ):
        stamp = dsmr_timestamp(utc)
        assert stamp.endswith(flag), stamp
        telegram = parser.parse(frame_telegram(builder.header, builder.lines(site, utc)).decode("ascii"))
        assert telegram.P1_MESSAGE_TIMESTAMP.value == utc, (stamp, telegram.P1_MESSAGE_TIMESTAMP.value)
