"""The fallback ladder as a table: (state, plan, link, time leap) → rung and intent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fallback.policy import Rung, choose, resolve_battery_w, self_consumption_w
from zapd.model import DerKind, Intent, IntentMode, Plan, PlanSlot, Reading
from zapd.state import BatteryView, SiteState, Snapshot

T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)


def plan(hours: int = 2, valid_h: int = 24) -> Plan:
    slots = tuple(
        PlanSlot(
            start=T0 + timedelta(hours=i),
            end=T0 + timedelta(hours=i + 1),
            intent=Intent(battery_w=1000.0 * (i + 1)),
        )
        for i in range(hours)
    )
    return Plan(site_id="s", version=3, issued_at=T0, valid_until=T0 + timedelta(hours=valid_h), slots=slots)


def snap(grid: float | None = 500.0, soc: float | None = 0.5, batt: float | None = 0.0) -> Snapshot:
    return Snapshot(T0, grid, None, None, {"b": BatteryView("b", soc, batt)})


@pytest.mark.parametrize(
    ("leap_h", "the_plan", "fresh", "snapshot", "rung", "battery_w"),
    [
        (0.5, plan(), True, snap(), Rung.PLAN, 1000.0),
        (1.5, plan(), True, snap(), Rung.PLAN, 2000.0),
        (1.5, plan(), False, snap(), Rung.CACHED_PLAN, 2000.0),
        (2.5, plan(), False, snap(grid=-2000.0), Rung.SELF_CONSUMPTION, 2000.0),  # past the cached horizon
        (0.5, plan(valid_h=0), True, snap(grid=800.0), Rung.SELF_CONSUMPTION, -800.0),  # expired
        (0.5, None, True, snap(grid=-300.0, batt=200.0), Rung.SELF_CONSUMPTION, 500.0),
        (0.5, plan(), True, snap(grid=None), Rung.SAFE_HOLD, 0.0),  # stale meter beats a plan
        (0.5, plan(), True, snap(soc=None), Rung.SAFE_HOLD, 0.0),  # stale battery
        (0.5, None, False, snap(batt=None), Rung.SAFE_HOLD, 0.0),
        # Not a number is unknown, never a number to act on (issue 10: +Inf grid W meant a full discharge).
        (0.5, plan(), True, snap(grid=float("inf")), Rung.SAFE_HOLD, 0.0),
        (0.5, plan(), True, snap(grid=float("nan")), Rung.SAFE_HOLD, 0.0),
        (0.5, None, True, snap(grid=-1e300), Rung.SAFE_HOLD, 0.0),
        (0.5, plan(), True, snap(soc=float("nan")), Rung.SAFE_HOLD, 0.0),
        (0.5, plan(), True, snap(batt=float("-inf")), Rung.SAFE_HOLD, 0.0),
    ],
)
def test_ladder(
    leap_h: float, the_plan: Plan | None, fresh: bool, snapshot: Snapshot, rung: Rung, battery_w: float
) -> None:
    decision = choose(T0 + timedelta(hours=leap_h), the_plan, fresh, snapshot)
    assert decision.rung is rung, decision.reason
    assert resolve_battery_w(decision.intent, snapshot) == pytest.approx(battery_w)
    assert decision.reason


def test_self_consumption_never_charges_from_grid() -> None:
    # Importing 1 kW while the battery charges 3 kW: the surplus is 2 kW, so charge at most 2 kW.
    assert self_consumption_w(snap(grid=1000.0, batt=3000.0)) == pytest.approx(2000.0)
    # Importing with the battery idle: discharge to cover it, never charge.
    assert self_consumption_w(snap(grid=1500.0, batt=0.0)) == pytest.approx(-1500.0)


def test_hold_intent_is_zero() -> None:
    assert resolve_battery_w(Intent(mode=IntentMode.HOLD, battery_w=4000.0), snap()) == 0.0


def test_state_marks_old_readings_stale() -> None:
    state = SiteState()
    state.register("m", DerKind.METER, poll_s=1.0)
    state.update(Reading(der_id="m", kind=DerKind.METER, ts=T0, values={"power_w": 100.0}))
    assert state.snapshot(T0 + timedelta(seconds=2)).grid_w == 100.0
    assert state.snapshot(T0 + timedelta(seconds=3.5)).grid_w is None  # older than 3 polls: unknown
    # An out-of-order older reading does not replace the newer one.
    state.update(Reading(der_id="m", kind=DerKind.METER, ts=T0 - timedelta(seconds=5), values={"power_w": 7.0}))
    assert state.snapshot(T0).grid_w == 100.0


def test_a_request_that_is_not_a_number_holds() -> None:
    for bad in (float("nan"), float("inf"), float("-inf"), -1e300):
        assert resolve_battery_w(Intent(battery_w=bad), snap()) == 0.0
    assert self_consumption_w(snap(grid=float("nan"))) == 0.0
    assert self_consumption_w(snap(batt=float("inf"))) == 0.0
