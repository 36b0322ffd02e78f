"""The two-stage plan's dark / bright PV days conditioned on what the site just saw (`pv_day_spread_from_series`).

On a synthetic site whose daily clearness is a known AR(1), the conditional P10 / P90 of tomorrow are calibrated
(about 10 % of days below dark, 10 % above bright), they follow today (a bright day lifts tomorrow's dark day),
widen towards the unconditional spread as ρ^j fades, fall back with too short a history, read no PV measured
after the plan, and the backtest's option switches the scenarios over.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from cloud.backtest import Config, Planner, Traces, rolling_flows
from cloud.backtest_config import PvSpread, config_from_args, options_problem
from cloud.cli import build_parser
from cloud.forecast import Location, PvArray, clear_sky, learn_pv_factor
from cloud.forecast_pv_day import PV_SPREAD_DAYS, PvDaySpread, clearness_persistence, pv_day_spread_from_series
from cloud.plan_risk import MAX_DAY_RATIO, checked_pv_ratios, pv_scenario_ratios

SITE = Location(47.66, 9.18)
ARRAY = PvArray(10.0, 30.0, 180.0)
STEP = timedelta(hours=1)
START = datetime(2016, 3, 31, 22, tzinfo=UTC)  # local midnight (CEST) on the trace's first row


def _ar1(n: int, rho: float, mean: float, sd: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = np.empty(n)
    k[0] = mean
    for d in range(1, n):
        k[d] = mean + rho * (k[d - 1] - mean) + rng.normal(0.0, sd)
    return np.clip(k, 0.02, 1.2)


def _site(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(measured kW, clear-sky kW) with a day past the last one of clear sky: each day the sky × its clearness."""
    sky = clear_sky(SITE, [ARRAY], START, STEP, (len(k) + 2) * 24).pv_kw
    return sky[: len(k) * 24] * np.repeat(k, 24), sky


def _spread(measured: np.ndarray, sky: np.ndarray, day: int, hour: int) -> tuple[PvDaySpread | None, float]:
    """The spread a plan at `hour` of `day` gets, and the mean day it is made on (14 days before the day)."""
    today = day * 24
    mean = learn_pv_factor(measured[today - 14 * 24 : today], sky[today - 14 * 24 : today], 24, ARRAY.kwp).typical
    return pv_day_spread_from_series(measured[: today + hour], sky, today, 24, mean, ARRAY.kwp), mean


def test_tomorrows_dark_and_bright_days_are_calibrated_on_an_ar1_site() -> None:
    k = _ar1(330, 0.6, 0.5, 0.1, seed=21)
    measured, sky = _site(k)
    below = above = n = 0
    rhos = []
    for day in range(90, 329):
        spread, mean = _spread(measured, sky, day, 14)
        assert spread is not None
        dark, bright = spread.day(1)
        actual = k[day + 1] / mean
        below += actual < dark
        above += actual > bright
        n += 1
        rhos.append(spread.rho)
    assert 0.04 < below / n < 0.18 and 0.04 < above / n < 0.18  # 10 % each, within a year's sampling noise
    assert np.median(rhos) == pytest.approx(0.6, abs=0.15)


def test_a_bright_day_lifts_tomorrows_dark_day_by_rho() -> None:
    k = _ar1(100, 0.6, 0.5, 0.1, seed=8)
    bright, dark = k.copy(), k.copy()
    bright[-1], dark[-1] = 0.9, 0.15  # yesterday, then a plan at dawn (nothing of today yet)
    sb, mean = _spread(*_site(bright), 100, 0)
    sd, _ = _spread(*_site(dark), 100, 0)
    assert sb is not None and sd is not None
    assert sb.rho == pytest.approx(clearness_persistence(bright, days=PV_SPREAD_DAYS + 1))
    assert sb.deviation == pytest.approx(sb.rho * (0.9 / mean - 1.0))  # the AR prior from yesterday
    assert sb.day(1)[0] > sd.day(1)[0] and sb.day(0)[0] > sd.day(0)[0]
    # the spread's width is the past days' residual, the same for both (one day of 60 differs)
    assert sb.day(1)[1] - sb.day(1)[0] == pytest.approx(sd.day(1)[1] - sd.day(1)[0], rel=0.25)


def test_the_spread_fades_to_the_unconditional_one_and_is_bounded() -> None:
    s = PvDaySpread(0.5, 0.4, today=(-0.1, 0.1), tomorrow=(-0.3, 0.2), unconditional=(-0.6, 0.4), ceiling=1.8)
    assert s.day(0) == pytest.approx((1.3, 1.5))  # today: its own deviation, today's spread
    assert s.day(1) == pytest.approx((1.2 - 0.3, 1.2 + 0.2))  # tomorrow: ρ × the deviation, the AR residual
    assert s.day(2) == pytest.approx((1.1 - 0.45, 1.1 + 0.3))  # half way to the unconditional spread
    far = s.day(40)
    assert far == pytest.approx((0.4, 1.4), abs=1e-6)
    dark, bright = s.ratios(30, 5, 12)
    assert np.allclose(dark[:5], 1.3) and np.allclose(dark[5:17], 0.9) and np.allclose(dark[17:29], 0.65)
    assert np.allclose(bright[29:], s.day(3)[1])
    wild = PvDaySpread(0.9, -2.0, (-1.0, 3.0), (-1.0, 3.0), (-1.0, 3.0), ceiling=2.0)
    for j in range(4):
        lo, hi = wild.day(j)
        assert 0.0 <= lo <= hi <= 2.0


def test_too_short_a_history_keeps_the_unconditional_spread() -> None:
    measured, sky = _site(_ar1(20, 0.6, 0.5, 0.1, seed=2))
    assert pv_day_spread_from_series(measured[: 9 * 24], sky, 9 * 24, 24, 0.5, ARRAY.kwp) is None  # 8 pairs
    assert pv_day_spread_from_series(measured, sky, 20 * 24, 24, float("nan"), ARRAY.kwp) is None
    gaps = measured.copy()
    gaps[12::48] = np.nan  # every other day has a gap at noon: too few usable days
    assert pv_day_spread_from_series(gaps, sky, 20 * 24, 24, 0.5, ARRAY.kwp) is None


def test_without_persistence_tomorrow_is_the_unconditional_spread() -> None:
    k = np.random.default_rng(4).uniform(0.2, 0.8, 80)  # independent days (this draw: measured ρ = 0)
    spread, _ = _spread(*_site(k), 80, 14)
    assert spread is not None and spread.rho == 0.0 and spread.deviation == 0.0
    assert spread.tomorrow == pytest.approx(spread.unconditional)
    assert spread.day(1) == pytest.approx(spread.day(5))


def _trace(k: np.ndarray) -> Traces:
    measured, _ = _site(k)
    n = len(measured)
    prices = 0.2 + 0.1 * np.sin(np.arange(n) * 2 * np.pi / 24)
    return Traces(START, STEP, prices, prices - 0.1, np.full(n, 0.8), measured)


def _cfg(spread: PvSpread | None = None) -> Config:
    """The test site's configuration; with the PV scenarios on that `spread` if one is given."""
    cfg = Config(lat=SITE.lat, lon=SITE.lon, pv_kwp=ARRAY.kwp, tilt_deg=30.0, horizon_hours=36.0, replan_hours=3.0)
    return cfg if spread is None else replace(cfg, scenarios=True, pv_spread=spread)


def test_the_backtest_spread_uses_no_pv_after_the_plan() -> None:
    tr = _trace(_ar1(45, 0.7, 0.5, 0.15, seed=7))
    cfg = _cfg(PvSpread.CONDITIONAL)
    k = 40 * 24 + 13
    changed = Traces(tr.start, tr.step, tr.import_price, tr.export_price, tr.load_kw, tr.pv_kw.copy())
    changed.pv_kw[k:] = changed.pv_kw[k:] * 0.1 + 0.5
    a, b = Planner(tr, cfg), Planner(changed, cfg)
    assert np.array_equal(a.forecasts(k, 36)[1], b.forecasts(k, 36)[1])
    assert a.day_spread is not None and a.day_spread == b.day_spread
    plain = Planner(tr, _cfg(PvSpread.UNCONDITIONAL))
    plain.forecasts(k, 36)
    assert plain.day_spread is None  # the unconditional spread computes none


def test_rolling_plans_with_the_conditional_spread_use_no_future_pv() -> None:
    """The whole rolling backtest: the PV measured from slot k on changed, nothing the battery did before k
    changes; and the conditional spread plans differently from the unconditional one."""
    tr = _trace(_ar1(24, 0.8, 0.5, 0.2, seed=4))
    cfg = _cfg(PvSpread.CONDITIONAL)
    k = 21 * 24 + 9
    changed = Traces(tr.start, tr.step, tr.import_price, tr.export_price, tr.load_kw, tr.pv_kw.copy())
    changed.pv_kw[k:] *= 0.3
    c1, d1, _, _ = rolling_flows(tr, cfg)
    c2, d2, _, _ = rolling_flows(changed, cfg)
    assert np.array_equal(c1[:k], c2[:k]) and np.array_equal(d1[:k], d2[:k])
    c0, d0, _, _ = rolling_flows(tr, replace(cfg, pv_spread=PvSpread.UNCONDITIONAL))
    assert not (np.array_equal(c0, c1) and np.array_equal(d0, d1))


def test_the_option_is_parsed_and_bounded() -> None:
    parser = build_parser()
    assert config_from_args(parser.parse_args(["backtest", "x.csv"])).pv_spread is PvSpread.CONDITIONAL
    args = parser.parse_args(["backtest", "x.csv", "--pv-spread", "conditional", "--pv-spread-days", "30"])
    cfg = config_from_args(args)
    assert cfg.pv_spread is PvSpread.CONDITIONAL and cfg.pv_spread_days == 30.0
    for bad in ("5", "400", "nan"):
        problem = options_problem(parser.parse_args(["backtest", "x.csv", "--pv-spread-days", bad]))
        assert problem is not None and "--pv-spread-days" in problem
    with pytest.raises(SystemExit):
        parser.parse_args(["backtest", "x.csv", "--pv-spread", "wide"])


def test_per_slot_ratios_are_checked_and_divided_by_the_point_forecasts_level() -> None:
    s = PvDaySpread(0.5, 0.4, today=(-0.1, 0.1), tomorrow=(-0.3, 0.2), unconditional=(-0.6, 0.4))
    assert pv_scenario_ratios(None, (0.4, 1.5), 10, 3, 4) == (0.4, 1.5)  # no conditional spread: the pair
    dark, bright = pv_scenario_ratios(s, (0.4, 1.5), 10, 3, 4)
    assert np.allclose(np.asarray(dark)[:3], 1.3) and np.allclose(np.asarray(bright)[3:7], 1.4)
    levels = np.r_[np.ones(3), np.full(7, 1.2)]  # the point forecast is already 1.2 x the mean day from tomorrow
    dark2, _ = pv_scenario_ratios(s, (0.4, 1.5), 10, 3, 4, levels)
    assert np.allclose(np.asarray(dark2)[3:7], 0.9 / 1.2) and np.allclose(np.asarray(dark2)[:3], 1.3)
    d, b = checked_pv_ratios((0.5, 1.5), 4)
    assert np.array_equal(d, np.full(4, 0.5)) and np.array_equal(b, np.full(4, 1.5))
    good = (np.array([0.5, 0.8]), np.array([1.2, 1.1]))
    assert all(np.array_equal(x, y) for x, y in zip(checked_pv_ratios(good, 2), good, strict=True))
    for bad in (
        (np.array([0.5, np.nan]), np.array([1.2, 1.1])),  # not finite
        (np.array([0.5, 1.2]), np.array([1.2, 1.1])),  # dark above bright
        (np.array([-0.1, 0.8]), np.array([1.2, 1.1])),  # negative
        (np.array([0.5, 0.8]), np.array([1.2, MAX_DAY_RATIO + 1])),  # a broken meter, not weather
        (np.array([0.5]), np.array([1.2])),  # not one pair per slot
    ):
        d, b = checked_pv_ratios(bad, 2)
        assert np.array_equal(d, np.ones(2)) and np.array_equal(b, np.ones(2))
