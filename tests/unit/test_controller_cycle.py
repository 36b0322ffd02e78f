"""One process image and one write phase per control cycle (OpenEMS `CycleWorker` style).

Issue 15: the controller decided the batteries, waited on their writes (device I/O), then took a
second snapshot for the EVs, so within one cycle the two decisions could rest on different
meter readings. Now the cycle reads the site once, decides every DER from that image, then
writes; a reading that arrives during the write phase wakes the next cycle instead.
"""

from __future__ import annotations

from datetime import UTC, datetime

from drivers.config_structs import BatteryLimits, EvLimits
from fallback.policy import Decision, Rung
from zapd.clock import ManualClock
from zapd.controller import Controller
from zapd.envelope import SiteLimits
from zapd.model import CONNECTED, POWER_W, SOC, Command, CommandResult, DerKind, EvCurrent, Intent, Reading
from zapd.state import SiteState
from zapd.store import Store

T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)
FUSE_A = 25.0
SITE = SiteLimits(fuse_limit_w=FUSE_A * 230 * 3, fuse_a=FUSE_A, voltage_v=230, phases=3, max_export_w=None)


class Recorder:
    """Every command in the order the devices got them; the battery's write lets a reading in."""

    def __init__(self, state: SiteState, clock: ManualClock, *, meter_w_during_write: float | None = None) -> None:
        self.log: list[Command] = []
        self._state, self._clock = state, clock
        self._inject = meter_w_during_write

    async def apply(self, command: Command) -> CommandResult:
        self.log.append(command)
        if self._inject is not None and not isinstance(command, EvCurrent):
            # A meter telegram lands while the battery's write waits on Modbus.
            self._state.update(
                Reading(der_id="meter", kind=DerKind.METER, ts=self._clock.now(), values={POWER_W: self._inject})
            )
        return CommandResult(command=command, ok=True)

    async def safe_mode(self) -> None:
        return None


def _site(clock: ManualClock, grid_w: float) -> SiteState:
    state = SiteState()
    for der, kind in (("meter", DerKind.METER), ("inv.battery", DerKind.BATTERY), ("eve.ev", DerKind.EV_CHARGER)):
        state.register(der, kind, 10)
    now = clock.now()
    state.update(Reading(der_id="meter", kind=DerKind.METER, ts=now, values={POWER_W: grid_w}))
    state.update(Reading(der_id="inv.battery", kind=DerKind.BATTERY, ts=now, values={POWER_W: 0.0, SOC: 0.5}))
    state.update(Reading(der_id="eve.ev", kind=DerKind.EV_CHARGER, ts=now, values={POWER_W: 0.0, CONNECTED: 1.0}))
    return state


def _controller(
    store: Store,
    clock: ManualClock,
    state: SiteState,
    devices: Recorder,
    *,
    tick_s: float = 10,
    keepalive: dict[str, float] | None = None,
) -> Controller:
    return Controller(
        clock=clock,
        state=state,
        store=store,
        batteries=lambda: {"inv.battery": BatteryLimits(capacity_wh=10_000, max_charge_w=3000, max_discharge_w=3000)},
        actuators={"inv.battery": devices, "eve.ev": devices},
        site=SITE,
        tick_s=tick_s,
        refresh_s=60,
        deadband_w=50,
        plan_source=lambda: None,
        plan_fresh=lambda: True,
        # Charge the battery 1 kW and the EV 16 A x 3 phases: both fit the fuse at 1 kW grid import.
        forced_rung=lambda: Decision(Rung.PLAN, Intent(battery_w=1000.0, ev_w=11_040.0), "test"),
        evs=lambda: {"eve.ev": EvLimits(max_current_a=16)},
        keepalive_s=lambda: keepalive or {},
    )


async def test_evs_are_decided_on_the_same_image_as_the_batteries(store: Store) -> None:
    clock = ManualClock(T0)
    # The reference: the same site where no reading arrives during the write phase.
    calm_state = _site(clock, grid_w=1000.0)
    calm = Recorder(calm_state, clock)
    await _controller(store, clock, calm_state, calm).cycle()
    # The same cycle, but a meter reading of 17 kW import (the fuse almost used up) lands while the
    # battery's write waits on I/O. Deciding the EV on it would cut the charger to a pause.
    state = _site(clock, grid_w=1000.0)
    busy = Recorder(state, clock, meter_w_during_write=17_000.0)
    ctl = _controller(store, clock, state, busy)
    await ctl.cycle()
    ev = [c for c in busy.log if isinstance(c, EvCurrent)]
    assert ev == [c for c in calm.log if isinstance(c, EvCurrent)]
    assert ev and ev[0].current_a > 6.0  # decided from the image: the fuse had room for it
    # The write phase comes after every decision: battery first, EV second, one command each.
    assert [type(c).__name__ for c in busy.log] == ["BatterySetpoint", "EvCurrent"]
    # The reading that landed is not lost: the next cycle decides on it.
    clock.advance(1)
    state.update(
        Reading(der_id="eve.ev", kind=DerKind.EV_CHARGER, ts=clock.now(), values={POWER_W: 0.0, CONNECTED: 1.0})
    )
    state.update(
        Reading(der_id="inv.battery", kind=DerKind.BATTERY, ts=clock.now(), values={POWER_W: 1000.0, SOC: 0.5})
    )
    await ctl.cycle()
    later = [c for c in busy.log if isinstance(c, EvCurrent)]
    assert len(later) == 2 and later[1].current_a < ev[0].current_a


async def test_the_controller_keeps_a_device_s_command_alive(store: Store) -> None:
    """A charger that drops its setpoint after 5 s (DerCapabilities.keepalive_s) gets it written again
    by the controller, the only writer, before that; without the capability the refresh_s rule holds."""
    for keepalive, expect_rewrites in (({"eve.ev": 5.0}, 3), ({}, 0)):
        clock = ManualClock(T0)
        state = _site(clock, grid_w=1000.0)
        devices = Recorder(state, clock)
        ctl = _controller(store, clock, state, devices, tick_s=1.0, keepalive=keepalive)
        await ctl.cycle()
        first = [c for c in devices.log if isinstance(c, EvCurrent)]
        for _ in range(13):  # 13 s, a cycle a second, nothing changes
            clock.advance(1)
            for der, kind, values in (
                ("meter", DerKind.METER, {POWER_W: 1000.0}),
                ("inv.battery", DerKind.BATTERY, {POWER_W: 1000.0, SOC: 0.5}),
                ("eve.ev", DerKind.EV_CHARGER, {POWER_W: 11_040.0, CONNECTED: 1.0}),
            ):
                state.update(Reading(der_id=der, kind=kind, ts=clock.now(), values=values))
            await ctl.cycle()
        ev = [c for c in devices.log if isinstance(c, EvCurrent)]
        assert len(first) == 1 and len(ev) == 1 + expect_rewrites, keepalive  # every 4 s: the period less a tick
        assert all(c == first[0] for c in ev)
