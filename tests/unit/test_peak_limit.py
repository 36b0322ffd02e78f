"""A capacity (demand) charge: each plan slot carries the billing month's peak so far as its import limit.

Fixture for the backtest checks: the first days of `bench/data/ausgrid_c12_be_2023.csv` (a real measured
household, Ausgrid Solar home electricity data customer 12, under real ENTSO-E BE 2023 day-ahead prices;
bench/data/README.md), priced by `bench/data/tariff_be_2023_capacity.json` (illustrative 4 EUR/kW per month).
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud import backtest, peak_limit, planner
from cloud.assets import decode_assets
from cloud.backtest import Config, Edge, Planner, Traces, billing_months, read_traces, rolling_flows, settle
from cloud.execution import slot_intent
from cloud.optimizer import solve
from cloud.optimizer_io import Battery, DemandCharge, Grid, Problem, ProblemError, decode_problem, validate_problem
from cloud.optimizer_model import energy_bounds
from cloud.peak_limit import (
    NO_TARGET,
    PEAK_TOLERANCE_W,
    SHAVING_SHARE,
    PeakTarget,
    month_target,
    peak_import_limit_w,
    shaving_level_kw,
    shaving_reserve_kwh,
)
from cloud.tariffs import CapacityCharge, Energy, Tariff, TariffError, decode_tariff, demand_charge
from zapd.model import Plan, PlanSlot

DATA = Path(__file__).resolve().parents[2] / "bench" / "data"
TRACE = DATA / "ausgrid_c12_be_2023.csv"
TARIFF = DATA / "tariff_be_2023_capacity.json"
SITE = Config(tz="Australia/Sydney", lat=-33.87, lon=151.21, pv_kwp=1.04, tilt_deg=20.0, azimuth_deg=0.0)


def test_the_limit_is_the_higher_of_peak_and_plan_in_whole_watts_within_the_connection() -> None:
    assert peak_import_limit_w(3.04, 1.2, 17_000.0) == 3040.0  # the peak so far decides: no slack above it
    assert peak_import_limit_w(3.0, 4.51, 17_000.0) == 4510.0  # the plan chose a higher peak: it may import it
    assert peak_import_limit_w(2.8, 2.8 + 1e-9, 17_000.0) == 2800.0  # solver noise above the peak is the peak
    assert peak_import_limit_w(3.0, 0.0, 2_500.0) == 2500.0  # never above the connection
    assert peak_import_limit_w(0.0, 0.0, 17_000.0) == 0.0  # nothing imported yet, nothing planned
    assert peak_import_limit_w(math.nan, 1.0, 17_000.0) == 17_000.0  # unreadable: no tightening


@given(
    st.floats(0.0, 1e4, allow_nan=False),
    st.floats(0.0, 1e4, allow_nan=False),
    st.floats(0.0, 1e7, allow_nan=False),
)
def test_the_limit_never_exceeds_the_connection_nor_cuts_the_plan(peak: float, plan: float, conn: float) -> None:
    limit = peak_import_limit_w(peak, plan, conn)
    assert limit <= conn
    tol = PEAK_TOLERANCE_W
    assert limit >= min(conn, plan * 1000.0 - tol) and limit >= min(conn, peak * 1000.0 - tol)
    assert limit - max(peak, plan) * 1000.0 <= 1.0 or limit == conn  # at most a watt above what is needed


# --- the month-ahead target ---------------------------------------------------------------------------------


def test_the_shaving_level_is_what_the_battery_could_have_held() -> None:
    """Worked example, hourly slots, lossless: 1 kWh of battery (full at the start, 5 kW) against a 3 kW hour
    between 1 kW hours holds 2 kW; a second 3 kW hour right after needs 1.5 kW of level (0.5 kWh refilled?
    no: no room under the level between them), so the level is where 2 x (3 - L) = 1 kWh: 2.5 kW."""
    one = np.array([1.0, 1.0, 3.0, 1.0])
    assert shaving_level_kw(one, 1.0, 1.0, 5.0, 5.0, 1.0, 1.0) == pytest.approx(2.0, abs=0.011)
    two = np.array([1.0, 3.0, 3.0, 1.0])
    assert shaving_level_kw(two, 1.0, 1.0, 5.0, 5.0, 1.0, 1.0) == pytest.approx(2.5, abs=0.011)
    # power-limited: a 1 kW battery cannot bring a 3 kW hour under 2 kW, however much it stores
    assert shaving_level_kw(one, 1.0, 100.0, 1.0, 1.0, 1.0, 1.0) == pytest.approx(2.0, abs=0.011)
    assert shaving_level_kw(np.array([-1.0, 0.0]), 1.0, 1.0, 5.0, 5.0, 1.0, 1.0) == 0.0  # no import to shave
    assert shaving_level_kw(np.array([np.nan]), 1.0, 1.0, 5.0, 5.0, 1.0, 1.0) == 0.0  # no history


def test_the_reserve_is_the_excursion_energy_kept_in_the_hours_before_it_began(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hourly slots, 4 a 'day': an excursion of 1 + 2 kWh above 1 kW starting at phase 2 needs 3 kWh / 0.9
    kept at the end of the RESERVE_AHEAD_H (here 3) slots before it (phases 1, 0 and 3 of the day before),
    not at the end of the slot it begins in."""
    monkeypatch.setattr(peak_limit, "RESERVE_AHEAD_H", 3.0)
    net = np.array([0.5, 0.5, 2.0, 3.0, 0.5, 0.5, 0.5, 0.5])
    reserve = shaving_reserve_kwh(net, 1.0, 1.0, 0.9, 4)
    assert reserve == pytest.approx([3.0 / 0.9, 3.0 / 0.9, 0.0, 3.0 / 0.9])
    week = [3.0 / 0.9, 3.0 / 0.9] + [0.0] * 5 + [3.0 / 0.9]  # 8 slots a "day": phase -1 is phase 7
    assert shaving_reserve_kwh(net, 1.0, 1.0, 0.9, 8) == pytest.approx(week)
    monkeypatch.setattr(peak_limit, "RESERVE_AHEAD_H", 1.0)  # only the hour before
    assert shaving_reserve_kwh(net, 1.0, 1.0, 0.9, 4) == pytest.approx([0.0, 3.0 / 0.9, 0.0, 0.0])
    monkeypatch.undo()
    target = month_target(net, 1.0, 100.0, 5.0, 5.0, 1.0, 1.0, 4, phase0=-8)
    assert target.level_kw <= 1.0  # 50 kWh of shaving hold anything here
    assert target.reserve_for(0, 3) == pytest.approx(list(shaving_reserve_kwh(net, 1.0, target.level_kw, 1.0, 4)[:3]))
    capped = month_target(net, 1.0, 0.2, 5.0, 5.0, 1.0, 1.0, 4)
    assert max(capped.reserve_kwh) <= SHAVING_SHARE * 0.2 + 1e-12  # never more than the share it assumes
    assert month_target(np.zeros(0), 1.0, 10.0, 5.0, 5.0, 1.0, 1.0, 4) == NO_TARGET


@pytest.fixture(scope="module")
def be_days() -> tuple[Traces, Config]:
    tariff = decode_tariff(TARIFF.read_bytes())
    assert tariff.capacity is not None and tariff.capacity.price_per_kw == 4.0
    tr = read_traces(str(TRACE), tariff=tariff)
    return tr, replace(SITE, capacity_per_kw=4.0, capacity_tz=tariff.timezone)


def test_backtest_plan_slots_carry_the_paid_level_as_import_limit(be_days: tuple[Traces, Config]) -> None:
    """The limit is the peak so far or the month's target, whichever is higher, or the plan's own higher
    import; never above the connection, never below what the plan imports; the plan keeps the reserve."""
    tr, cfg = be_days
    tr = tr.head(3 * 48)
    k = 2 * 48 + 10
    for peak, target in ((2.34, NO_TARGET), (0.8, PeakTarget(level_kw=1.5, reserve_kwh=(2.0,) * 48))):
        planned = Planner(tr, cfg).plan(k, 0.5, 8, peak, target)
        assert planned is not None
        plan, solution, _, _ = planned
        level_w = max(peak, target.level_kw) * 1000.0
        for slot, imp in zip(plan.slots, solution.grid_import_kw, strict=False):
            limit = slot.intent.grid_import_limit_w
            assert limit is not None and limit <= cfg.grid_import_kw * 1000.0
            assert limit >= level_w - PEAK_TOLERANCE_W and limit >= imp * 1000.0 - PEAK_TOLERANCE_W
            assert limit == math.ceil(max(level_w, imp * 1000.0) - PEAK_TOLERANCE_W)
        if target.reserve_kwh:  # from SoC 0.5 (5 kWh) the plan stays above the minimum plus the reserve
            floor = cfg.soc_min + target.reserve_kwh[0] / cfg.battery_kwh
            assert min(solution.soc[1:]) >= floor - 1e-6
    plain = Planner(tr, replace(cfg, capacity_per_kw=0.0)).plan(k, 0.5, 8, 2.34, PeakTarget(1.5, (2.0,) * 48))
    assert plain is not None
    assert all(s.intent.grid_import_limit_w is None for s in plain[0].slots)  # no capacity charge: no limit


def _monthly_peaks(tr: Traces, cfg: Config, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    _, index = np.unique(billing_months(tr, cfg.capacity_tz), return_inverse=True)
    peaks = np.zeros(int(index.max()) + 1)
    np.maximum.at(peaks, index, tr.load_kw - tr.pv_kw + c - d)
    return peaks


def test_the_limit_lowers_the_planners_peak_on_real_days(
    be_days: tuple[Traces, Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten real days (forecasts from the trace's own past): the edge holding the peak so far keeps the
    month's peak lower than the same plans executed with the connection's limit only (the old intents)."""
    tr, cfg = be_days
    tr = tr.head(10 * 48)
    c, d, _, _ = rolling_flows(tr, cfg)
    with_limit, cost = _monthly_peaks(tr, cfg, c, d), settle(tr, c, d, cfg.cycle_cost, "planner", cfg).cost
    monkeypatch.setattr(backtest, "peak_import_limit_w", lambda peak, imp, conn: conn)
    c0, d0, _, _ = rolling_flows(tr, cfg)
    without, cost0 = _monthly_peaks(tr, cfg, c0, d0), settle(tr, c0, d0, cfg.cycle_cost, "planner", cfg).cost
    # measured: peaks [0.5, 3.3] kW against [2.01, 3.54] kW (30 Jun - 9 Jul in Brussels), 34.26 against 41.17 EUR
    assert len(with_limit) == 2 and np.all(with_limit <= without + 1e-9), (with_limit, without)
    assert with_limit.sum() < without.sum() - 1.0, (with_limit, without)
    assert cost < cost0 - 3.0


def _one_slot_edge(load_kw: float, soc: float) -> tuple[Edge, Traces]:
    start = datetime(2023, 7, 3, 12, tzinfo=UTC)
    tr = Traces(start, timedelta(minutes=15), np.full(1, 0.3), np.full(1, 0.05), np.full(1, load_kw), np.zeros(1))
    edge = Edge(tr, replace(SITE, soc_initial=soc))
    return edge, tr


def _plan(tr: Traces, import_kw: float, charge_kw: float, limit_w: float) -> Plan:
    intent = slot_intent(import_kw, 0.0, charge_kw, 0.0, grid_import_limit_w=limit_w)  # keep_sign, the default
    end = tr.start + tr.step
    slot = PlanSlot(start=tr.start, end=end, intent=intent)
    return Plan(site_id="backtest", version=1, issued_at=tr.start, valid_until=end, slots=(slot,))


def test_the_edge_discharges_and_stops_charging_to_hold_the_limit() -> None:
    """zapd's own decision (controller + envelope, as the backtest runs it) keeps the site under the slot's limit."""
    edge, tr = _one_slot_edge(3.0, 0.5)  # plan: idle battery, 1 kW import; the house needs 3 kW
    battery_kw, _ = edge.step(0, _plan(tr, 1.0, 0.0, 1000.0))
    assert battery_kw == pytest.approx(-2.0)  # discharges the 2 kW above the limit
    edge, tr = _one_slot_edge(1.5, 0.5)  # plan: charge 2 kW from the grid at 2.5 kW import; the house needs 1.5 kW
    battery_kw, _ = edge.step(0, _plan(tr, 2.5, 2.0, 2500.0))
    assert battery_kw == pytest.approx(1.0)  # charges only what fits under the limit
    edge, tr = _one_slot_edge(3.0, SITE.soc_min)  # at the reserve: nothing to discharge, the import passes
    battery_kw, _ = edge.step(0, _plan(tr, 1.0, 0.0, 1000.0))
    assert battery_kw == pytest.approx(0.0)


# --- no capacity charge: exactly today's plans -----------------------------------------------------------------


@settings(max_examples=8, deadline=None)
@given(
    st.floats(0.0, 20.0, allow_nan=False),
    st.floats(0.0, 20.0, allow_nan=False),
    st.lists(st.floats(0.0, 9.0, allow_nan=False), min_size=1, max_size=48),
    st.integers(0, 40),
)
def test_without_a_capacity_charge_a_target_changes_nothing(
    be_days: tuple[Traces, Config], peak: float, level: float, reserve: list[float], k: int
) -> None:
    """A site whose tariff has no capacity charge gets today's plan whatever target or peak is passed: the
    same LP solution and no import limit (the connection's) in any slot."""
    tr, cfg = be_days
    tr = tr.head(3 * 48)
    plain_cfg = replace(cfg, capacity_per_kw=0.0)
    base = Planner(tr, plain_cfg).plan(48 + k, 0.5, 4)
    other = Planner(tr, plain_cfg).plan(48 + k, 0.5, 4, peak, PeakTarget(level, tuple(reserve)))
    assert base is not None and other is not None
    assert other[0].slots == base[0].slots
    assert other[1].battery_charge_kw == base[1].battery_charge_kw
    assert other[1].grid_import_kw == base[1].grid_import_kw
    assert all(s.intent.grid_import_limit_w is None for s in other[0].slots)


@given(st.floats(0.0, 50.0, allow_nan=False), st.lists(st.floats(0.0, 50.0, allow_nan=False), max_size=8))
def test_a_tariff_without_capacity_gets_no_demand_charge_and_no_target(peak: float, reserve: list[float]) -> None:
    """The planner worker's side: no capacity charge (absent or 0 EUR/kW), no demand term, no target (its
    history is never read: no database is passed)."""
    for capacity in (None, CapacityCharge(price_per_kw=0.0)):
        tariff = Tariff(energy=Energy(kind="fixed", price=0.3), capacity=capacity)
        assert demand_charge(tariff, peak, reserve) is None
        assets = decode_assets(
            {
                "location": {"lat": 52.1, "lon": 5.18},
                "grid": {"max_import_kw": 17.0, "max_export_kw": 10.0},
                "battery": {"capacity_kwh": 10.0, "max_charge_kw": 5.0, "max_discharge_kw": 5.0},
            }
        )
        start = datetime(2026, 6, 1, tzinfo=UTC)
        assert asyncio.run(planner._month_target(None, "s", assets, tariff, start)) is NO_TARGET  # type: ignore[arg-type]


def _problem_args() -> dict[str, Any]:
    """Four hourly slots, an empty battery (at its minimum), 0.5 kW of load, no PV."""
    battery = Battery(
        capacity_kwh=10.0,
        soc_initial=0.1,
        soc_min=0.1,
        soc_max=0.95,
        max_charge_kw=5.0,
        max_discharge_kw=5.0,
        charge_efficiency=1.0,
        discharge_efficiency=1.0,
        cycle_cost_per_kwh=0.0,
    )
    return {
        "start": datetime(2026, 6, 1, tzinfo=UTC),
        "step_minutes": 60.0,
        "import_price": [0.3] * 4,
        "export_price": [0.1] * 4,
        "load_kw": [0.5] * 4,
        "pv_kw": [0.0] * 4,
        "battery": battery,
        "grid": Grid(max_import_kw=17.0, max_export_kw=10.0),
    }


def test_the_reserve_refills_only_under_the_paid_level() -> None:
    """An empty battery below its reserve refills it from import under the level already paid for, not at
    full power (which would set the month's new peak): stored-energy floors of the LP."""
    args = _problem_args()
    dc = DemandCharge(price_per_kw=4.0, peak_already_kw=1.5, reserve_kwh=[3.0] * 4)
    lb, _ = energy_bounds(Problem(**args, demand_charge=dc), np.full(4, 0.5), np.zeros(4))
    assert lb == pytest.approx([2.0, 3.0, 4.0, 4.0])  # 1 kWh an hour (1.5 kW paid - 0.5 kW load) up to 1 + 3
    plain = DemandCharge(price_per_kw=4.0, peak_already_kw=1.5)
    lb0, _ = energy_bounds(Problem(**args, demand_charge=plain), np.full(4, 0.5), np.zeros(4))
    lb1, _ = energy_bounds(Problem(**args), np.full(4, 0.5), np.zeros(4))
    assert lb0 == pytest.approx(lb1)  # no reserve: the bounds of a problem without a capacity charge
    solution = solve(Problem(**args, demand_charge=dc))
    assert solution.status == "optimal" and max(solution.grid_import_kw) <= 1.5 + 1e-6


def test_a_problem_with_a_bad_reserve_is_refused_and_prices_are_still_checked() -> None:
    """The reserve is one finite, non-negative kWh per slot or none; the per-slot arrays' finiteness check
    still runs beside it."""
    base = {
        "start": "2026-06-01T00:00:00Z",
        "step_minutes": 60,
        "import_price": [0.3, 0.3],
        "export_price": [0.1, 0.1],
        "load_kw": [0.5, 0.5],
        "pv_kw": [0.0, 0.0],
        "battery": {
            "capacity_kwh": 10,
            "soc_initial": 0.5,
            "soc_min": 0.1,
            "soc_max": 0.9,
            "max_charge_kw": 5,
            "max_discharge_kw": 5,
            "charge_efficiency": 0.95,
            "discharge_efficiency": 0.95,
            "cycle_cost_per_kwh": 0,
        },
        "grid": {"max_import_kw": 17, "max_export_kw": 10},
    }
    ok = {**base, "demand_charge": {"price_per_kw": 4.0, "reserve_kwh": [1.0, 2.0]}}
    assert decode_problem(json.dumps(ok)).demand_charge is not None
    for reserve in ([1.0], [1.0, 2.0, 3.0]):
        bad = {**base, "demand_charge": {"price_per_kw": 4.0, "reserve_kwh": reserve}}
        with pytest.raises(ProblemError, match="reserve_kwh"):
            decode_problem(json.dumps(bad))
    with pytest.raises(ProblemError, match="reserve_kwh"):
        validate_problem(Problem(**{**_problem_args(), "demand_charge": DemandCharge(4.0, 0.0, [math.nan] * 4)}))
    with pytest.raises(ProblemError, match="import_price"):
        validate_problem(Problem(**{**_problem_args(), "import_price": [math.nan, 0.3, 0.3, 0.3]}))


# --- a billed minimum peak (Flanders: 2.5 kW a month) ----------------------------------------------------------


def test_a_billed_minimum_peak_is_settled_planned_and_targeted() -> None:
    """`capacity.min_kw`: a month is billed at least that peak (settlement), import up to it is paid for (the
    LP's level), and the month's target is never below it (shaving under it earns nothing)."""
    start = datetime(2023, 1, 31, 22, tzinfo=UTC)  # 4 hourly slots across a month end (UTC): 2 in each
    tr = Traces(start, timedelta(hours=1), np.full(4, 0.3), np.zeros(4), np.array([1.0, 3.0, 1.0, 2.0]), np.zeros(4))
    cfg = replace(Config(), capacity_per_kw=4.0, capacity_min_kw=2.5)
    assert backtest.capacity_cost(tr, tr.load_kw, cfg) == pytest.approx(4.0 * (3.0 + 2.5))  # Feb: 2 kW → 2.5
    dc = backtest._demand(cfg, 1.0)
    assert dc is not None and dc.peak_already_kw == 2.5
    tariff = decode_tariff(
        b'{"energy": {"kind": "fixed", "price": 0.3}, "capacity": {"price_per_kw": 4, "min_kw": 2.5}}'
    )
    dc2 = demand_charge(tariff, 1.0)
    assert dc2 is not None and dc2.peak_already_kw == 2.5
    net = np.array([0.5, 0.5, 2.0, 3.0, 0.5, 0.5, 0.5, 0.5])
    assert month_target(net, 1.0, 100.0, 5.0, 5.0, 1.0, 1.0, 4).level_kw < 2.5
    floored = month_target(net, 1.0, 100.0, 5.0, 5.0, 1.0, 1.0, 4, floor_kw=2.5)
    assert floored.level_kw == 2.5 and max(floored.reserve_kwh) == pytest.approx(0.5)  # only the 3 kW hour
    with pytest.raises(TariffError, match="min_kw"):
        decode_tariff(b'{"energy": {"kind": "fixed", "price": 0.3}, "capacity": {"price_per_kw": 4, "min_kw": 5000}}')
