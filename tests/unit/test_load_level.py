"""The load forecast's day-level persistence and day-kind profile (issue 11 item 3, loadfc). Expected values
are worked by hand or come from the generating process."""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime, timedelta
from typing import cast

import numpy as np
import pytest

from cloud.backtest import Config, Planner, Traces
from cloud.backtest_config import add_arguments, config_from_args, config_problem
from cloud.forecast_load import (
    day_level_factors,
    day_level_persistence,
    day_load_ratios,
    day_type_profile,
    day_types,
    error_persistence,
    forecast_load,
    forecast_load_daytype,
    forecast_load_house,
    forecast_load_level,
    zone_country,
)

SPD = 24


def _ar_days(days: int, rho: float, seed: int) -> np.ndarray:
    """Hourly load: a fixed daily shape scaled per day by 1 + an AR(1) level with coefficient `rho`."""
    rng = np.random.default_rng(seed)
    level = np.zeros(days)
    for d in range(1, days):
        level[d] = rho * level[d - 1] + rng.normal(0.0, 0.2)
    shape = 0.5 + 0.4 * np.sin(np.arange(SPD) / 3.0) ** 2
    return np.asarray((shape[None, :] * np.clip(1.0 + level, 0.2, None)[:, None]).ravel(), dtype=np.float64)


def test_day_level_persistence_finds_the_days_autocorrelation() -> None:
    """Days whose level follows an AR(1) with 0.8 (a cold spell, a week away) against independent days:
    the ratio to a four-week profile keeps most of the persistence; independent days keep none."""
    persistent = day_level_persistence(day_load_ratios(_ar_days(120, 0.8, 1), SPD, days=84))
    independent = day_level_persistence(day_load_ratios(_ar_days(120, 0.0, 2), SPD, days=84))
    assert persistent > 0.45
    assert independent < 0.25
    assert day_level_persistence(np.ones(10)) == 0.0  # fewer than 14 blocks
    assert day_level_persistence(np.ones(20)) == 0.0  # a flat ratio has no correlation


def test_day_level_factors_carry_the_last_days_ratio_by_rho_per_day() -> None:
    """Four weeks of 1 kW, then a day at 1.5 kW: the last 24 h ran at 1.5 x the profile. With rho 0.5 the
    next 24 h are planned at 1 + 0.5 * 0.5 = 1.25, the 24 h after at 1 + 0.25 * 0.5 = 1.125."""
    history = np.concatenate([np.ones(28 * SPD), np.full(SPD, 1.5)])
    fac = day_level_factors(history, 48, SPD, 0.5)
    assert fac[:24] == pytest.approx(np.full(24, 1.25))
    assert fac[24:] == pytest.approx(np.full(24, 1.125))
    assert day_level_factors(history, 48, SPD, 0.0) == pytest.approx(np.ones(48))
    history[-3] = np.nan  # the last day is not fully measured: no level
    assert day_level_factors(history, 48, SPD, 0.5) == pytest.approx(np.ones(48))


def test_forecast_load_level_scales_the_profile_and_nowcasts_against_the_scaled_one() -> None:
    """The same house, the last slot at 2.5 kW: the profile (1 kW) is scaled to 1.25 by the day level, and
    the AR(1) nowcast adds the last slot's error against the scaled profile, 2.5 - 1.25, fading by 0.5."""
    history = np.concatenate([np.ones(28 * SPD), np.full(SPD - 1, 1.5), [2.5]])
    r = (1.5 * 23 + 2.5) / 24.0
    scale = 1.0 + 0.5 * (r - 1.0)
    fc = forecast_load_level(history, 3, SPD, persistence=0.5, rho_day=0.5)
    assert fc == pytest.approx([scale + (2.5 - scale) * 0.5**j for j in (1, 2, 3)])
    assert forecast_load_level(history, 3, SPD, persistence=0.5, rho_day=0.0) == pytest.approx(
        forecast_load(history, 3, SPD, persistence=0.5)
    )


def test_forecast_load_house_reads_both_persistences_off_the_house() -> None:
    history = _ar_days(70, 0.8, 4)
    rho = error_persistence(history, SPD)
    rho_day = day_level_persistence(day_load_ratios(history, SPD))
    assert rho_day > 0.0
    assert forecast_load_house(history, 30, SPD) == pytest.approx(
        forecast_load_level(history, 30, SPD, persistence=rho, rho_day=rho_day)
    )


def test_day_types_mark_weekends_and_the_countrys_holidays() -> None:
    """Friday 23 .. Tuesday 27 December 2016 in Konstanz: Saturday, Sunday and Boxing Day (a German public
    holiday) are off; without a country only the weekend is."""
    start = datetime(2016, 12, 22, 23, tzinfo=UTC)  # local midnight (CET)
    kinds = day_types(start, timedelta(hours=1), 5 * SPD, "Europe/Berlin", country="DE")
    assert kinds.reshape(5, SPD)[:, 0].tolist() == [0, 1, 1, 1, 0]
    assert (kinds.reshape(5, SPD) == kinds.reshape(5, SPD)[:, :1]).all()  # whole local days
    plain = day_types(start, timedelta(hours=1), 5 * SPD, "Europe/Berlin")
    assert plain.reshape(5, SPD)[:, 0].tolist() == [0, 1, 1, 0, 0]
    days = day_types(start, timedelta(hours=1), 5 * SPD, "Europe/Berlin", country="DE", by_weekday=True)
    assert days.reshape(5, SPD)[:, 0].tolist() == [4, 5, 6, 6, 1]  # Boxing Day planned like a Sunday
    assert zone_country("Europe/Berlin") == "DE" and zone_country("Australia/Sydney") == "AU"
    assert zone_country("UTC") is None


def test_day_type_profile_pools_days_of_the_same_kind() -> None:
    """Four weeks with working days at 1 kW and weekend days at 2 kW, except one working day at 3 kW (a day
    off nobody registered): a working-day slot is (19 * 1 + 3) / 20 = 1.1, a weekend slot 2."""
    n = 28 * SPD
    kinds = np.zeros(n + 2 * SPD, dtype=np.int64)
    day = np.arange(n + 2 * SPD) // SPD
    kinds[(day % 7) >= 5] = 1
    load = np.where(kinds[:n] == 1, 2.0, 1.0)
    load[2 * SPD : 3 * SPD] = 3.0  # day 2 is a working day
    profile = day_type_profile(load, kinds, n, 2 * SPD, SPD)
    assert kinds[n] == 0 and profile[0] == pytest.approx(1.1)
    weekend = np.flatnonzero(kinds[n:] == 1)
    assert len(weekend) == 0 or profile[weekend] == pytest.approx(2.0)
    sat = 26 * SPD  # the last Saturday: seven weekend days before it
    assert kinds[sat] == 1 and day_type_profile(load, kinds, sat, 1, SPD)[0] == pytest.approx(2.0)
    first = 5 * SPD  # the first Saturday has no weekend day before it: the weekday profile (the last 7 days)
    assert day_type_profile(load, kinds, first, 1, SPD)[0] == pytest.approx((4 * 1.0 + 3.0) / 5)
    with pytest.raises(ValueError, match="day kinds cover"):
        forecast_load_daytype(load, kinds[:n], 3, SPD)


def _house(days: int) -> Traces:
    load = _ar_days(days, 0.8, 5)
    n = len(load)
    start = datetime(2026, 3, 2, tzinfo=UTC)
    return Traces(start, timedelta(hours=1), np.full(n, 0.3), np.full(n, 0.05), load, np.zeros(n))


def test_the_day_level_is_the_backtests_default_and_sees_only_the_past() -> None:
    """The load from slot k on changed (doubled plus 1 kW): the plan made at k, its learnt day-to-day
    persistence and its load forecast are the same; the forecast is forecast_load_level's on the past."""
    tr = _house(70)
    k = 64 * SPD + 7
    later = Traces(
        tr.start,
        tr.step,
        tr.import_price,
        tr.export_price,
        np.concatenate([tr.load_kw[:k], tr.load_kw[k:] * 2.0 + 1.0]),
        tr.pv_kw,
    )
    cfg = Config(tz="UTC", pv_kwp=0.0)
    assert cfg.load_day_level and cfg.load_day_kinds
    a, b = Planner(tr, cfg), Planner(later, cfg)
    fa, fb = a.forecasts(k, 30)[0], b.forecasts(k, 30)[0]
    assert a.rho_day == b.rho_day and a.rho_day > 0.0
    assert fa == pytest.approx(fb)
    first = k - 56 * SPD  # the planner worker's call: 56 days of history, the kinds of them and the horizon
    kinds = day_types(tr.start + tr.step * first, tr.step, 56 * SPD + 30, "UTC")
    assert fa == pytest.approx(forecast_load_house(tr.load_kw[first:k], 30, SPD, kinds=kinds))
    weekly = Planner(tr, Config(tz="UTC", pv_kwp=0.0, load_day_kinds=False)).forecasts(k, 30)[0]
    assert weekly == pytest.approx(forecast_load_house(tr.load_kw[first:k], 30, SPD))
    assert not np.allclose(weekly, fa)
    for other in (Config(tz="UTC", pv_kwp=0.0, load_day_level=False), Config(tz="UTC", pv_kwp=0.0, load_holidays=True)):
        assert Planner(tr, other).forecasts(k, 30)[0] == pytest.approx(Planner(later, other).forecasts(k, 30)[0])


def test_the_options_reach_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = config_from_args(parser.parse_args(["x.csv", "--no-load-day-level", "--no-load-day-kinds"]))
    assert not cfg.load_day_level and not cfg.load_day_kinds
    default = config_from_args(parser.parse_args(["x.csv"]))
    assert default.load_day_level and default.load_day_kinds and not default.load_holidays
    bad = config_from_args(parser.parse_args(["x.csv", "--load-day-level-days", "7"]))
    assert config_problem(bad) is not None
    bad = config_from_args(parser.parse_args(["x.csv", "--load-kind-weeks", "0"]))
    assert config_problem(bad) is not None


def test_the_planner_worker_forecasts_the_profile_load_as_the_backtest_does() -> None:
    """site_load_forecast's profile path (no stored model, no database query): the day-kind profile with
    the day level, on the site's time zone and its country's holidays, i.e. forecast_load_house."""
    from cloud.assets import GridCfg, LocationCfg, SiteAssets
    from cloud.db import Database
    from cloud.site_forecast import ModelChoice, site_load_forecast
    from cloud.site_series import SiteSeries

    load = _ar_days(60, 0.8, 6)
    n = len(load)
    start = datetime(2016, 11, 1, 23, tzinfo=UTC)
    z = np.zeros(n)
    series = SiteSeries(start, timedelta(hours=1), z, z, z, z, load, None, None, None, 0)
    assets = SiteAssets(LocationCfg(47.66, 9.18), GridCfg(17.0, 10.0), timezone="Europe/Berlin")
    db = cast(Database, None)  # the profile path never reads the database
    got = asyncio.run(site_load_forecast(db, "s", assets, series, 48, start, ModelChoice()))
    first = n - 56 * SPD
    kinds = day_types(start + timedelta(hours=first), timedelta(hours=1), 56 * SPD + 48, "Europe/Berlin", country="DE")
    assert got == pytest.approx(forecast_load_house(load[first:], 48, SPD, kinds=kinds))
    plain = ModelChoice(load_day_level=False)
    got_plain = asyncio.run(site_load_forecast(db, "s", assets, series, 48, start, plain))
    assert got_plain == pytest.approx(
        forecast_load(load[first:], 48, SPD, persistence=error_persistence(load[first:], SPD))
    )
