"""Two-stage planning over scenarios (cloud/optimizer_scenarios.py): one decision for the shared slots, the
weighted cost, and the cases it leaves to the exact deterministic optimizer."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.optimizer import solve
from cloud.optimizer_io import DemandCharge, Problem
from cloud.optimizer_model import build_model, site_data, with_flows
from cloud.optimizer_scenarios import SWANSON_WEIGHTS, solve_scenarios
from tests.plan_problems import hour_problem


def _problem(pv: list[float], load: list[float], export: float = 0.05) -> Problem:
    return hour_problem(pv, load, export_price=export)


def test_identical_scenarios_give_the_deterministic_plan() -> None:
    p = _problem([3.0, 4.0, 4.0, 0.0, 0.0], [0.5, 0.5, 0.5, 2.0, 2.0])
    one = solve(p)
    three = solve_scenarios([p, p, p], SWANSON_WEIGHTS, 1)
    assert three is not None
    assert three.cost == pytest.approx(one.cost, abs=1e-9)
    # (flat export prices: equal-cost plans may differ in when they store; the cost may not)
    assert three.soc[-1] == pytest.approx(one.soc[-1], abs=1e-9)


def test_a_dark_scenario_makes_the_shared_slot_store_surplus_now() -> None:
    """The forecast says slot 1 brings enough sun to cover the evening (4 kWh needed), so the point plan may
    sell slot 0's surplus; if slot 1 may be dark, storing slot 0's surplus now is the hedge: the two-stage plan
    charges in slot 0 and every scenario shares that charge."""
    load = [0.0, 0.0, 2.0, 2.0]
    point = _problem([3.0, 5.0, 0.0, 0.0], load, export=0.08)
    dark = _problem([3.0, 0.5, 0.0, 0.0], load, export=0.08)
    bright = _problem([3.0, 6.0, 0.0, 0.0], load, export=0.08)
    # cheaper to store in slot 1 in the point forecast: make slot 0's export a little dearer
    point = msgspec.structs.replace(point, export_price=[0.10, 0.08, 0.08, 0.08])
    dark = msgspec.structs.replace(dark, export_price=point.export_price)
    bright = msgspec.structs.replace(bright, export_price=point.export_price)
    alone = solve(point)
    assert alone.battery_charge_kw[0] == pytest.approx(0.0, abs=1e-9)  # the point plan sells now, stores later
    hedged = solve_scenarios([dark, point, bright], SWANSON_WEIGHTS, 1)
    assert hedged is not None
    assert hedged.battery_charge_kw[0] > 2.0
    # the reported plan is the point scenario's, with the shared first slot
    assert hedged.grid_export_kw[0] == pytest.approx(3.0 - hedged.battery_charge_kw[0], abs=1e-6)


def test_left_to_the_exact_optimizer_where_the_relaxation_could_differ() -> None:
    p = _problem([3.0, 0.0], [0.5, 1.0])
    negative = msgspec.structs.replace(p, import_price=[-0.05, 0.30])
    assert solve_scenarios([negative] * 3, SWANSON_WEIGHTS, 1) is None
    export_dearer = msgspec.structs.replace(p, export_price=[0.40, 0.05])
    assert solve_scenarios([export_dearer] * 3, SWANSON_WEIGHTS, 1) is None


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=1, max_value=30).flatmap(
        lambda n: st.tuples(
            *(
                st.lists(st.floats(min_value=0.0, max_value=12.0, allow_nan=False), min_size=n, max_size=n)
                for _ in range(4)
            ),
            st.floats(min_value=0.0, max_value=1.0),
        )
    )
)
def test_a_scenario_model_rebounded_from_the_first_is_the_model_built_afresh(
    flows: tuple[list[float], list[float], list[float], list[float], float],
) -> None:
    """The two-stage LP builds the first scenario's model and re-bounds it for the others (`with_flows`):
    that must be exactly what `build_model` gives for them, array by array, or the scenarios would be
    planned on other physics than the deterministic plan."""
    pv, load, pv2, load2, soc = flows
    first = msgspec.structs.replace(
        _problem(pv, load), battery=msgspec.structs.replace(_problem(pv, load).battery, soc_initial=soc)
    )
    other = msgspec.structs.replace(first, pv_kw=pv2, load_kw=load2)
    none = np.zeros(first.horizon, dtype=np.bool_)
    fresh = build_model(site_data(other), none, none, None)
    rebounded = with_flows(build_model(site_data(first), none, none, None), site_data(other))
    for name in ("col_cost", "col_lower", "col_upper", "row_lower", "row_upper", "a_start", "a_index", "a_value"):
        assert np.array_equal(getattr(fresh, name), getattr(rebounded, name)), name
    assert fresh.n_real == rebounded.n_real


def test_with_flows_refuses_a_model_with_more_than_the_plain_lp() -> None:
    problem = msgspec.structs.replace(
        _problem([1.0] * 4, [1.0] * 4), demand_charge=DemandCharge(price_per_kw=5.0, peak_already_kw=1.0)
    )
    none = np.zeros(4, dtype=np.bool_)
    data = site_data(problem)
    with pytest.raises(ValueError, match="plain LP"):
        with_flows(build_model(data, none, none, None), data)
