"""The import limit a plan slot carries where the site's tariff bills a capacity (demand) charge.

A capacity charge bills each calendar month's highest 15-minute import. The planner's LP sees import up to
the month's peak so far as free (it is paid already), so it may plan up to that peak, but never above it
unless a higher peak pays for itself. Without a limit at the edge, a forecast error (more load than
forecast while the plan imports) sets a new peak the plan did not choose, and every later plan treats that
higher peak as free: the peak ratchets up month by month (docs/cloud-planning.md, "capacity charge").
So each slot's `grid_import_limit_w` is the higher of the month's billed peak so far and the slot's planned
import: the edge's envelope then stops charging, or discharges within the reserve, to hold the site under
it (zapd/envelope.py `clamp_batteries`: a negative fuse headroom discharges), and the plan's own choices
stay possible.

Holding the peak so far does not lower it: a load the forecast did not see, with the battery used up, sets
it early in the month. So each billing month also gets a target (`month_target`, from the site's own 28
days before it): import up to the target is treated as paid for, the limit is the target where the peak so
far is lower, and the plan keeps a reserve in the battery in the hours before past excursions began
(docs/cloud-planning.md, "Month-ahead peak target").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

# Plan limits are sent in whole steps of this many watts, rounded up (never below what the plan needs).
LIMIT_STEP_W: Final = 100.0
# A plan's import this close above a whole watt is that watt (LP feasibility noise: ~1e-4 W).
PEAK_TOLERANCE_W: Final = 0.01


def round_up_w(power_w: float) -> float:
    """`power_w` rounded up to the next LIMIT_STEP_W (a limit the plan itself must never exceed)."""
    return math.ceil(max(0.0, power_w) / LIMIT_STEP_W) * LIMIT_STEP_W


def peak_import_limit_w(peak_so_far_kw: float, planned_import_kw: float, connection_w: float) -> float:
    """max(billed peak so far, planned import) in whole watts, never above the connection's limit (W).

    Not rounded up to LIMIT_STEP_W: every watt of slack above the billed peak is a watt a forecast error may
    add to it, and the next plan's peak so far is that higher value (measured: the Ausgrid months' peaks rose
    in 100 W steps, a planned night charge at the peak so far each time, the edge filling the rounding with
    the load's error). A plan import within PEAK_TOLERANCE_W of the peak (the solver's noise) is the peak.
    Inputs that are not finite numbers leave the connection's limit (no tightening on a value we cannot read).
    """
    if not (math.isfinite(peak_so_far_kw) and math.isfinite(planned_import_kw)):
        return connection_w
    need_w = max(peak_so_far_kw, planned_import_kw, 0.0) * 1000.0
    return min(connection_w, float(math.ceil(need_w - PEAK_TOLERANCE_W)))


# How many days before the billing month the target is learned from (four weeks: every weekday four times).
TARGET_HISTORY_DAYS: Final = 28
# Share of the battery's usable energy the target assumes for peak shaving; the rest stays free for the
# plan's arbitrage and self-consumption (sensitivity in docs/cloud-planning.md, "month-ahead peak target").
SHAVING_SHARE: Final = 0.25
# The reserve for an excursion that began at some time of day is kept this many hours before that time: the
# same appliance does not start at the same minute every day.
RESERVE_AHEAD_H: Final = 6.0


def _holds(
    net_kw: NDArray[np.float64],
    level_kw: float,
    dt_h: float,
    energy_kwh: float,
    charge_kw: float,
    discharge_kw: float,
    charge_eff: float,
    discharge_eff: float,
) -> bool:
    """Whether a battery of `energy_kwh`, starting full and recharged below `level_kw` whenever it can, keeps
    the import at or under `level_kw` in every slot (greedy: for holding a level, charging whenever there is
    room under it is never worse)."""
    stored = energy_kwh
    for x in net_kw:
        over = x - level_kw
        if over > 0.0:
            if over > discharge_kw + 1e-9:
                return False
            stored -= over * dt_h / discharge_eff
            if stored < -1e-9:
                return False
        else:
            stored = min(energy_kwh, stored + min(charge_kw, -over) * dt_h * charge_eff)
    return True


def shaving_level_kw(
    net_kw: NDArray[np.float64],
    dt_h: float,
    energy_kwh: float,
    charge_kw: float,
    discharge_kw: float,
    charge_eff: float,
    discharge_eff: float,
    resolution_kw: float = 0.01,
) -> float:
    """The lowest import level (kW) the house's past net load (load - PV, kW per slot; NaN: not measured,
    skipped) could have been held under by `energy_kwh` of battery with hindsight: bisection on `_holds`.

    0 for no history. It is what the battery allows against the site's own recent peaks, not a forecast:
    the month-ahead target (`month_target`) adds nothing to it, the plan's forecasts and the reserve
    decide whether a month reaches it.
    """
    net = np.asarray(net_kw, dtype=np.float64)
    net = net[np.isfinite(net)]
    if len(net) == 0 or not (math.isfinite(dt_h) and dt_h > 0.0):
        return 0.0
    lo, hi = 0.0, max(0.0, float(net.max()))
    if hi == 0.0 or _holds(net, 0.0, dt_h, energy_kwh, charge_kw, discharge_kw, charge_eff, discharge_eff):
        return 0.0
    while hi - lo > resolution_kw:
        mid = 0.5 * (lo + hi)
        if _holds(net, mid, dt_h, energy_kwh, charge_kw, discharge_kw, charge_eff, discharge_eff):
            hi = mid
        else:
            lo = mid
    return hi


def shaving_reserve_kwh(
    net_kw: NDArray[np.float64], dt_h: float, level_kw: float, discharge_eff: float, slots_per_day: int
) -> NDArray[np.float64]:
    """Per slot of the day (phase relative to the history's first slot): the battery energy (kWh) the largest
    past excursion of the net load above `level_kw` that began within the following RESERVE_AHEAD_H took.
    An excursion is a run of consecutive slots over the level (NaN ends one), its energy summed over the run
    and divided by the discharge efficiency.

    The plan keeps entry p above the battery's minimum at the end of a slot of phase p
    (`DemandCharge.reserve_kwh`): its forecasts see the mean load, not the kettle or the heat pump's start
    that sets a month's peak, and the edge can only discharge against such an excursion what the battery
    still holds. Kept where such excursions began in the history, not all day: elsewhere the battery's
    energy stays the plan's to use.
    """
    spd = max(1, int(slots_per_day))
    reserve = np.zeros(spd)
    net = np.asarray(net_kw, dtype=np.float64)
    if len(net) == 0 or not (math.isfinite(dt_h) and dt_h > 0.0 and math.isfinite(level_kw)):
        return reserve
    over = np.where(np.isfinite(net), np.maximum(net - level_kw, 0.0), 0.0)
    ahead = max(1, round(RESERVE_AHEAD_H / dt_h))
    t = 0
    while t < len(over):
        if over[t] <= 0.0:
            t += 1
            continue
        end = t
        while end < len(over) and over[end] > 0.0:
            end += 1
        energy = float(over[t:end].sum()) * dt_h / discharge_eff
        for back in range(1, ahead + 1):  # the slots ending before it began
            p = (t - back) % spd
            reserve[p] = max(reserve[p], energy)
        t = end
    return reserve


@dataclass(frozen=True, slots=True)
class PeakTarget:
    """A billing month's target: the import level the plan treats as paid for, and the battery energy above
    its minimum the plan keeps, by time of day, so the edge can hold that level against what was not forecast."""

    level_kw: float = 0.0
    # per slot of the day, phase relative to `phase0` (the first history slot): shaving_reserve_kwh
    reserve_kwh: tuple[float, ...] = ()
    phase0: int = 0

    def reserve_for(self, first_slot: int, horizon: int) -> list[float]:
        """The reserve of `horizon` slots from slot index `first_slot` (same index as `phase0`); [] if none."""
        if not self.reserve_kwh:
            return []
        n = len(self.reserve_kwh)
        return [self.reserve_kwh[(first_slot + t - self.phase0) % n] for t in range(horizon)]


NO_TARGET: Final = PeakTarget()


def month_target(
    net_kw: NDArray[np.float64],
    dt_h: float,
    usable_kwh: float,
    charge_kw: float,
    discharge_kw: float,
    charge_eff: float,
    discharge_eff: float,
    slots_per_day: int,
    phase0: int = 0,
    floor_kw: float = 0.0,
) -> PeakTarget:
    """The billing month's target from the last TARGET_HISTORY_DAYS of the house's net load (load - PV, kW
    per slot, before the month): the level SHAVING_SHARE of the battery's usable energy could have held it
    under (`shaving_level_kw`), and the excursions above that level by the time of day they began as the
    reserve (`shaving_reserve_kwh`, at most that share of the usable energy). `phase0`: the slot index of
    the history's first slot, which the reserve's time of day counts from. `floor_kw`: the lowest peak the
    tariff bills a month for (`CapacityCharge.min_kw`): the level is never below it, the reserve counts
    excursions above the level.

    The plan's LP treats import up to max(level, peak so far) as paid for, and the edge's limit is that
    level where the plan does not itself import more: below it nothing is gained by a lower peak, above it
    every kW costs the capacity price. No history: NO_TARGET (the peak so far alone, as before).
    """
    budget = SHAVING_SHARE * max(0.0, usable_kwh)
    net = np.asarray(net_kw, dtype=np.float64)
    if not np.isfinite(net).any() or budget <= 0.0:
        return NO_TARGET
    level = shaving_level_kw(net, dt_h, budget, charge_kw, discharge_kw, charge_eff, discharge_eff)
    level = max(level, floor_kw) if math.isfinite(floor_kw) else level
    reserve = np.minimum(budget, shaving_reserve_kwh(net, dt_h, level, discharge_eff, slots_per_day))
    return PeakTarget(level_kw=level, reserve_kwh=tuple(float(r) for r in reserve), phase0=phase0)


__all__ = [
    "LIMIT_STEP_W",
    "NO_TARGET",
    "PEAK_TOLERANCE_W",
    "RESERVE_AHEAD_H",
    "SHAVING_SHARE",
    "TARGET_HISTORY_DAYS",
    "PeakTarget",
    "month_target",
    "peak_import_limit_w",
    "round_up_w",
    "shaving_level_kw",
    "shaving_reserve_kwh",
]
