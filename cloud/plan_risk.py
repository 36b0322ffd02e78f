"""Risk in a plan (issue 11, "risk where it matters"): the two-stage plan over a dark and a bright day, and the
newsvendor load reserve. One place for both, called by the backtest (cloud/backtest.py) and the planner worker
(cloud/planner.py), so that what the backtest measures is what the worker plans.

* **Two-stage scenarios.** Around the point forecast (Problem), a dark day (PV x the site's P10 daily ratio,
  load x the load's P90 ratio) and a bright day (PV x P90, load x P10), Swanson's 30/40/30 weights, one battery
  decision for the slots about to run (cloud.optimizer_scenarios). The ratios are whole-day ones: a day's
  weather is one error shared by all its slots (cloud.forecast.pv_ratio_spread), and so is most of a day's load
  error (cloud.forecast_load.day_load_ratios).
* **Load reserve.** In the slots the battery serves (forecast load above forecast PV), the load is planned on
  the whole-day load ratio's quantile 1 - export/import (cloud.forecast_load.newsvendor_load).

Both spreads fade in with the PV nowcast's time constant (`ramp`): the next hours are known better than
tomorrow, and the nowcasts own them. Every ratio that comes in is checked (finite, in range); one that is not
makes its spread neutral (1, 1), which plans the point forecast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import msgspec
import numpy as np

from cloud.forecast import NOWCAST_TAU_H, FloatArray
from cloud.forecast_load import day_load_ratios, newsvendor_load
from cloud.forecast_pv_day import SUNNY_SHARE_OF_KWP, PvDaySpread
from cloud.optimizer import WarmStart
from cloud.optimizer_io import Problem, Solution
from cloud.optimizer_scenarios import SWANSON_WEIGHTS, solve_scenarios
from cloud.quantile import linear_quantiles

# A spread's P90 (a day's energy over its forecast) beyond this is a broken meter or a unit error, not weather
# or a house: such a spread is not used. A sanity bound, not a tuned one: the highest unconditional P90 over
# every day of the bench years is 4.38 (house 3's PV, a dark winter fortnight with one bright day), the load's
# 2.12; the default's figures were measured with this bound (docs/cloud-planning.md).
MAX_DAY_RATIO: Final = 5.0
# The load history the whole-day ratios need: 28 days of ratios, each against a profile of the 4 weeks before.
LOAD_RISK_HISTORY_DAYS: Final = 56
NEUTRAL: Final = (1.0, 1.0)


def ramp(horizon: int, dt_h: float) -> FloatArray:
    """How much of a whole-day spread applies at each slot ahead (0 now, towards 1 after a few hours)."""
    return np.asarray(1.0 - np.exp(-dt_h * np.arange(horizon) / NOWCAST_TAU_H), dtype=np.float64)


def checked_spread(low: float, high: float) -> tuple[float, float]:
    """(low, high) if both are finite with 0 <= low <= high <= MAX_DAY_RATIO, else NEUTRAL."""
    if not (math.isfinite(low) and math.isfinite(high) and 0.0 <= low <= high <= MAX_DAY_RATIO):
        return NEUTRAL
    return float(low), float(high)


# The PV's dark / bright ratios over the point forecast: one pair for the whole horizon (the unconditional
# spread, cloud.forecast.pv_ratio_spread) or one pair per slot (the conditional one, `pv_scenario_ratios`).
PvRatios = tuple[float, float] | tuple[FloatArray, FloatArray]


def checked_pv_ratios(ratios: PvRatios, horizon: int) -> tuple[FloatArray, FloatArray]:
    """(dark, bright) per slot of the horizon: a pair broadcast, arrays as they are if every slot is finite
    with 0 <= dark <= bright <= MAX_DAY_RATIO and both have `horizon` slots; else NEUTRAL everywhere."""
    dark, bright = (np.asarray(r, dtype=np.float64) for r in ratios)
    dark = np.full(horizon, float(dark)) if dark.ndim == 0 else dark
    bright = np.full(horizon, float(bright)) if bright.ndim == 0 else bright
    neutral = np.ones(horizon), np.ones(horizon)
    if dark.shape != (horizon,) or bright.shape != (horizon,):
        return neutral
    ok = np.isfinite(dark) & np.isfinite(bright) & (dark >= 0.0) & (dark <= bright) & (bright <= MAX_DAY_RATIO)
    return (np.array(dark), np.array(bright)) if bool(ok.all()) else neutral


def pv_scenario_ratios(
    spread: PvDaySpread | None,
    fallback: tuple[float, float],
    horizon: int,
    slots_left_today: int,
    slots_per_day: int,
    levels: FloatArray | None = None,
) -> PvRatios:
    """The PV scenarios' dark / bright ratios over the point forecast: with a conditional spread
    (cloud.forecast_pv_day.pv_day_spread_from_series) one pair per slot, the day's ratios over the mean day
    divided by the point forecast's own level over it (`levels`: 1 unless the point forecast is the AR(1)
    day persistence's); without one, the unconditional `fallback` pair."""
    if spread is None:
        return fallback
    dark, bright = spread.ratios(horizon, slots_left_today, slots_per_day)
    if levels is not None and len(levels) >= horizon:
        level = np.maximum(np.asarray(levels[:horizon], dtype=np.float64), 1e-9)
        dark, bright = dark / level, bright / level
    return dark, bright


@dataclass(frozen=True, slots=True)
class LoadRisk:
    """The house's recent whole-day load ratios (each day's energy over the profile's forecast of it)."""

    ratios: FloatArray

    @property
    def spread(self) -> tuple[float, float]:
        """(P10, P90) of the ratios; NEUTRAL without them."""
        if not len(self.ratios):
            return NEUTRAL
        p10, p90 = linear_quantiles(self.ratios, [0.1, 0.9])
        return checked_spread(float(p10), float(p90))


NO_LOAD_RISK: Final = LoadRisk(np.zeros(0))


def learn_load_risk(history_kw: FloatArray, slots_per_day: int) -> LoadRisk:
    """The whole-day ratios of the load history that ends now (cloud.forecast_load.day_load_ratios); none
    (a new site) with fewer than a week of complete days. A ratio that is not finite or negative (it cannot
    be, from measured loads; checked at the boundary all the same) is left out."""
    ratios = day_load_ratios(history_kw, slots_per_day)
    ratios = ratios[np.isfinite(ratios) & (ratios >= 0.0)]
    return LoadRisk(ratios) if len(ratios) else NO_LOAD_RISK


def reserve_load(
    load_kw: FloatArray,
    pv_kw: FloatArray,
    import_price: FloatArray,
    export_price: FloatArray,
    risk: LoadRisk,
    dt_h: float,
) -> FloatArray:
    """The load to plan on: the newsvendor quantile of the day's load where the battery serves the house
    (cloud.forecast_load.newsvendor_load), the point forecast elsewhere and for a site without ratios."""
    return newsvendor_load(load_kw, pv_kw, import_price, export_price, risk.ratios, ramp(len(load_kw), dt_h))


def scenario_problems(problem: Problem, pv_spread: PvRatios, load_spread: tuple[float, float]) -> list[Problem]:
    """[dark day with high load, the point forecast, bright day with low load]: the point forecast's PV and
    load scaled by the spreads' ratios, faded in by `ramp`, each scenario's load kept feasible as the point
    forecast's is (no more than the connection's import plus the scenario's PV). The PV ratios may differ
    by slot (`PvRatios`)."""
    horizon = problem.horizon
    fade = ramp(horizon, problem.dt_hours)
    if problem.slot_steps:  # slots of several steps (cloud.plan_grid): faded by each slot's start
        hours = np.asarray(problem.slot_hours(), dtype=np.float64)
        fade = 1.0 - np.exp(-np.concatenate([[0.0], np.cumsum(hours[:-1])]) / NOWCAST_TAU_H)
    pv = np.asarray(problem.pv_kw, dtype=np.float64)
    load = np.asarray(problem.load_kw, dtype=np.float64)
    dark, bright = checked_pv_ratios(pv_spread, horizon)
    low, high = load_spread

    def scenario(pv_ratio: FloatArray, load_ratio: float) -> Problem:
        pv_s = np.maximum(pv * (1.0 + (pv_ratio - 1.0) * fade), 0.0)
        load_s = np.maximum(load * (1.0 + (load_ratio - 1.0) * fade), 0.0)
        load_s = np.minimum(load_s, problem.grid.max_import_kw + pv_s)
        return msgspec.structs.replace(problem, load_kw=load_s.tolist(), pv_kw=pv_s.tolist())

    return [scenario(dark, high), problem, scenario(bright, low)]


def night_shared_slots(clear_kw: FloatArray, kwp: float, at_least: int) -> int:
    """How many of a plan's first slots the scenarios share one battery decision over: `at_least` (the slots
    the edge runs before the next plan) by day; at night, every slot up to and including the first sunlit one
    (clear sky above SUNNY_SHARE_OF_KWP of kWp, as the day outlook counts a slot), at least `at_least`.

    Why: the scenarios differ in how the day's weather turns out, and nothing tells them apart before the sun
    is up. A plan made at 1 h that shares only its first hour lets the dark day charge at 3 h knowing it is
    dark; the plan at 3 h does not know it either. So the night's charging and discharging is one decision
    for all scenarios until the first slot whose PV is measured (docs/cloud-planning.md, "The night is one
    decision"). `clear_kw`: the plan's slots' clear-sky PV; a horizon with no sunlit slot, or a kWp that is not
    a positive number, keeps `at_least`. A clear sky that is not a number counts as dark: sharing longer only
    makes the plan more cautious, never less."""
    horizon = len(clear_kw)
    if not (math.isfinite(kwp) and kwp > 0.0):
        return min(at_least, horizon)
    lit = np.flatnonzero(np.asarray(clear_kw, dtype=np.float64) > SUNNY_SHARE_OF_KWP * kwp)
    if not len(lit) or lit[0] == 0:
        return min(at_least, horizon)
    return min(max(at_least, int(lit[0]) + 1), horizon)


def solve_two_stage(
    problem: Problem,
    pv_spread: PvRatios,
    load_spread: tuple[float, float],
    shared: int,
    *,
    warm: WarmStart | None = None,
) -> Solution | None:
    """The point forecast's plan under one battery decision for the first `shared` slots shared with a dark
    and a bright day, or None where cloud.optimizer_scenarios declines (the caller then solves the
    deterministic problem). Spreads are checked here (`checked_spread`, `checked_pv_ratios`)."""
    pv_spread = checked_pv_ratios(pv_spread, problem.horizon)
    load_spread = checked_spread(*load_spread)
    problems = scenario_problems(problem, pv_spread, load_spread)
    return solve_scenarios(problems, SWANSON_WEIGHTS, min(shared, problem.horizon), warm=warm)


__all__ = [
    "LOAD_RISK_HISTORY_DAYS",
    "MAX_DAY_RATIO",
    "NEUTRAL",
    "NO_LOAD_RISK",
    "LoadRisk",
    "PvRatios",
    "checked_pv_ratios",
    "checked_spread",
    "learn_load_risk",
    "night_shared_slots",
    "pv_scenario_ratios",
    "ramp",
    "reserve_load",
    "scenario_problems",
    "solve_two_stage",
]
