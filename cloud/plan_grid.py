"""A plan's time grid: the data's step for the near hours, one slot per far slot length (an hour) after them.

Why: a rolling planner executes only a plan's first hour before it plans again, yet a sub-hourly plan solves
every quarter-hour of a day and a half (a hundred and more slots per scenario). The far hours' decisions are
made again, at the data's step, before they come; what the plan needs from them is how much energy the
battery should carry towards them. So after `fine_hours` the slots are one hour long (aligned to the clock
hour, so consecutive plans share them and the warm start's basis lines up), which cuts a 15-minute LP by
about three. The near hours keep the data's step, so the slots the edge runs are planned exactly as before.

`coarse_problem` averages a group's prices, load and PV (energy over the slot's length: a slot's cost is
its mean price times its mean flow only where one of them is flat within the slot, which is why the near
hours stay fine). `fine_solution` spreads a coarse plan back over the steps (the same kW in each, the stored
energy linear in between: exactly what a constant power does), so the rest of the planner reads one step per
slot as before. A problem with an EV session stays on the fine grid: its arrival and departure are steps.
"""

from __future__ import annotations

import math
from typing import Final

import msgspec
import numpy as np
from numpy.typing import NDArray

from cloud.optimizer_io import DemandCharge, Problem, Solution

FloatArray = NDArray[np.float64]
PvRatios = tuple[float, float] | tuple[FloatArray, FloatArray]  # cloud.plan_risk's (kept free of its imports)

FAR_SLOT_MINUTES: Final = 60.0
# The near hours at the data's step: the slots the edge runs (an hour) and the next few hours, whose PV the
# nowcast still knows better than a day's mean (docs/cloud-planning.md, "A coarser grid for the far hours").
FINE_HOURS: Final = 6.0


def far_grid(
    start_s: float,
    step_minutes: float,
    horizon: int,
    fine_hours: float = FINE_HOURS,
    far_minutes: float = FAR_SLOT_MINUTES,
) -> list[int]:
    """Each slot's length in steps: one step each through `fine_hours` (to the next whole far slot of the
    clock), then `far_minutes` each (the last one what is left). Empty, meaning one step each, where the grid
    would change nothing: a step of `far_minutes` or more, one that does not divide it, a short horizon, or a
    value that is not a finite positive number."""
    if not all(math.isfinite(v) and v > 0.0 for v in (step_minutes, far_minutes)) or not math.isfinite(fine_hours):
        return []
    per = far_minutes / step_minutes
    if per < 2.0 or abs(per - round(per)) > 1e-9 or fine_hours < 0.0 or not math.isfinite(start_s):
        return []
    per_slot = round(per)
    step_s = step_minutes * 60.0
    far_s = far_minutes * 60.0
    fine_end_s = math.ceil((start_s + fine_hours * 3600.0) / far_s - 1e-9) * far_s
    fine = max(0, round((fine_end_s - start_s) / step_s))
    if fine + per_slot >= horizon:
        return []
    rest = horizon - fine
    steps = [1] * fine + [per_slot] * (rest // per_slot)
    if rest % per_slot:
        steps.append(rest % per_slot)
    return steps


def _bounds(slot_steps: list[int]) -> NDArray[np.int64]:
    """Where each slot starts on the fine grid, and the end: len(slot_steps) + 1 entries."""
    return np.concatenate([[0], np.cumsum(np.asarray(slot_steps, dtype=np.int64))])


def group_mean(values: FloatArray | list[float], slot_steps: list[int]) -> FloatArray:
    """Each slot's mean of its steps' values."""
    a = np.asarray(values, dtype=np.float64)
    b = _bounds(slot_steps)
    return np.asarray(np.add.reduceat(a, b[:-1]) / np.diff(b), dtype=np.float64)


def weighted_ratio(ratio: FloatArray, weight: FloatArray, slot_steps: list[int]) -> FloatArray:
    """Each slot's ratio weighted by `weight` (the PV a scenario ratio scales), the plain mean where the
    slot's weight is zero: the coarse slot's scenario PV is then the mean of its steps' scenario PV."""
    b = _bounds(slot_steps)[:-1]
    total = np.add.reduceat(weight, b)
    mean = group_mean(ratio, slot_steps)
    with np.errstate(invalid="ignore", divide="ignore"):
        weighted = np.add.reduceat(ratio * weight, b) / total
    return np.asarray(np.where(total > 0.0, weighted, mean), dtype=np.float64)


def ratios_on_grid(ratios: PvRatios, pv_kw: list[float], slot_steps: list[int]) -> PvRatios:
    """A two-stage plan's dark / bright PV ratios (cloud.plan_risk.PvRatios: one pair, or one per step) on the
    grid `slot_steps`, each slot's weighted by the PV it scales. A single pair, an empty grid, or arrays that
    are not one per step stay as they are (cloud.plan_risk.checked_pv_ratios then judges them on the grid)."""
    pv = np.asarray(pv_kw, dtype=np.float64)
    if not slot_steps or any(np.shape(r) != pv.shape for r in ratios):
        return ratios
    dark, bright = (np.asarray(r, dtype=np.float64) for r in ratios)
    return weighted_ratio(dark, pv, slot_steps), weighted_ratio(bright, pv, slot_steps)


def coarse_slots(fine_slots: int, slot_steps: list[int]) -> int:
    """How many slots of the grid it takes to cover the first `fine_slots` steps (an empty grid: as many)."""
    if not slot_steps:
        return fine_slots
    b = _bounds(slot_steps)
    return min(len(slot_steps), int(np.searchsorted(b, fine_slots, side="left")))


def coarse_problem(problem: Problem, slot_steps: list[int]) -> Problem:
    """`problem` (one step a slot) on the grid `slot_steps`; the problem itself for an empty grid."""
    if not slot_steps:
        return problem
    if problem.slot_steps or sum(slot_steps) != problem.horizon or problem.ev is not None:
        raise ValueError("coarse_problem: a one-step-a-slot problem without EV, and a grid of its horizon")
    demand = problem.demand_charge
    if demand is not None and demand.reserve_kwh:  # the reserve each slot must keep: the most its steps keep
        b = _bounds(slot_steps)
        reserve = np.maximum.reduceat(np.asarray(demand.reserve_kwh, dtype=np.float64), b[:-1])
        demand = DemandCharge(demand.price_per_kw, demand.peak_already_kw, [float(r) for r in reserve])

    def mean(values: list[float]) -> list[float]:
        out: list[float] = group_mean(values, slot_steps).tolist()
        return out

    return msgspec.structs.replace(
        problem,
        import_price=mean(problem.import_price),
        export_price=mean(problem.export_price),
        load_kw=mean(problem.load_kw),
        pv_kw=mean(problem.pv_kw),
        demand_charge=demand,
        slot_steps=list(slot_steps),
    )


def fine_solution(solution: Solution, slot_steps: list[int]) -> Solution:
    """A plan on the grid `slot_steps` as one entry per step: each slot's kW in each of its steps, the SoC
    linear within a slot, each slot's energy value in each of its steps. An empty plan stays as it is."""
    if not slot_steps or not solution.battery_charge_kw:
        return solution
    counts = np.asarray(slot_steps, dtype=np.int64)

    def spread(values: list[float]) -> list[float]:
        out: list[float] = np.repeat(np.asarray(values, dtype=np.float64), counts).tolist()
        return out

    soc = np.asarray(solution.soc, dtype=np.float64)
    slot = np.repeat(np.arange(len(slot_steps)), counts)
    within = (np.arange(int(counts.sum())) - _bounds(slot_steps)[slot]) / counts[slot]  # 0, 1/n, .. in a slot
    fine_soc = soc[slot] + (soc[slot + 1] - soc[slot]) * within
    return msgspec.structs.replace(
        solution,
        battery_charge_kw=spread(solution.battery_charge_kw),
        battery_discharge_kw=spread(solution.battery_discharge_kw),
        grid_import_kw=spread(solution.grid_import_kw),
        grid_export_kw=spread(solution.grid_export_kw),
        pv_used_kw=spread(solution.pv_used_kw),
        ev_charge_kw=spread(solution.ev_charge_kw),
        soc=[*fine_soc.tolist(), float(soc[-1])],
        energy_value=None if solution.energy_value is None else spread(solution.energy_value),
    )


__all__ = [
    "FAR_SLOT_MINUTES",
    "FINE_HOURS",
    "coarse_problem",
    "coarse_slots",
    "far_grid",
    "fine_solution",
    "group_mean",
    "ratios_on_grid",
    "weighted_ratio",
]
