"""A plan's coarser far grid (cloud/plan_grid.py) and the optimizer's slots of several steps.

The grid may only change what the far hours' decisions look like, never what a slot costs: where the data is
flat within each hour, a plan on hourly far slots must cost exactly what the plan on every quarter-hour costs
(a constant power within the hour reaches every SoC the quarter-hours reach, and the prices are the same). The
warm start must carry a basis across re-plans on such grids and give the cold optimum.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.optimizer import WarmStart, recompute_cost, solve, solve_json
from cloud.optimizer_io import DemandCharge, Ev, Grid, Problem, ProblemError, validate_problem
from cloud.plan_grid import coarse_problem, coarse_slots, far_grid, fine_solution, group_mean, weighted_ratio
from cloud.plan_risk import scenario_problems, solve_two_stage
from tests.plan_problems import bench_battery

START = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)


def _quarter_problem(start: datetime, hours: int, seed: int, soc: float, *, flat_hours: bool) -> Problem:
    """A problem at 15-minute steps over `hours` (positive prices, export below import: the LP path); with
    `flat_hours` every hour's four steps carry the same prices, load and PV."""
    rng = np.random.default_rng(seed)
    n = hours * 4
    h = (np.arange(n) / 4.0 + start.hour) % 24
    imp = 0.25 + 0.1 * np.sin(2 * np.pi * (h - 7) / 24) + rng.uniform(-0.05, 0.05, n)
    pv = np.maximum(0.0, np.sin(2 * np.pi * (h - 6) / 24)) * rng.uniform(0.0, 6.0, n)
    load = rng.uniform(0.2, 2.5, n)
    if flat_hours:
        imp, pv, load = (np.repeat(a[::4], 4) for a in (imp, pv, load))
    exp = imp * 0.4
    return Problem(
        start=start,
        step_minutes=15.0,
        import_price=imp.round(4).tolist(),
        export_price=exp.round(4).tolist(),
        load_kw=load.round(3).tolist(),
        pv_kw=pv.round(3).tolist(),
        battery=bench_battery(soc),
        grid=Grid(max_import_kw=10.0, max_export_kw=10.0),
    )


@pytest.mark.parametrize(
    ("minute", "fine"),
    [(0, 24), (15, 27), (45, 25)],  # 6 h, then on to the next clock hour,
)
def test_the_fine_part_ends_on_a_clock_hour_and_the_grid_covers_the_horizon(minute: int, fine: int) -> None:
    start = START + timedelta(hours=5, minutes=minute)
    steps = far_grid(start.timestamp(), 15.0, 130, fine_hours=6.0)
    assert steps[:fine] == [1] * fine and steps[fine] == 4
    assert sum(steps) == 130
    assert set(steps[fine:-1]) == {4} and 1 <= steps[-1] <= 4
    end_of_fine = start + timedelta(minutes=15 * fine)
    assert end_of_fine.minute == 0


@pytest.mark.parametrize(
    ("step", "horizon", "fine_hours", "far"),
    [
        (60.0, 48, 6.0, 60.0),  # hourly data: nothing to coarsen
        (45.0, 64, 6.0, 60.0),  # a step that does not divide the hour
        (15.0, 20, 6.0, 60.0),  # the horizon ends inside the fine hours
        (15.0, 140, 168.0, 60.0),  # the fine hours cover the horizon: off
        (15.0, 140, float("nan"), 60.0),
        (float("inf"), 140, 6.0, 60.0),
        (15.0, 140, 6.0, -60.0),
    ],
)
def test_a_grid_that_changes_nothing_or_makes_no_sense_is_one_step_a_slot(
    step: float, horizon: int, fine_hours: float, far: float
) -> None:
    assert far_grid(START.timestamp(), step, horizon, fine_hours, far) == []


@settings(max_examples=25, deadline=None)
@given(
    st.integers(min_value=0, max_value=2**32 - 1),
    st.integers(min_value=0, max_value=23),
    st.floats(min_value=0.1, max_value=0.95),
    st.floats(min_value=0.0, max_value=12.0),
)
def test_hourly_far_slots_cost_what_the_quarter_hours_cost_where_the_hours_are_flat(
    seed: int, hour: int, soc: float, fine_hours: float
) -> None:
    problem = _quarter_problem(START + timedelta(hours=hour), 36, seed, soc, flat_hours=True)
    steps = far_grid(problem.start.timestamp(), 15.0, problem.horizon, fine_hours)
    assert steps and len(steps) < problem.horizon
    fine, coarse = solve(problem), solve(coarse_problem(problem, steps))
    assert fine.status == coarse.status == "optimal"
    assert fine.cost is not None and coarse.cost is not None
    assert coarse.cost == pytest.approx(fine.cost, rel=1e-7, abs=1e-7)
    spread = fine_solution(coarse, steps)
    assert len(spread.battery_charge_kw) == problem.horizon and len(spread.soc) == problem.horizon + 1
    # spread back over the steps, the coarse plan is a plan of the fine problem, at its cost
    assert recompute_cost(problem, spread) == pytest.approx(coarse.cost, rel=1e-9, abs=1e-9)
    e = np.asarray(spread.soc) * problem.battery.capacity_kwh
    flows = 0.25 * (0.95 * np.asarray(spread.battery_charge_kw) - np.asarray(spread.battery_discharge_kw) / 0.95)
    assert np.diff(e) == pytest.approx(flows, abs=1e-9)
    lo, hi = problem.battery.soc_min - 1e-9, problem.battery.soc_max + 1e-9
    assert all(lo <= s <= hi for s in spread.soc[1:])


def test_a_coarse_slot_averages_its_steps_and_the_near_hours_stay_as_they_are() -> None:
    problem = _quarter_problem(START + timedelta(hours=9, minutes=30), 30, 7, 0.5, flat_hours=False)
    steps = far_grid(problem.start.timestamp(), 15.0, problem.horizon, 2.0)
    coarse = coarse_problem(problem, steps)
    fine = steps.count(1)
    assert fine == 10  # 09:30 + 2 h = 11:30, to the next clock hour: 12:00
    assert coarse.load_kw[:fine] == problem.load_kw[:fine]
    assert coarse.import_price[fine] == pytest.approx(float(np.mean(problem.import_price[fine : fine + 4])))
    assert coarse.slot_hours()[fine] == 1.0
    assert coarse_slots(fine + 1, steps) == fine + 1  # a night shared into the first hourly slot takes it all
    assert coarse_slots(fine, steps) == fine
    assert coarse_slots(10_000, steps) == len(steps)


def test_a_scenario_ratio_is_weighted_by_the_pv_it_scales() -> None:
    ratio = np.array([0.5, 0.5, 1.0, 1.0, 2.0])
    pv = np.array([0.0, 0.0, 1.0, 3.0, 0.0])
    assert weighted_ratio(ratio, pv, [2, 2, 1]).tolist() == [0.5, 1.0, 2.0]
    assert group_mean([1.0, 3.0, 5.0], [2, 1]).tolist() == [2.0, 5.0]


def test_the_two_stage_plan_on_a_far_grid_fades_its_scenarios_by_each_slot_s_start() -> None:
    problem = _quarter_problem(START + timedelta(hours=4), 30, 11, 0.3, flat_hours=False)
    steps = far_grid(problem.start.timestamp(), 15.0, problem.horizon, 3.0)
    coarse = coarse_problem(problem, steps)
    dark, _, bright = scenario_problems(coarse, (0.5, 1.5), (1.0, 1.0))
    # the first slot is now (no spread), an hourly slot 20 hours ahead has nearly all of it
    assert dark.pv_kw[0] == coarse.pv_kw[0]
    far = len(steps) - 5
    if coarse.pv_kw[far] > 0.0:
        assert dark.pv_kw[far] / coarse.pv_kw[far] == pytest.approx(0.5, abs=0.01)
        assert bright.pv_kw[far] / coarse.pv_kw[far] == pytest.approx(1.5, abs=0.01)
    plan = solve_two_stage(coarse, (0.5, 1.5), (1.0, 1.0), coarse_slots(4, steps))
    assert plan is not None and plan.status == "optimal"
    assert len(fine_solution(plan, steps).battery_charge_kw) == problem.horizon


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1), st.integers(min_value=0, max_value=23))
def test_a_warm_start_across_re_plans_on_far_grids_gives_the_cold_optimum(seed: int, hour: int) -> None:
    """Hourly re-plans of 15-minute data, each on its own far grid (the fine hours move with the plan): the
    basis is carried over by slot time, where an old hourly slot now lies under four quarter-hours."""
    trace = _quarter_problem(START + timedelta(hours=hour), 60, seed, 0.5, flat_hours=False)
    rng = np.random.default_rng(seed)
    warm = WarmStart()
    for i in range(6):
        k, horizon = 4 * i, 4 * 30 - 4 * i
        start = trace.start + timedelta(minutes=15 * k)
        sl = slice(k, k + horizon)
        problem = msgspec.structs.replace(
            trace,
            start=start,
            import_price=trace.import_price[sl],
            export_price=trace.export_price[sl],
            load_kw=trace.load_kw[sl],
            pv_kw=trace.pv_kw[sl],
            battery=bench_battery(float(rng.uniform(0.1, 0.95))),
        )
        on_grid = coarse_problem(problem, far_grid(start.timestamp(), 15.0, horizon, 4.0))
        cold, hot = solve(on_grid), solve(on_grid, warm=warm)
        assert hot.status == cold.status == "optimal"
        assert hot.cost is not None and cold.cost is not None
        assert hot.cost == pytest.approx(cold.cost, rel=1e-9, abs=1e-9)
    assert (warm.stats.cold, warm.stats.refused) == (1, 0)
    assert warm.stats.shifted + warm.stats.same == 5


def test_a_demand_charge_s_reserve_on_a_coarse_slot_is_the_most_its_steps_keep() -> None:
    problem = _quarter_problem(START, 12, 3, 0.5, flat_hours=False)
    reserve = [0.0] * 40 + [1.0, 2.0, 0.5, 0.0] + [0.0] * 4
    problem = msgspec.structs.replace(problem, demand_charge=DemandCharge(5.0, 2.0, reserve))
    steps = far_grid(problem.start.timestamp(), 15.0, problem.horizon, 1.0)
    coarse = coarse_problem(problem, steps)
    assert coarse.demand_charge is not None
    assert max(coarse.demand_charge.reserve_kwh) == 2.0
    assert solve(coarse).status == "optimal"


def test_a_problem_with_an_ev_session_or_already_on_a_grid_is_refused() -> None:
    problem = _quarter_problem(START, 12, 3, 0.5, flat_hours=False)
    steps = far_grid(problem.start.timestamp(), 15.0, problem.horizon, 1.0)
    ev = Ev(
        capacity_kwh=40.0,
        soc_initial=0.2,
        soc_target=0.8,
        arrival_slot=0,
        departure_slot=20,
        max_charge_kw=7.0,
        efficiency=0.9,
    )
    with pytest.raises(ValueError, match="without EV"):
        coarse_problem(msgspec.structs.replace(problem, ev=ev), steps)
    with pytest.raises(ValueError, match="without EV"):
        coarse_problem(coarse_problem(problem, steps), steps)


def _problem_json(problem: Problem, **changes: object) -> str:
    data = json.loads(msgspec.json.encode(problem))
    data.update(changes)
    return json.dumps(data)


@pytest.mark.parametrize(
    ("slot_steps", "message"),
    [
        ([1, 2], "slot_steps: length 2 != T=48"),
        ([0] * 48, "slot_steps"),  # a slot of no steps
        ([97] * 48, "at most a day"),  # 97 quarter-hours
        ([1.5] * 48, "slot_steps"),  # not a whole number of steps
    ],
)
def test_slot_steps_that_do_not_fit_the_problem_are_a_clear_error(slot_steps: list[float], message: str) -> None:
    problem = _quarter_problem(START, 12, 3, 0.5, flat_hours=False)
    answer = solve_json(_problem_json(problem, slot_steps=slot_steps))
    assert answer.status == "error"
    assert answer.message is not None and message in answer.message


def test_slot_steps_arrive_over_json_and_each_slot_costs_its_own_length() -> None:
    problem = _quarter_problem(START, 12, 3, 0.5, flat_hours=False)
    steps = far_grid(problem.start.timestamp(), 15.0, problem.horizon, 2.0)
    coarse = coarse_problem(problem, steps)
    validate_problem(coarse)
    with pytest.raises(ProblemError, match="slot_steps"):
        validate_problem(msgspec.structs.replace(coarse, slot_steps=steps[:-1]))
    answer = solve_json(msgspec.json.encode(coarse))
    assert answer.status == "optimal" and answer.cost is not None
    dt = np.asarray(coarse.slot_hours())
    energy = float(np.sum(dt * (np.asarray(coarse.import_price) * answer.grid_import_kw)))
    energy -= float(np.sum(dt * np.asarray(coarse.export_price) * answer.grid_export_kw))
    wear = 0.02 * float(np.sum(dt * (np.asarray(answer.battery_charge_kw) + answer.battery_discharge_kw)))
    assert answer.cost == pytest.approx(energy + wear, rel=1e-9, abs=1e-9)
