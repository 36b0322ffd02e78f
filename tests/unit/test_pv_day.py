"""The PV forecast's day-to-day part (`cloud.forecast_pv_day`): the AR(1) of the site's daily clearness.

The estimate recovers a known persistence from a synthetic AR(1) clearness series, falls back to today's
forecast (the mean day) with too short a history, reads only the past, and the planner worker's PV path uses
the same function as the backtest.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from cloud.assets import decode_assets
from cloud.backtest import Config, Planner, Traces, rolling_flows
from cloud.cli import _planner_settings, build_parser
from cloud.forecast import Location, PvArray, clear_sky, learn_pv_factor
from cloud.forecast_pv_day import (
    MAX_PERSISTENCE,
    PvDayOutlook,
    clearness_persistence,
    day_clearness,
    pv_day_outlook,
    pv_day_outlook_from_series,
)
from cloud.planner import STEP, PlannerOptions, _pv_forecast, solar_day_start
from cloud.site_series import SiteSeries
from cloud.sky_cache import clear_sky_cached

SITE = Location(47.66, 9.18)
ARRAY = PvArray(10.0, 30.0, 180.0)


def _ar1(n: int, rho: float, mean: float, sd: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = np.empty(n)
    k[0] = mean
    for d in range(1, n):
        k[d] = mean + rho * (k[d - 1] - mean) + rng.normal(0.0, sd)
    return np.clip(k, 0.02, 1.2)


def _site_days(k: np.ndarray, start: datetime, step: timedelta) -> tuple[np.ndarray, np.ndarray, int]:
    """(measured kW, clear-sky kW, slots per day): each day the clear sky scaled by that day's clearness."""
    spd = int(timedelta(days=1) // step)
    sky = clear_sky(SITE, [ARRAY], start, step, len(k) * spd).pv_kw
    return sky * np.repeat(k, spd), sky, spd


@pytest.mark.parametrize("rho", [0.0, 0.35, 0.7])
def test_a_synthetic_ar1_clearness_recovers_its_persistence(rho: float) -> None:
    k = _ar1(2000, rho, 0.55, 0.2, seed=11)
    assert clearness_persistence(k, days=len(k)) == pytest.approx(rho, abs=0.06)


def test_the_clearness_is_read_back_from_power_series() -> None:
    k = _ar1(40, 0.5, 0.5, 0.2, seed=3)
    measured, sky, spd = _site_days(k, datetime(2016, 4, 1, tzinfo=UTC) - timedelta(hours=1), timedelta(hours=1))
    got = day_clearness(measured, sky, spd, ARRAY.kwp)
    assert np.allclose(got, k)
    measured[5 * spd + 12] = np.nan  # a telemetry gap at noon: that day is unusable, the others stay in place
    got = day_clearness(measured, sky, spd, ARRAY.kwp)
    assert np.isnan(got[5]) and np.allclose(np.delete(got, 5), np.delete(k, 5))


def test_persistence_is_bounded_and_zero_without_history() -> None:
    assert clearness_persistence(np.zeros(0)) == 0.0
    assert clearness_persistence(np.array([0.2, 0.8, 0.3, 0.9, 0.1, 0.7, 0.4, 0.6, 0.5])) == 0.0  # < 10 pairs
    assert clearness_persistence(np.full(30, 0.5)) == 0.0  # no spread
    alternating = np.tile([0.2, 0.9], 15)  # perfectly anti-persistent: bounded at 0, not negative
    assert clearness_persistence(alternating) == 0.0
    trend = np.linspace(0.1, 1.0, 30)  # a slow drift: persistent, bounded below 1
    assert 0.0 < clearness_persistence(trend) <= MAX_PERSISTENCE < 1.0
    gaps = _ar1(30, 0.6, 0.5, 0.2, seed=5)
    gaps[::2] = np.nan  # no two usable days in a row: no pairs, no estimate
    assert clearness_persistence(gaps) == 0.0


def test_a_short_history_plans_on_the_mean_day() -> None:
    k = _ar1(8, 0.9, 0.5, 0.3, seed=1)
    outlook = pv_day_outlook(k, np.full(6, 3.0), np.full(6, 4.0), 40.0, 0.5, ARRAY.kwp)
    assert outlook == PvDayOutlook(0.5)
    assert np.array_equal(outlook.factors(30, 10, 24), np.full(30, 0.5))


def test_today_blends_yesterday_and_today_so_far_and_fades_by_rho() -> None:
    history = np.r_[_ar1(27, 0.5, 0.5, 0.2, seed=2), 0.1]  # yesterday was dark
    rho = clearness_persistence(history)
    assert rho > 0.0
    dawn = pv_day_outlook(history, np.zeros(0), np.zeros(0), 40.0, 0.5, ARRAY.kwp)
    assert dawn.deviation == pytest.approx(rho * (0.1 - 0.5))  # nothing of today yet: the AR prior
    # half of today's clear-sky energy has passed and came out bright (k = 0.9)
    half = pv_day_outlook(history, np.full(4, 4.5), np.full(4, 5.0), 40.0, 0.5, ARRAY.kwp)
    assert half.deviation == pytest.approx(0.5 * 0.4 + 0.5 * rho * (0.1 - 0.5))
    f = half.factors(60, 12, 24)
    assert np.allclose(f[:12], 0.5)  # the rest of today: the mean day (the nowcast adds today's evidence)
    assert np.allclose(f[12:36], 0.5 + rho * half.deviation)  # tomorrow
    assert np.allclose(f[36:], 0.5 + rho**2 * half.deviation)  # the day after


def _planner_trace(k: np.ndarray, start: datetime) -> Traces:
    step = timedelta(hours=1)
    measured, _, _ = _site_days(k, start, step)
    n = len(measured)
    return Traces(start, step, np.full(n, 0.3), np.full(n, 0.05), np.full(n, 0.5), measured)


def test_the_backtest_forecast_uses_no_pv_after_the_plan() -> None:
    """The forecast made at slot k is the same whatever the PV after k was; and it differs from the plain
    mean-day forecast once the site has a persistence to read."""
    start = datetime(2016, 3, 31, 23, tzinfo=UTC)
    k_days = _ar1(45, 0.7, 0.5, 0.25, seed=7)
    tr = _planner_trace(k_days, start)
    cfg = Config(lat=SITE.lat, lon=SITE.lon, pv_kwp=ARRAY.kwp, tilt_deg=30.0, pv_persistence=True)
    k = 40 * 24 + 13
    changed = Traces(tr.start, tr.step, tr.import_price, tr.export_price, tr.load_kw, tr.pv_kw.copy())
    changed.pv_kw[k:] = changed.pv_kw[k:] * 0.1 + 0.5
    a = Planner(tr, cfg).forecasts(k, 36)[1]
    b = Planner(changed, cfg).forecasts(k, 36)[1]
    assert np.array_equal(a, b)
    plain = Planner(tr, Config(lat=SITE.lat, lon=SITE.lon, pv_kwp=ARRAY.kwp, tilt_deg=30.0)).forecasts(k, 36)[1]
    assert not np.allclose(a, plain)


def test_solar_day_starts_at_the_sites_solar_midnight() -> None:
    sydney = solar_day_start(datetime(2026, 1, 10, 3, 7, tzinfo=UTC), 151.21)  # 13:07 in Sydney
    assert sydney == datetime(2026, 1, 9, 13, 45, tzinfo=UTC)  # 00:00 solar time = 13:55 UTC, on the grid
    konstanz = solar_day_start(datetime(2026, 1, 10, 3, 7, tzinfo=UTC), 9.18)
    assert konstanz == datetime(2026, 1, 9, 23, 15, tzinfo=UTC)


def test_the_planner_worker_plans_on_the_same_outlook() -> None:
    """The worker's factor forecast without weather (`_pv_forecast`) with `pv_persistence`: the clear sky of
    the horizon × the outlook of `pv_day_outlook_from_series` over the site's telemetry, then the nowcast."""
    assets = decode_assets(
        {
            "location": {"lat": 47.66, "lon": 9.18},
            "grid": {"max_import_kw": 17, "max_export_kw": 10},
            "pv": [{"kwp": 10, "tilt_deg": 30, "azimuth_deg": 180}],
        }
    )
    now = datetime(2026, 5, 20, 3, 0, tzinfo=UTC)  # before sunrise: the nowcast has nothing to correct
    history = now - timedelta(days=28)
    k_days = np.r_[_ar1(28, 0.7, 0.5, 0.25, seed=9), 0.5]
    loc, arrays = assets.pv_location(), assets.pv_arrays()
    day0 = solar_day_start(history, loc.lon)
    sky = clear_sky_cached(loc, arrays, day0, STEP, 29 * 96).pv_kw
    pv = (sky * np.repeat(k_days, 96))[int((history - day0) // STEP) :][: int((now - history) // STEP)]
    n = len(pv)
    series = SiteSeries(
        start=history,
        step=STEP,
        grid_kw=np.zeros(n),
        pv_kw=pv,
        battery_kw=np.zeros(n),
        ev_kw=np.zeros(n),
        load_kw=np.full(n, 0.5),
        soc=None,
        ev_connected=None,
        ev_soc=None,
        last_seq=0,
    )
    horizon = 192  # today (on the mean day) and tomorrow (on the persistence)
    on, factor, _ = asyncio.run(
        _pv_forecast(None, "s", assets, series, now, horizon, now, PlannerOptions(pv_persistence=True))  # type: ignore[arg-type]
    )
    no_index = PlannerOptions(pv_index=False)  # no database here: no regional forecast to look for
    off, _, _ = asyncio.run(_pv_forecast(None, "s", assets, series, now, horizon, now, no_index))  # type: ignore[arg-type]
    today = int((solar_day_start(now, loc.lon) - history) // STEP)
    sky_all = clear_sky_cached(loc, arrays, history, STEP, n + horizon).pv_kw
    past = 14 * 96
    assert factor.typical == pytest.approx(
        learn_pv_factor(pv[-past:], sky_all[n - past : n], 96, assets.pv_kwp).typical
    )
    outlook = pv_day_outlook_from_series(pv, sky_all, today, 96, factor.typical, assets.pv_kwp)
    assert outlook.rho > 0.0
    left = 96 - int((now - solar_day_start(now, loc.lon)) // STEP)
    expected = sky_all[n:] * outlook.factors(horizon, left, 96)
    assert np.allclose(on, expected)
    assert not np.allclose(on, off)


@pytest.mark.parametrize("scenarios", [False, True])
def test_rolling_plans_with_the_persistence_use_no_future_pv(scenarios: bool) -> None:
    """The whole rolling backtest with the persistence (and with the PV scenarios): the PV measured
    from slot k on changed, nothing the battery did before k changes."""
    start = datetime(2016, 5, 31, 22, tzinfo=UTC)
    tr = _planner_trace(_ar1(14, 0.8, 0.5, 0.3, seed=4), start)
    n = tr.n
    prices = 0.2 + 0.1 * np.sin(np.arange(n) * 2 * np.pi / 24)
    tr = Traces(tr.start, tr.step, prices, prices - 0.1, np.full(n, 0.8), tr.pv_kw)
    cfg = Config(
        lat=SITE.lat, lon=SITE.lon, pv_kwp=ARRAY.kwp, tilt_deg=30.0, horizon_hours=36.0, replan_hours=3.0,
        pv_persistence=True, scenarios=scenarios,
    )  # fmt: skip
    k = 12 * 24 + 9
    changed = Traces(tr.start, tr.step, tr.import_price, tr.export_price, tr.load_kw, tr.pv_kw.copy())
    changed.pv_kw[k:] *= 0.3
    c1, d1, _, _ = rolling_flows(tr, cfg)
    c2, d2, _, _ = rolling_flows(changed, cfg)
    assert np.array_equal(c1[:k], c2[:k]) and np.array_equal(d1[:k], d2[:k])
    plain = Planner(tr, replace(cfg, pv_persistence=False)).forecasts(k, 36)[1]
    assert not np.allclose(Planner(tr, cfg).forecasts(k, 36)[1], plain)  # the persistence is at work by then


def test_zapcloud_serve_passes_the_persistence_to_the_planner() -> None:
    assert _planner_settings(build_parser().parse_args(["serve"])).options().pv_persistence is False
    on = _planner_settings(build_parser().parse_args(["serve", "--pv-persistence"]))
    assert on.options().pv_persistence is True
