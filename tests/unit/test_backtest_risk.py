"""Risk in the backtest: planning on a load quantile, and the cost of the worst days (worked by hand)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from cloud.backtest import Config, LoadModel, Traces, at_quantile, daily_costs, worst_days
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


def test_load_quantile_needs_the_quantile_forecaster() -> None:
    assert "needs --load-model gbm" in (config_problem(Config(load_quantile=0.7)) or "")
    assert "0.1 .. 0.9" in (config_problem(Config(load_model=LoadModel.GBM, load_quantile=0.95)) or "")
    assert config_problem(Config(load_model=LoadModel.GBM, load_quantile=0.7)) is None
