"""The planner worker's conditional PV spread (cloud.planner.conditional_pv_ratios, the backtest's
`--pv-spread conditional`): a site with enough history gets per-slot dark / bright ratios that follow its last
day (after a bright day the dark scenario is less dark than the unconditional P10), one with too few days or a
ratio out of range keeps the unconditional pair; the diagnostics' first-slot pair and the neutral test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from cloud.forecast import Location, PvArray, clear_sky, learn_pv_factor, pv_ratio_spread
from cloud.forecast_pv_day import PV_MEAN_DAYS
from cloud.plan_risk import MAX_DAY_RATIO, NEUTRAL, checked_spread
from cloud.planner import PV_SPREAD_HISTORY_DAYS, conditional_pv_ratios, first_slot_ratios, is_neutral

SITE = Location(47.66, 9.18)
ARRAY = PvArray(10.0, 30.0, 180.0)
SPD = 96
START = datetime(2016, 4, 1, tzinfo=UTC)  # solar midnight is ~37 min later: the night, no PV either way
HORIZON = 2 * SPD


def _site(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(measured kW, clear-sky kW through the day after the last one): each day the sky × its clearness."""
    sky = clear_sky(SITE, [ARRAY], START, timedelta(minutes=15), (len(k) + 1) * SPD).pv_kw
    return sky[: len(k) * SPD] * np.repeat(k, SPD), sky


def _ar1(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = np.empty(n)
    k[0] = 0.5
    for d in range(1, n):
        k[d] = 0.5 + 0.6 * (k[d - 1] - 0.5) + rng.normal(0.0, 0.12)
    return np.clip(k, 0.05, 1.0)


def _plan(k: np.ndarray) -> tuple[tuple[float, float], object]:
    """The unconditional pair of the factor's 14 days and the worker's ratios for a plan at dawn after `k`."""
    measured, sky = _site(k)
    today = len(k) * SPD
    lo = max(0, today - PV_MEAN_DAYS * SPD)
    mean = learn_pv_factor(measured[lo:], sky[lo:today], SPD, ARRAY.kwp).typical
    fallback = checked_spread(*pv_ratio_spread(measured[lo:], sky[lo:today], SPD, ARRAY.kwp))
    ratios = conditional_pv_ratios(measured, sky, today, HORIZON, mean, ARRAY.kwp, fallback, np.ones(HORIZON))
    return fallback, ratios


def test_after_a_bright_day_the_dark_scenario_is_less_dark_than_the_unconditional_p10() -> None:
    k = _ar1(PV_SPREAD_HISTORY_DAYS, seed=3)
    k[-1] = 0.95  # yesterday was bright; persistent weather (ρ 0.6)
    fallback, ratios = _plan(k)
    assert fallback != NEUTRAL
    dark, bright = ratios  # type: ignore[misc]
    assert isinstance(dark, np.ndarray) and dark.shape == (HORIZON,) and bright.shape == (HORIZON,)
    assert np.isfinite(dark).all() and (dark >= 0).all() and (dark <= bright).all() and (bright <= MAX_DAY_RATIO).all()
    assert dark[:SPD].min() > fallback[0]  # today and the first hours of tomorrow lean bright
    k[-1] = 0.1  # the same site after a dark day: its dark day is darker
    _, after_dark = _plan(k)
    assert after_dark[0][0] < dark[0]  # type: ignore[index]


def test_too_few_days_keep_the_unconditional_spread() -> None:
    k = _ar1(9, seed=5)  # 8 pairs of consecutive days: fewer than MIN_PERSISTENCE_PAIRS
    fallback, ratios = _plan(k)
    assert ratios is fallback


def test_a_ratio_out_of_range_keeps_the_unconditional_spread() -> None:
    k = _ar1(PV_SPREAD_HISTORY_DAYS, seed=3)
    measured, sky = _site(k)
    today = len(k) * SPD
    levels = np.ones(HORIZON)
    levels[5] = 0.0  # a point forecast level of 0: the ratio over it is out of range
    fallback = (0.6, 1.3)
    assert conditional_pv_ratios(measured, sky, today, HORIZON, 0.5, ARRAY.kwp, fallback, levels) is fallback


def test_neutral_and_the_first_slots_pair() -> None:
    assert is_neutral(NEUTRAL) and is_neutral((np.ones(4), np.ones(4)))
    assert not is_neutral((0.5, 1.2)) and not is_neutral((np.array([1.0, 0.9]), np.ones(2)))
    assert first_slot_ratios((0.5, 1.2)) == (0.5, 1.2)
    assert first_slot_ratios((np.array([0.7, 0.4]), np.array([1.1, 1.5]))) == pytest.approx((0.7, 1.1))
