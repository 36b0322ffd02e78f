"""The price forecast past the published horizon (cloud/forecast_price.py): only published prices are used,
the blend is what the docstring says, and on the real ENTSO-E 2023 prices it beats day persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud.backtest import price_outlook, read_traces
from cloud.forecast_price import forecast_prices

DATA = Path(__file__).resolve().parents[2] / "bench" / "data"


def test_blend_of_latest_day_last_week_and_three_days() -> None:
    spd = 4
    history = np.arange(8 * spd, dtype=np.float64)  # 8 days, each slot's value its own index
    out = forecast_prices(history, 2 * spd, spd)
    n = len(history)
    for j in range(2 * spd):
        t = n + j
        latest = t - (j // spd + 1) * spd
        expect = 0.5 * history[latest] + 0.25 * history[t - 7 * spd]
        expect += 0.25 * (history[latest] + history[latest - spd] + history[latest - 2 * spd]) / 3
        assert out[j] == pytest.approx(expect)
    with pytest.raises(ValueError):
        forecast_prices(np.array([]), 4, spd)
    short = forecast_prices(np.array([0.1, 0.2]), 3, 2)  # less than a week: lags fall back, stay finite
    assert np.all(np.isfinite(short))


@pytest.mark.parametrize("name", ["ausgrid_c12_nl_2023.csv", "ausgrid_c12_be_2023.csv"])
def test_beats_day_persistence_on_real_prices(name: str) -> None:
    tr = read_traces(str(DATA / name))
    p, spd = tr.import_price, tr.slots_per_day
    blend, persistence = [], []
    for day in range(14, tr.n // spd - 2):
        a = (day + 1) * spd  # published through the end of `day`
        actual = p[a : a + 2 * spd]
        blend.append(np.abs(forecast_prices(p[:a], 2 * spd, spd) - actual).mean())
        persistence.append(np.abs(np.concatenate([p[a - spd : a], p[a - spd : a]]) - actual).mean())
    assert np.mean(blend) < 0.92 * np.mean(persistence)


def test_outlook_never_reads_unpublished_prices() -> None:
    rng = np.random.default_rng(5)
    price = rng.uniform(0.0, 0.4, 20 * 48)
    k, known = 15 * 48 + 7, 41
    out = price_outlook(price, k, known, 96, 48)
    changed = price.copy()
    changed[k + known :] = -1.0
    assert np.array_equal(price_outlook(changed, k, known, 96, 48), out)
    assert np.array_equal(out[:known], price[k : k + known])
