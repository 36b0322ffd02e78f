"""The fallback ladder: what the site does when it has no fresh plan, as pure functions.

Rungs, from best to safest:
  1. PLAN             a valid plan with a slot for now, and the link is fine: execute the slot.
  2. CACHED_PLAN      link down or plan past its refresh time: keep executing cached slots.
  3. SELF_CONSUMPTION no cached slot for now: local rules (charge from surplus, cover import,
                      never below reserve (the envelope enforces it), no grid charging).
  4. SAFE_HOLD        the meter or a battery reading is stale: battery idle, EV at minimum,
                      never the last setpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from zapd.bounds import known
from zapd.model import Absorb, Intent, IntentMode, Plan
from zapd.state import Snapshot


class Rung(StrEnum):
    """The ladder's rungs; the value is the name every surface shows (logs, zapctl, Home Assistant,
    the store's fallback events), so nothing formats it by hand."""

    PLAN = "plan"
    CACHED_PLAN = "cached_plan"
    SELF_CONSUMPTION = "self_consumption"
    SAFE_HOLD = "safe_hold"

    @property
    def level(self) -> int:
        """1 (plan) .. 4 (safe hold): how far down the ladder, for the `zapd_fallback_rung` gauge."""
        return _LEVELS[self]


_LEVELS = {Rung.PLAN: 1, Rung.CACHED_PLAN: 2, Rung.SELF_CONSUMPTION: 3, Rung.SAFE_HOLD: 4}


@dataclass(frozen=True, slots=True)
class Decision:
    rung: Rung
    intent: Intent
    reason: str


HOLD = Intent(mode=IntentMode.HOLD, battery_w=0.0)


def choose(now: datetime, plan: Plan | None, plan_fresh: bool, snapshot: Snapshot) -> Decision:
    """Pick the rung and its intent. `plan_fresh` is false when the link is down or the plan is overdue."""
    if known(snapshot.grid_w) is None:
        return Decision(Rung.SAFE_HOLD, HOLD, "meter reading stale or missing")
    stale = [
        b.der_id for b in snapshot.batteries.values() if known(b.soc, 0.0, 1.0) is None or known(b.power_w) is None
    ]
    if stale:
        return Decision(Rung.SAFE_HOLD, HOLD, f"battery reading stale or missing: {', '.join(sorted(stale))}")
    slot = None
    if plan is not None and now < plan.valid_until:
        slot = plan.slot_at(now)
    if slot is not None:
        if plan_fresh:
            return Decision(Rung.PLAN, slot.intent, f"plan v{plan.version if plan else 0} slot {slot.start:%H:%M}")
        return Decision(
            Rung.CACHED_PLAN, slot.intent, f"cached plan v{plan.version if plan else 0}: link down or plan overdue"
        )
    if plan is None:
        reason = "no plan"
    elif now >= plan.valid_until:
        reason = f"plan v{plan.version} expired"
    else:
        reason = f"plan v{plan.version} has no slot for now"
    return Decision(Rung.SELF_CONSUMPTION, Intent(mode=IntentMode.SELF_CONSUMPTION), reason)


def self_consumption_w(snapshot: Snapshot) -> float:
    """Battery total that zeroes the grid: charge from surplus, discharge to cover import.

    Never charges from the grid: the result is at most the PV surplus. Returns 0 when the
    state is unknown (the ladder should have chosen SAFE_HOLD then anyway).
    """
    battery_now = known(snapshot.battery_total_w())
    grid_w = known(snapshot.grid_w)
    if grid_w is None or battery_now is None:
        return 0.0
    base_w = grid_w - battery_now  # + import without the battery
    return -base_w


def resolve_battery_w(intent: Intent, snapshot: Snapshot) -> float:
    """The site battery total an intent asks for, before the envelope."""
    if intent.mode is IntentMode.HOLD:
        return 0.0
    if intent.mode is IntentMode.SELF_CONSUMPTION or intent.battery_w is None:
        return self_consumption_w(snapshot)
    # A request that is not a number (a plan that slipped past verification) asks for nothing: hold.
    battery_w = known(intent.battery_w) or 0.0
    grid_w = known(intent.grid_w)
    if intent.absorb is None or grid_w is None:
        return battery_w
    return absorbed_w(battery_w, grid_w, intent.absorb, snapshot)


def absorbed_w(battery_w: float, grid_w: float, absorb: Absorb, snapshot: Snapshot) -> float:
    """The setpoint moved by the forecast error the plan lets the battery take (see `Absorb`).

    error = live grid with the setpoint - planned grid. A positive error (more demand than planned) is taken by
    DOWN or BOTH, a negative one (more surplus) by UP or BOTH; the other direction stays on the grid. With the
    state unknown the setpoint is returned unchanged (the ladder holds the battery then anyway).
    """
    battery_now = known(snapshot.battery_total_w())
    live_grid_w = known(snapshot.grid_w)
    if live_grid_w is None or battery_now is None:
        return battery_w
    error = (live_grid_w - battery_now + battery_w) - grid_w
    if error > 0 and absorb in (Absorb.DOWN, Absorb.BOTH):
        return battery_w - error
    if error < 0 and absorb in (Absorb.UP, Absorb.BOTH):
        return battery_w - error
    return battery_w
