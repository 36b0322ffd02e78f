"""Load forecasters: persistence (the baseline), the seasonal profile, LightGBM; none may see the future.

On four weeks of the real Ausgrid household: the GBM's forecast must not depend on anything after its origin,
must fall back to the profile for a new site, and must be finite and non-negative.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from cloud.backtest import read_traces
from cloud.forecast import GbmLoadForecaster, forecast_load, forecast_load_persistence
from cloud.forecast_load import MAX_STATE_BYTES

TRACE = Path(__file__).resolve().parents[2] / "bench" / "data" / "ausgrid_c12_nl_2023.csv"


def test_persistence_is_yesterday() -> None:
    history = np.arange(96, dtype=np.float64)  # two days of 48 slots
    out = forecast_load_persistence(history, 60, 48)
    assert np.array_equal(out[:48], history[48:])  # tomorrow = today
    assert np.array_equal(out[48:], history[48:60])  # the day after: still the last measured day


def test_gbm_uses_only_the_past_and_starts_cold() -> None:
    tr = read_traces(str(TRACE)).head(35 * 48)
    now = 30 * 48 + 5
    model = GbmLoadForecaster(tr.start, tr.step, "Australia/Sydney", country="AU", subdiv="NSW", refit_days=100)
    cold = model.forecast(tr.load_kw, 7 * 48, 48)
    assert np.array_equal(cold, forecast_load(tr.load_kw[: 7 * 48], 48, 48))  # a week of history: the profile
    out = model.forecast(tr.load_kw, now, 72)
    assert out.shape == (72,) and np.all(np.isfinite(out)) and np.all(out >= 0)
    future_changed = tr.load_kw.copy()
    future_changed[now:] *= 5.0
    again = GbmLoadForecaster(tr.start, tr.step, "Australia/Sydney", country="AU", subdiv="NSW", refit_days=100)
    assert np.array_equal(again.forecast(future_changed, now, 72), out)


def test_gbm_knows_the_holiday_calendar() -> None:
    start = datetime(2011, 12, 19, 13, tzinfo=UTC)  # Tuesday 20 Dec 2011 00:00 in Sydney
    model = GbmLoadForecaster(start, timedelta(minutes=30), "Australia/Sydney", country="AU", subdiv="NSW")
    cal = model._cal(np.array([0, 6 * 48, 7 * 48, 8 * 48]))  # Tue 20, Mon 26 (Boxing Day), Tue 27 (holiday), Wed 28
    assert cal[:, 2].tolist() == [0.0, 1.0, 1.0, 0.0]


def test_gbm_quantiles_are_ordered_cover_and_use_only_the_past() -> None:
    tr = read_traces(str(TRACE)).head(70 * 48)
    now = 56 * 48 + 17

    def make() -> GbmLoadForecaster:
        return GbmLoadForecaster(tr.start, tr.step, "Australia/Sydney", country="AU", subdiv="NSW", refit_days=100)

    q = make().quantiles(tr.load_kw, now, 96)
    assert np.all(q.p10 <= q.p50) and np.all(q.p50 <= q.p90) and np.all(q.p10 >= 0)
    future_changed = tr.load_kw.copy()
    future_changed[now:] = 9.0
    again = make().quantiles(future_changed, now, 96)
    assert np.array_equal(again.p10, q.p10) and np.array_equal(again.p90, q.p90)
    # coverage over the next two weeks of day-ahead forecasts: P10..P90 should hold most of the truth
    model, inside, total = make(), 0, 0
    for origin in range(now, now + 13 * 48, 24):
        qq = model.quantiles(tr.load_kw, origin, 48)
        actual = tr.load_kw[origin : origin + 48]
        inside += int(((actual >= qq.p10) & (actual <= qq.p90)).sum())
        total += len(actual)
    assert 0.55 <= inside / total <= 0.95


def test_gbm_state_round_trips_bounded_and_refuses_another_grid() -> None:
    tr = read_traces(str(TRACE)).head(40 * 48)
    now = 35 * 48  # so that 3 days less history still holds every lag (4 weeks + a day)
    model = GbmLoadForecaster(tr.start, tr.step, "Australia/Sydney", country="AU", subdiv="NSW")
    out = model.forecast(tr.load_kw, now, 48)
    model.quantiles(tr.load_kw, now, 48)
    blob = model.to_state()
    assert blob is not None and len(blob) <= MAX_STATE_BYTES
    # a new forecaster on a later grid (the planner's history window moves on) adopts it, predicts the same
    later = tr.start + tr.step * 48 * 3
    other = GbmLoadForecaster(later, tr.step, "Australia/Sydney", country="AU", subdiv="NSW")
    fitted = other.load_state(blob)
    assert fitted == tr.start + tr.step * now and other.fitted_at == now - 3 * 48
    assert np.allclose(other.forecast(tr.load_kw[3 * 48 :], now - 3 * 48, 48), out)
    wrong = GbmLoadForecaster(tr.start, timedelta(minutes=15), "Australia/Sydney", country="AU", subdiv="NSW")
    with pytest.raises(ValueError):
        wrong.load_state(blob)
    with pytest.raises(ValueError):
        other.load_state(b"not a model")


def test_gbm_learns_from_temperature_when_known() -> None:
    """Synthetic (the shipped real houses carry no temperature): a heat pump's load follows the cold."""
    step, spd = timedelta(hours=1), 24
    days = 70
    t = np.arange(days * spd)
    rng = np.random.default_rng(3)
    daily_temp = np.repeat(rng.normal(5.0, 5.0, days), spd)
    temp = daily_temp + 3.0 * np.sin(2 * np.pi * (t % spd - 9) / spd)
    load = 0.3 + 0.15 * np.clip(16.0 - temp, 0.0, None) + 0.05 * rng.standard_normal(len(t))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    errs = {}
    for name, temperature in (("without", None), ("with", temp)):
        model = GbmLoadForecaster(start, step, "UTC", temperature_c=temperature)
        e = [np.abs(model.forecast(load, o, 24) - load[o : o + 24]).mean() for o in range(56 * spd, 69 * spd, 12)]
        errs[name] = float(np.mean(e))
    assert errs["with"] < 0.6 * errs["without"]
