"""Load forecasters: persistence (the baseline), the seasonal profile, LightGBM; none may see the future.

On four weeks of the real Ausgrid household: the GBM's forecast must not depend on anything after its origin,
must fall back to the profile for a new site, and must be finite and non-negative.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from cloud.backtest import read_traces
from cloud.forecast import GbmLoadForecaster, forecast_load, forecast_load_persistence

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
