"""Risk in the backtest: planning on a load quantile, and the cost of the worst days (worked by hand)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from cloud.backtest import Config, Forecast, LoadModel, Planner, Traces, at_quantile, daily_costs, worst_days
from cloud.backtest_config import config_problem
from cloud.forecast_load import LoadQuantiles


def test_quantile_between_the_forecasters_p10_p50_p90() -> None:
    q = LoadQuantiles(np.array([1.0]), np.array([2.0]), np.array([4.0]))
    assert at_quantile(q, 0.5)[0] == pytest.approx(2.0)
    assert at_quantile(q, 0.7)[0] == pytest.approx(3.0)  # half way from P50 to P90
    assert at_quantile(q, 0.3)[0] == pytest.approx(1.5)
    assert at_quantile(q, 0.9)[0] == pytest.approx(4.0)
    assert at_quantile(q, 0.1)[0] == pytest.approx(1.0)


def test_daily_costs_and_the_worst_days() -> None:
    """Two UTC days, hourly, no battery: day 1 imports 1 kW for 24 h at 0.20 (4.80 EUR); day 2 exports 2 kW of
    PV for 24 h at 0.05 (-2.40 EUR)."""
    n = 48
    tr = Traces(
        datetime(2026, 3, 2, tzinfo=UTC),
        timedelta(hours=1),
        np.full(n, 0.20),
        np.full(n, 0.05),
        np.concatenate([np.ones(24), np.zeros(24)]),
        np.concatenate([np.zeros(24), np.full(24, 2.0)]),
    )
    zero = np.zeros(n)
    costs = daily_costs(tr, zero, zero, Config(tz="UTC"))
    assert costs == pytest.approx([4.80, -2.40])
    assert worst_days(costs, 1) == pytest.approx(4.80)
    assert worst_days(costs, 10) == pytest.approx(2.40)


def test_load_quantile_needs_a_forecaster_with_a_spread() -> None:
    persistence = Config(load_model=LoadModel.PERSISTENCE, load_quantile=0.7)
    assert "needs --load-model profile" in (config_problem(persistence) or "")
    assert config_problem(Config(load_quantile=0.7)) is None
    assert "0.1 .. 0.9" in (config_problem(Config(load_model=LoadModel.GBM, load_quantile=0.95)) or "")
    assert config_problem(Config(load_model=LoadModel.GBM, load_quantile=0.7)) is None


def test_profile_quantile_adds_the_houses_own_spread() -> None:
    """A week of 1 kW, except 8 kW at 05:00 on the seventh day. At 05:00 the seven values are 1,1,1,1,1,1,8:
    mean 2, P90 1 + 0.4 * 7 = 3.8 (linear between the 6th and 7th of 7 sorted values), so the P90 scenario
    lies 1.8 kW above the point forecast at 05:00 and nowhere else."""
    n = 9 * 24
    load = np.ones(n)
    load[6 * 24 + 5] = 8.0
    tr = Traces(datetime(2026, 3, 2, tzinfo=UTC), timedelta(hours=1), np.full(n, 0.2), np.zeros(n), load, np.zeros(n))
    point = Planner(tr, Config(tz="UTC"))
    risky = Planner(tr, Config(tz="UTC", load_quantile=0.9))
    risky.forecasts(7 * 24, 24)  # learns the spread at midnight
    k = 7 * 24 + 2  # 02:00: 05:00 is 3 slots ahead, and 27
    diff = risky.forecasts(k, 30)[0] - point.forecasts(k, 30)[0]
    expected = np.zeros(30)
    expected[[3, 27]] = 1.8
    assert diff == pytest.approx(expected)


def _week_with_sun() -> Traces:
    """Nine days of hourly data in De Bilt's summer: a measured PV that no clear-sky forecast matches (every
    third day dark) and a load with a step in it, so the forecasters' output differs from the truth."""
    n = 9 * 24
    hour = np.arange(n) % 24
    sun = np.clip(np.sin((hour - 5) / 15 * np.pi), 0.0, None) * 3.0
    pv = sun * np.where((np.arange(n) // 24) % 3 == 2, 0.2, 1.0)
    load = 0.4 + 0.6 * ((hour >= 17) & (hour < 22)) + 0.3 * (np.arange(n) > 8 * 24)
    start = datetime(2026, 6, 1, tzinfo=UTC)
    return Traces(start, timedelta(hours=1), np.full(n, 0.3), np.full(n, 0.05), load, pv)


@pytest.mark.parametrize("told", [Forecast.PERFECT_PV, Forecast.PERFECT_LOAD, Forecast.PERFECT])
def test_truth_for_some_hours_ahead_only(told: Forecast) -> None:
    """--truth-from-hours 1 --truth-until-hours 3: the plan made at 08:00 on day 8 gets the measured values for
    09:00 and 10:00 and the forecasters' own output in every other slot (the diagnostic behind "what a better
    nowcast is worth"); the other series stays the model's."""
    tr = _week_with_sun()
    k, horizon = 8 * 24 + 8, 20
    model_load, model_pv = Planner(tr, Config(tz="UTC")).forecasts(k, horizon)
    cfg = Config(tz="UTC", forecast=told, truth_from_hours=1.0, truth_until_hours=3.0)
    load, pv = Planner(tr, cfg).forecasts(k, horizon)
    for got, model, measured, is_told in (
        (load, model_load, tr.load_kw, told is not Forecast.PERFECT_PV),
        (pv, model_pv, tr.pv_kw, told is not Forecast.PERFECT_LOAD),
    ):
        expected = model.copy()
        if is_told:
            expected[1:3] = measured[k + 1 : k + 3]
        assert not np.allclose(model[1:3], measured[k + 1 : k + 3])  # the check can fail
        assert got == pytest.approx(expected)


def test_truth_hours_are_checked() -> None:
    assert "need --forecast perfect" in (config_problem(Config(truth_until_hours=3.0)) or "")
    assert "need --forecast perfect" in (config_problem(Config(truth_from_hours=1.0)) or "")
    bad_order = Config(forecast=Forecast.PERFECT_PV, truth_from_hours=3.0, truth_until_hours=2.0)
    assert "--truth-from-hours < --truth-until-hours" in (config_problem(bad_order) or "")
    assert "--truth-until-hours" in (config_problem(Config(forecast=Forecast.PERFECT_PV, truth_until_hours=0.0)) or "")
    assert "--truth-from-hours" in (config_problem(Config(forecast=Forecast.PERFECT, truth_from_hours=200.0)) or "")
    assert "--truth-from-hours" in (
        config_problem(Config(forecast=Forecast.PERFECT, truth_from_hours=float("nan"))) or ""
    )
    assert config_problem(Config(forecast=Forecast.PERFECT_PV, truth_from_hours=1.0, truth_until_hours=3.0)) is None
    assert config_problem(Config(forecast=Forecast.PERFECT_LOAD, truth_from_hours=6.0)) is None
