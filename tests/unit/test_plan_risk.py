"""The shared risk module (cloud/plan_risk.py) that the backtest and the planner worker both plan with: the
scenario problems, the checks of the spreads and ratios, the load reserve. Expected values are worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud.forecast import NOWCAST_TAU_H
from cloud.optimizer import solve
from cloud.optimizer_io import Problem
from cloud.plan_risk import (
    MAX_DAY_RATIO,
    NEUTRAL,
    NO_LOAD_RISK,
    LoadRisk,
    checked_spread,
    learn_load_risk,
    night_shared_slots,
    ramp,
    reserve_load,
    scenario_problems,
    solve_two_stage,
)
from tests.plan_problems import hour_problem

SPD = 24


def _problem(pv: list[float], load: list[float], max_import_kw: float = 10.0) -> Problem:
    return hour_problem(pv, load, max_import_kw=max_import_kw)


def test_the_ramp_starts_at_zero_and_fades_in_with_the_nowcasts_time_constant() -> None:
    r = ramp(4, 1.0)
    assert r[0] == 0.0
    assert r[1] == pytest.approx(1.0 - math.exp(-1.0 / NOWCAST_TAU_H))
    assert r[3] == pytest.approx(1.0 - math.exp(-3.0 / NOWCAST_TAU_H))
    assert (np.diff(r) > 0).all() and r[-1] < 1.0


def test_scenarios_scale_pv_and_load_by_the_ratios_faded_in_and_stay_feasible() -> None:
    """Slot 0: ramp 0, every scenario is the point forecast. Slot 2 (2 h ahead, ramp 1 - e^(-2/3) = 0.4866):
    dark PV 4 x (1 - 0.5 x 0.4866) = 3.027, high load 2 x (1 + 1 x 0.4866) = 2.973; bright PV 4 x
    (1 + 0.5 x 0.4866) = 4.973, low load 2 x (1 - 0.5 x 0.4866) = 1.513. Slot 3's high load 12 x 1.5940
    = 19.13 is cut to the import limit plus the dark PV (10 + 0)."""
    p = _problem([4.0, 4.0, 4.0, 0.0], [2.0, 2.0, 2.0, 12.0])
    dark, point, bright = scenario_problems(p, (0.5, 1.5), (0.5, 2.0))
    assert point is p
    f = 1.0 - math.exp(-2.0 / NOWCAST_TAU_H)
    assert dark.pv_kw[0] == 4.0 and dark.load_kw[0] == 2.0
    assert dark.pv_kw[2] == pytest.approx(4.0 * (1 - 0.5 * f))
    assert dark.load_kw[2] == pytest.approx(2.0 * (1 + 1.0 * f))
    assert bright.pv_kw[2] == pytest.approx(4.0 * (1 + 0.5 * f))
    assert bright.load_kw[2] == pytest.approx(2.0 * (1 - 0.5 * f))
    assert dark.load_kw[3] == pytest.approx(10.0)
    assert (dark.import_price, dark.battery, dark.grid) == (p.import_price, p.battery, p.grid)


@pytest.mark.parametrize(
    ("low", "high"),
    [(math.nan, 1.2), (0.5, math.inf), (-0.1, 1.2), (1.3, 1.2), (0.5, MAX_DAY_RATIO + 0.1)],
)
def test_a_spread_that_is_not_finite_or_out_of_range_is_neutral(low: float, high: float) -> None:
    assert checked_spread(low, high) == NEUTRAL


def test_a_spread_in_range_is_kept() -> None:
    assert checked_spread(0.4, 1.6) == (0.4, 1.6)
    assert checked_spread(0.0, MAX_DAY_RATIO) == (0.0, MAX_DAY_RATIO)


def test_neutral_spreads_give_the_deterministic_plans_cost() -> None:
    p = _problem([3.0, 4.0, 4.0, 0.0, 0.0], [0.5, 0.5, 0.5, 2.0, 2.0])
    two = solve_two_stage(p, NEUTRAL, NEUTRAL, 1)
    assert two is not None
    assert two.cost == pytest.approx(solve(p).cost, abs=1e-9)


def test_a_nonsense_spread_plans_as_neutral() -> None:
    p = _problem([3.0, 4.0, 4.0, 0.0, 0.0], [0.5, 0.5, 0.5, 2.0, 2.0])
    broken = solve_two_stage(p, (math.nan, 1.4), (0.8, 1e9), 1)
    neutral = solve_two_stage(p, NEUTRAL, NEUTRAL, 1)
    assert broken is not None and neutral is not None
    assert broken.battery_charge_kw == pytest.approx(neutral.battery_charge_kw)


def test_learn_load_risk_needs_a_week_of_whole_days() -> None:
    """Five weeks of a flat 1 kW house: every ratio is 1, the spread (1, 1); six days only: no ratios."""
    flat = np.ones(35 * SPD)
    risk = learn_load_risk(flat, SPD)
    assert len(risk.ratios) == 28
    assert risk.ratios == pytest.approx(np.ones(28))
    assert risk.spread == pytest.approx((1.0, 1.0))
    assert learn_load_risk(flat[: 6 * SPD], SPD) is NO_LOAD_RISK
    assert NO_LOAD_RISK.spread == NEUTRAL


def test_learn_load_risk_sees_the_days_spread_and_skips_missing_days() -> None:
    """Five weeks alternating a 1 kW and a 2 kW week day pattern with one day's slot missing: the ratios are
    the days' energy over the 4-week profile's, the day with a gap is left out, all finite."""
    days = 35
    level = np.where(np.arange(days) % 2 == 0, 1.0, 2.0)
    load = np.repeat(level, SPD)
    load[30 * SPD + 5] = math.nan
    risk = learn_load_risk(load, SPD)
    assert np.isfinite(risk.ratios).all() and (risk.ratios > 0).all()
    assert len(risk.ratios) < 28
    low, high = risk.spread
    assert low < 1.0 < high


def test_the_reserve_raises_served_slots_only_and_not_without_ratios() -> None:
    """Ratios 0.8 .. 1.6 (nine values, evenly spaced): q = 1 - 0.05/0.30 = 0.833 -> ratio 0.8 + 0.833 x 0.8
    = 1.4667; slot 0 (ramp 0) keeps the forecast, slot 2 (served: load 2 > PV 1) gets 2 x (1 + 0.4667 x ramp),
    slot 1 (surplus) keeps it."""
    load = np.array([2.0, 0.5, 2.0])
    pv = np.array([1.0, 3.0, 1.0])
    imp, exp = np.full(3, 0.30), np.full(3, 0.05)
    risk = LoadRisk(np.linspace(0.8, 1.6, 9))
    out = reserve_load(load, pv, imp, exp, risk, 1.0)
    f = 1.0 - math.exp(-2.0 / NOWCAST_TAU_H)
    assert out == pytest.approx([2.0, 0.5, 2.0 * (1.0 + (0.8 + 0.8 * (1 - 0.05 / 0.30) - 1.0) * f)])
    assert reserve_load(load, pv, imp, exp, NO_LOAD_RISK, 1.0) == pytest.approx(load)


def test_at_night_the_scenarios_share_every_slot_up_to_the_first_sunlit_one() -> None:
    # a 5 kWp plant: a slot is sunlit above 2 % of kWp clear sky (0.1 kW), as the day outlook counts it
    night_then_day = np.array([0.0, 0.0, 0.0, 0.05, 0.3, 1.5, 3.0, 1.0, 0.0, 0.0])
    assert night_shared_slots(night_then_day, 5.0, 1) == 5  # 00..03 dark or dawn, slot 4 the first measured
    assert night_shared_slots(night_then_day, 5.0, 8) == 8  # never fewer than the slots the edge runs
    assert night_shared_slots(night_then_day[4:], 5.0, 1) == 1  # by day: the slots the edge runs only
    assert night_shared_slots(night_then_day[:3], 5.0, 1) == 1  # no sunlit slot ahead: nothing to tell apart
    assert night_shared_slots(night_then_day, 0.0, 2) == 2  # no PV: no weather scenarios to share
    assert night_shared_slots(night_then_day[:3], 5.0, 9) == 3  # at most the horizon


@given(
    st.lists(st.floats(0.0, 10.0) | st.just(math.nan), min_size=1, max_size=60),
    st.floats(0.0, 20.0) | st.sampled_from([math.nan, math.inf, -1.0]),
    st.integers(1, 80),
)
def test_the_shared_slots_lie_between_the_edges_slots_and_the_first_sunlit_one(
    clear: list[float], kwp: float, at_least: int
) -> None:
    clear_kw = np.asarray(clear)
    shared = night_shared_slots(clear_kw, kwp, at_least)
    assert min(at_least, len(clear)) <= shared <= len(clear)
    if shared > at_least:  # only the night extends it, through the first sunlit slot and no further
        assert math.isfinite(kwp) and kwp > 0.0
        assert not (clear_kw[: shared - 1] > 0.02 * kwp).any() and clear_kw[shared - 1] > 0.02 * kwp
