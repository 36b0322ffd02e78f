"""The controller's EV write phase: envelope currents become EvCurrent commands under the write rules."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from drivers.config_structs import EvLimits
from fallback.policy import Decision, Rung
from zapd.clock import ManualClock
from zapd.controller import Controller
from zapd.envelope import SiteLimits
from zapd.model import CONNECTED, POWER_W, Command, CommandResult, DerKind, EvCurrent, Intent, IntentMode, Reading
from zapd.state import SiteState
from zapd.store import Store

T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)


class FakeCharger:
    def __init__(self) -> None:
        self.commands: list[Command] = []

    async def apply(self, command: Command) -> CommandResult:
        self.commands.append(command)
        return CommandResult(command=command, ok=True)

    async def safe_mode(self) -> None:
        return None


def make(store: Store, clock: ManualClock, state: SiteState, charger: FakeCharger, intent: list[Intent]) -> Controller:
    return Controller(
        clock=clock,
        state=state,
        store=store,
        batteries=dict,
        actuators={"eve.ev": charger},
        site=SiteLimits(fuse_limit_w=25 * 230 * 3, fuse_a=25, voltage_v=230, phases=3, max_export_w=None),
        tick_s=10,
        refresh_s=60,
        deadband_w=50,
        plan_source=lambda: None,
        plan_fresh=lambda: True,
        forced_rung=lambda: Decision(Rung.PLAN, intent[0], "test"),
        evs=lambda: {"eve.ev": EvLimits(max_current_a=16)},
    )


def feed(state: SiteState, now: datetime, *, connected: bool, grid_w: float = 1000.0) -> None:
    state.update(Reading(der_id="meter", kind=DerKind.METER, ts=now, values={POWER_W: grid_w}))
    ev = {POWER_W: 0.0, CONNECTED: 1.0 if connected else 0.0}
    state.update(Reading(der_id="eve.ev", kind=DerKind.EV_CHARGER, ts=now, values=ev))


async def test_ev_commands_follow_intent_deadband_refresh_and_unplug(store: Store) -> None:
    clock, state, charger = ManualClock(T0), SiteState(), FakeCharger()
    state.register("meter", DerKind.METER, 10)
    state.register("eve.ev", DerKind.EV_CHARGER, 10)
    intent = [Intent(ev_w=6900.0)]
    ctl = make(store, clock, state, charger, intent)
    feed(state, clock.now(), connected=True)
    await ctl.cycle()
    assert charger.commands == [EvCurrent(der_id="eve.ev", current_a=pytest.approx(10.0), phases=3)]

    clock.advance(10)
    feed(state, clock.now(), connected=True)
    intent[0] = Intent(ev_w=6930.0)  # +30 W: inside the deadband
    await ctl.cycle()
    assert len(charger.commands) == 1

    clock.advance(60)  # refresh interval ran out
    feed(state, clock.now(), connected=True)
    await ctl.cycle()
    assert len(charger.commands) == 2

    clock.advance(10)
    intent[0] = Intent(mode=IntentMode.HOLD, battery_w=0.0)
    feed(state, clock.now(), connected=True)
    await ctl.cycle()
    assert charger.commands[-1] == EvCurrent(der_id="eve.ev", current_a=6.0, phases=3)

    clock.advance(10)
    feed(state, clock.now(), connected=False)
    await ctl.cycle()
    assert charger.commands[-1] == EvCurrent(der_id="eve.ev", current_a=0.0, phases=3)
    assert ctl.stats.last_ev_setpoints["eve.ev"].clamped_reason == "no car connected"
    logged = await store.recent_commands()
    assert logged[0].der_id == "eve.ev" and logged[0].clamped_reason == "no car connected"
