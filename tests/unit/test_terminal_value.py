"""The value of energy left at the horizon's end (issue 11): `Battery.terminal_value_per_kwh` in the optimizer,
`cloud.forecast_price.terminal_value` for how much, and the backtest planner passing it.

Without it a plan that ends where the published prices end (local midnight, before tomorrow's prices are out)
treats whatever is still stored at midnight as worthless and sells it at the evening's export price."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from cloud.backtest import Config, Planner, Traces
from cloud.forecast_price import TerminalBasis, terminal_value
from cloud.optimizer import solve
from cloud.optimizer_io import Battery, Grid, Problem, ProblemError, decode_problem
from tests.plan_problems import bench_battery


def _problem(value: float) -> Problem:
    """4 hourly slots, no load or PV, a battery at 90 %: the only thing to do is sell at 0.10 or keep."""
    return Problem(
        start=datetime(2026, 1, 5, 20, tzinfo=UTC),
        step_minutes=60.0,
        import_price=[0.30] * 4,
        export_price=[0.10] * 4,
        load_kw=[0.0] * 4,
        pv_kw=[0.0] * 4,
        battery=bench_battery(0.9, terminal_value_per_kwh=value),
        grid=Grid(max_import_kw=10.0, max_export_kw=10.0),
    )


def test_leftover_energy_without_a_value_is_sold_with_one_kept() -> None:
    # Stored energy sells at 0.10 * 0.95 - 0.02 per kWh taken out: worth it when the end values it at nothing.
    sold = solve(_problem(0.0))
    assert sold.status == "optimal"
    assert sum(sold.grid_export_kw) == pytest.approx(8.0 * 0.95, abs=1e-6)  # down to the 10 % reserve
    assert sold.soc[-1] == pytest.approx(0.1, abs=1e-6)
    # Valued at 0.25 / kWh at the end (more than a sale brings), it stays in the battery.
    kept = solve(_problem(0.25))
    assert kept.status == "optimal"
    assert sum(kept.grid_export_kw) == pytest.approx(0.0, abs=1e-6)
    assert kept.soc[-1] == pytest.approx(0.9, abs=1e-6)
    # The reported cost is the contract cost of the flows (the value is a planning term, not money paid).
    assert kept.cost == pytest.approx(0.0, abs=1e-9)


def test_a_value_never_makes_the_plan_buy_energy_to_hold() -> None:
    # A value below every import price (as terminal_value gives) buys nothing for the end.
    empty = _problem(0.0)
    low = Battery(**{**{f: getattr(empty.battery, f) for f in empty.battery.__struct_fields__}, "soc_initial": 0.1})
    p = Problem(**{**{f: getattr(empty, f) for f in empty.__struct_fields__}, "battery": low})
    value = terminal_value(np.asarray(p.import_price), 4, 0.95, 0.02)
    low_valued = Battery(**{**{f: getattr(low, f) for f in low.__struct_fields__}, "terminal_value_per_kwh": value})
    plan = solve(Problem(**{**{f: getattr(p, f) for f in p.__struct_fields__}, "battery": low_valued}))
    assert sum(plan.grid_import_kw) == pytest.approx(0.0, abs=1e-6)


def test_the_value_is_the_cheapest_import_of_the_last_day_through_the_discharge() -> None:
    spd = 4
    price = np.array([0.05, 0.40, 0.40, 0.40, 0.35, 0.22, 0.30, 0.41])  # two days; the first day's 0.05 is older
    assert terminal_value(price, spd, 0.95, 0.02) == pytest.approx(0.22 * 0.95 - 0.02)
    assert terminal_value(price[:3], spd, 0.95, 0.02) == pytest.approx(0.05 * 0.95 - 0.02)  # shorter than a day
    assert terminal_value(np.array([0.01, 0.02]), spd, 0.95, 0.02) == 0.0  # never negative
    assert terminal_value(np.array([]), spd, 0.95, 0.02) == 0.0


def test_the_wire_format_bounds_the_value() -> None:
    body = _problem(0.0)
    import msgspec

    raw = msgspec.json.decode(msgspec.json.encode(body))
    raw["battery"]["terminal_value_per_kwh"] = -0.1
    with pytest.raises(ProblemError):
        decode_problem(msgspec.json.encode(raw))
    raw["battery"]["terminal_value_per_kwh"] = 0.2
    assert decode_problem(msgspec.json.encode(raw)).battery.terminal_value_per_kwh == 0.2


def test_the_backtest_plan_keeps_energy_past_the_published_prices() -> None:
    """A plan made at 10:00 local sees prices to midnight only. With a full battery and an evening export price
    below what tomorrow's cheapest import would cost, it keeps the energy (the default) instead of selling it."""
    zone = "Europe/Amsterdam"
    start = datetime(2026, 1, 5, 9, tzinfo=UTC)  # 10:00 local; prices for tomorrow appear at 13:00
    n = 48
    tr = Traces(
        start,
        timedelta(hours=1),
        import_price=np.full(n, 0.30),
        export_price=np.full(n, 0.12),
        load_kw=np.full(n, 0.0),
        pv_kw=np.zeros(n),
    )
    plans = {}
    for valued in (False, True):
        cfg = Config(tz=zone, pv_kwp=0.0, soc_initial=0.9, terminal_value=valued)
        planned = Planner(tr, cfg).plan(0, 0.9, 1)
        assert planned is not None
        plans[valued] = planned[1]
        assert len(plans[valued].grid_export_kw) == 14  # 10:00 .. midnight
    # valued at nothing, the battery is emptied by midnight and what the house does not need is sold
    assert plans[False].soc[-1] == pytest.approx(0.1, abs=1e-6)
    assert sum(plans[False].grid_export_kw) > 0.1
    # valued at tomorrow's cheapest import, nothing is sold at 0.12 and energy is left for tomorrow
    assert sum(plans[True].grid_export_kw) == pytest.approx(0.0, abs=1e-6)
    assert plans[True].soc[-1] > plans[False].soc[-1] + 0.05
    assert Config().terminal_value  # on by default


def test_the_bases_lie_between_a_discharge_and_a_buy_back() -> None:
    """The value of a stored kWh lies between covering load at the cheapest price (p x eta - wear) and saving a
    buy-back at it ((p + wear) / eta): PRICE is p, RECHARGE p / eta; the numbers follow from the prices alone."""
    price = np.array([0.35, 0.22, 0.30, 0.41])
    low = terminal_value(price, 4, 0.95, 0.02)
    mid = terminal_value(price, 4, 0.95, 0.02, basis=TerminalBasis.PRICE)
    high = terminal_value(price, 4, 0.95, 0.02, basis=TerminalBasis.RECHARGE, charge_efficiency=0.95)
    assert (low, mid, high) == pytest.approx((0.22 * 0.95 - 0.02, 0.22, 0.22 / 0.95))
    assert low < mid < high < (0.22 + 0.02) / 0.95
    assert terminal_value(np.array([-0.05, 0.1]), 4, 0.95, 0.02, basis=TerminalBasis.RECHARGE) == 0.0


def test_a_cheaper_next_day_lowers_the_value_a_dearer_one_does_not_raise_it() -> None:
    price = np.array([0.35, 0.22, 0.30, 0.41])
    base = terminal_value(price, 4, 0.95, 0.02, basis=TerminalBasis.PRICE)
    cheaper = terminal_value(price, 4, 0.95, 0.02, basis=TerminalBasis.PRICE, next_day=np.array([0.3, 0.12]))
    dearer = terminal_value(price, 4, 0.95, 0.02, basis=TerminalBasis.PRICE, next_day=np.array([0.3, 0.5]))
    assert (base, cheaper, dearer) == pytest.approx((0.22, 0.12, 0.22))


@pytest.mark.parametrize("basis", list(TerminalBasis))
def test_no_basis_makes_the_plan_buy_energy_to_hold(basis: TerminalBasis) -> None:
    # An empty battery, one flat import price: buying a kWh to hold costs (0.30 + wear) / eta, more than any basis.
    empty = _problem(0.0)
    value = terminal_value(np.asarray(empty.import_price), 4, 0.95, 0.02, basis=basis, charge_efficiency=0.95)
    fields = {f: getattr(empty.battery, f) for f in empty.battery.__struct_fields__}
    battery = Battery(**{**fields, "soc_initial": 0.1, "terminal_value_per_kwh": value})
    plan = solve(Problem(**{**{f: getattr(empty, f) for f in empty.__struct_fields__}, "battery": battery}))
    assert plan.status == "optimal"
    assert sum(plan.grid_import_kw) == pytest.approx(0.0, abs=1e-6)
    assert plan.soc[-1] == pytest.approx(0.1, abs=1e-6)


def test_the_backtest_planner_takes_the_next_day_from_the_price_forecast_only() -> None:
    """At 10:00 local the horizon ends at midnight; the day after is forecast from the published prices (today's,
    and earlier days'), never read from the trace: a trace whose real tomorrow is cheap changes nothing."""
    zone = "Europe/Amsterdam"
    start = datetime(2026, 1, 5, 9, tzinfo=UTC)  # 10:00 local
    n = 72
    price = np.full(n, 0.30)
    price[5] = 0.25  # 14:00 today, the cheapest published
    cheap_tomorrow = price.copy()
    cheap_tomorrow[20:] = 0.05  # the real tomorrow (not yet published at 10:00)
    values = []
    for imp in (price, cheap_tomorrow):
        tr = Traces(start, timedelta(hours=1), imp, np.full(n, 0.1), np.zeros(n), np.zeros(n))
        cfg = Config(tz=zone, pv_kwp=0.0, terminal_basis=TerminalBasis.PRICE, terminal_next_day=True)
        planner = Planner(tr, cfg)
        known = 14  # 10:00 .. midnight
        values.append(planner._terminal_value(imp[:known], 0, known))
    # the forecast of tomorrow repeats today's shape (0.25 at 14:00 is today's cheapest): the value is 0.25
    assert values == pytest.approx([0.25, 0.25])
