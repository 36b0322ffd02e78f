"""Load risk (issue 11, fifth pass): the house's own error persistence as a nowcast, and whole-day load
scenarios in the two-stage plan. Expected values are worked by hand or come from the generating process."""

from __future__ import annotations

import argparse
import dataclasses
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from cloud.backtest import Config, Planner, Traces
from cloud.backtest_config import add_arguments, config_from_args
from cloud.forecast_load import (
    error_persistence,
    forecast_load,
    forecast_load_nowcast,
    load_ratio_spread,
    newsvendor_load,
)

SPD = 24


def test_error_persistence_is_the_lag_one_autocorrelation_of_the_profile_error() -> None:
    """A weekly-periodic load plus AR(1) noise with coefficient 0.7 (the process the estimate should find),
    and the same with independent noise (nothing persists)."""
    rng = np.random.default_rng(7)
    n = 56 * SPD
    weekly = np.tile(1.0 + 0.5 * np.sin(np.arange(7 * SPD) / 5.0), 8)
    noise = np.zeros(n)
    for t in range(1, n):
        noise[t] = 0.7 * noise[t - 1] + rng.normal(0.0, 0.3)
    # the profile averages four past weeks, whose own noise makes the profile error a little less persistent
    assert error_persistence(weekly + noise, SPD) == pytest.approx(0.7, abs=0.08)
    assert error_persistence(weekly + rng.normal(0.0, 0.3, n), SPD) < 0.1
    assert error_persistence(weekly[: 10 * SPD], SPD) == 0.0  # under two weeks of errors: no persistence


def test_ar1_nowcast_adds_the_last_slots_error_fading_by_the_persistence() -> None:
    """Four weeks of 1 kW, then a car charging: the last slot measured 4 kW. The AR(1) nowcast says
    1 + 3 * 0.5 ** j for lead j = 1, 2, 3 (additive: a 3 kW session is 3 kW, not a ratio capped at 2)."""
    history = np.ones(28 * SPD)
    history[-1] = 4.0
    fc = forecast_load(history, 3, SPD, persistence=0.5)
    assert fc == pytest.approx([2.5, 1.75, 1.375])
    ratio = forecast_load(history, 3, SPD)  # the default: the last 2 h's ratio, capped at 2
    assert ratio[0] == pytest.approx(2.0)


def test_load_ratio_spread_is_p10_p90_of_whole_days_against_their_profile() -> None:
    """Four weeks of 1 kW, then a week whose days are scaled 0.5, 1, 1, 1, 1, 1, 2. Each of those days'
    profile is its four earlier weeks (1 kW), so the ratios are the scales; the 21 days before the last week
    have ratio 1. Over the last 7 days: P10 = 0.5 + 0.6 * 0.5 = 0.8, P90 = 1 + 0.4 * 1 = 1.4 (linear between
    sorted values). A day with a missing slot is left out: with the 2.0 day gapped, the last 8 days give
    0.5 and six ratios of 1: P10 0.8, P90 1."""
    scales = [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0]
    history = np.concatenate([np.ones(28 * SPD), np.repeat(scales, SPD)])
    assert load_ratio_spread(history, SPD, days=7) == pytest.approx((0.8, 1.4))
    history[-5] = np.nan
    assert load_ratio_spread(history, SPD, days=8) == pytest.approx((0.8, 1.0))
    assert load_ratio_spread(history[: 10 * SPD], SPD) == (1.0, 1.0)  # fewer than 7 days with a profile


def _evening_house(days: int) -> Traces:
    """Hourly, UTC: 0.1 kW all day, 6 kW of PV at 12:00 only, and an evening (18-21 h) of 0.4 kW times a
    five-day cycle of 0.5, 1, 1, 1, 2.5 (not weekly, so the weekly profile does not learn it). Import 0.30,
    export 0.05: a kWh stored for the evening is worth 0.30, one exported at noon 0.05."""
    n = days * SPD
    hour = np.arange(n) % SPD
    scale = np.array([0.5, 1.0, 1.0, 1.0, 2.5])[(np.arange(n) // SPD) % 5]
    load = 0.1 + np.where((hour >= 18) & (hour <= 21), 0.4 * scale, 0.0)
    pv = np.where(hour == 12, 6.0, 0.0)
    start, step = datetime(2026, 3, 2, tzinfo=UTC), timedelta(hours=1)
    # the PV is known (an external forecast column equal to it): only the load is uncertain here
    return Traces(start, step, np.full(n, 0.30), np.full(n, 0.05), load, pv, pv.copy())


def test_load_scenarios_store_more_noon_surplus_for_an_uncertain_evening() -> None:
    """At 12:00 on day 36 (prices known to midnight, no terminal value): the point plan stores about what the
    forecast evening needs and exports the rest of the noon PV; with whole-day load scenarios the high-load
    day (P90 of the recent days' ratio) is worth 0.30 a kWh at 30 % weight against 0.05 for exporting, so
    the shared first slot stores more."""
    tr = _evening_house(40)
    k = 36 * SPD + 12
    base = Config(tz="UTC", pv_kwp=0.0, terminal_value=False, scenarios=False, load_reserve=False)
    point = Planner(tr, base).plan(k, 0.1, 1)
    hedged_planner = Planner(tr, dataclasses.replace(base, load_scenarios=True))
    hedged = hedged_planner.plan(k, 0.1, 1)
    assert point is not None and hedged is not None
    low, high = hedged_planner.load_risk.spread
    assert low < 0.95 and high > 1.1  # the five-day cycle's spread, learnt from the past only
    charge_point, charge_hedged = point[1].battery_charge_kw[0], hedged[1].battery_charge_kw[0]
    assert charge_point < 4.0  # room left: the point plan does not store everything
    assert charge_hedged > charge_point + 0.3


def test_the_options_reach_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = config_from_args(parser.parse_args(["x.csv", "--load-scenarios", "--no-load-persistence"]))
    assert cfg.load_scenarios and not cfg.load_persistence
    default = config_from_args(parser.parse_args(["x.csv"]))
    assert not default.load_scenarios and default.load_persistence  # the AR(1) nowcast is the default
    assert default.scenarios and default.load_reserve  # the PV scenarios and the load reserve too
    off = config_from_args(parser.parse_args(["x.csv", "--no-scenarios", "--no-load-reserve"]))
    assert not off.scenarios and not off.load_reserve


def test_the_planner_and_the_nowcast_helper_use_the_houses_persistence_by_default() -> None:
    """Five weeks of a weekly profile plus AR(1) noise (0.7 per slot), the last slot 3 kW above its profile:
    the backtest planner and forecast_load_nowcast (the cloud planner's profile forecast) both add the AR(1)
    nowcast with the house's measured rho, not the ratio blend."""
    rng = np.random.default_rng(3)
    n = 35 * SPD
    weekly = np.tile(1.0 + 0.5 * np.sin(np.arange(7 * SPD) / 5.0), 5)
    noise = np.zeros(n)
    for t in range(1, n):
        noise[t] = 0.7 * noise[t - 1] + rng.normal(0.0, 0.2)
    load = weekly + noise
    load[-1] += 3.0
    rho = error_persistence(load, SPD)
    assert 0.5 < rho < 0.85
    expected = forecast_load(load, 6, SPD, persistence=rho)
    assert forecast_load_nowcast(load, 6, SPD) == pytest.approx(expected)
    assert not np.allclose(expected, forecast_load(load, 6, SPD))
    start = datetime(2026, 3, 2, tzinfo=UTC)
    tr = Traces(
        start, timedelta(hours=1), np.full(n + 6, 0.3), np.zeros(n + 6), np.append(load, np.ones(6)), np.zeros(n + 6)
    )
    history = tr.load_kw[n - 28 * SPD : n]
    planned = Planner(tr, Config(tz="UTC", load_day_level=False, load_day_kinds=False)).forecasts(n, 6)[0]
    assert planned == pytest.approx(forecast_load(history, 6, SPD, persistence=error_persistence(tr.load_kw[:n], SPD)))


def test_load_scenarios_and_the_nowcast_see_only_the_past() -> None:
    """The load from slot k on changed (doubled plus 1 kW): the plan made at k, its learnt persistence and
    whole-day spread are the same."""
    tr = _evening_house(40)
    k = 36 * SPD + 12
    later = Traces(
        tr.start,
        tr.step,
        tr.import_price,
        tr.export_price,
        np.concatenate([tr.load_kw[:k], tr.load_kw[k:] * 2.0 + 1.0]),
        tr.pv_kw,
        tr.pv_forecast_kw,
    )
    cfg = Config(tz="UTC", pv_kwp=0.0, terminal_value=False, load_scenarios=True)
    a, b = Planner(tr, cfg), Planner(later, cfg)
    plan_a, plan_b = a.plan(k, 0.1, 1), b.plan(k, 0.1, 1)
    assert plan_a is not None and plan_b is not None
    assert (a.persistence, a.load_risk.spread) == (b.persistence, b.load_risk.spread)
    assert plan_a[1].battery_charge_kw == plan_b[1].battery_charge_kw
    assert plan_a[2] == pytest.approx(plan_b[2])  # the load forecast


def test_newsvendor_load_plans_the_served_slots_on_the_price_quantile() -> None:
    """Day ratios 0.5, 1, 1, 1, 1, 1, 2 (their P90 is 1.4, their median 1). Import 0.30 and export 0.03:
    quantile 1 - 0.03 / 0.30 = 0.9, so a slot the battery serves (load above PV) is planned at 1.4 x the
    point forecast, at 1.2 x where the ramp is half way; a surplus slot keeps its forecast; where exporting
    pays as much as importing costs the quantile is the median (1 x); no ratios: the point forecast."""
    ratios = np.array([0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0])
    load = np.array([1.0, 1.0, 1.0, 1.0])
    pv = np.array([0.0, 0.0, 3.0, 0.0])
    imp = np.array([0.30, 0.30, 0.30, 0.10])
    exp = np.array([0.03, 0.03, 0.03, 0.10])
    ramp = np.array([1.0, 0.5, 1.0, 1.0])
    assert newsvendor_load(load, pv, imp, exp, ratios, ramp) == pytest.approx([1.4, 1.2, 1.0, 1.0])
    assert newsvendor_load(load, pv, imp, exp, np.zeros(0), ramp) == pytest.approx(load)


def test_load_reserve_stores_more_noon_surplus_for_the_evening() -> None:
    """The evening house at 12:00 on day 36: planning the evening on the ratio's 0.83 quantile
    (1 - 0.05 / 0.30) stores more of the noon PV than the point plan."""
    tr = _evening_house(40)
    k = 36 * SPD + 12
    base = Config(tz="UTC", pv_kwp=0.0, terminal_value=False, scenarios=False, load_reserve=False)
    point = Planner(tr, base).plan(k, 0.1, 1)
    reserve = Planner(tr, dataclasses.replace(base, load_reserve=True)).plan(k, 0.1, 1)
    assert point is not None and reserve is not None
    assert reserve[1].battery_charge_kw[0] > point[1].battery_charge_kw[0] + 0.3
