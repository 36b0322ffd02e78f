"""The intraday PV nowcast (`cloud.forecast.pv_nowcast`): the next hours' PV forecast scaled by how the last
hours came out against their own forecast, fading out.

Real data: both measured houses of bench/data (Ausgrid customer 12, Sydney, half-hourly; OPSD
DE_KN_residential4, Konstanz, hourly; sources in bench/data/README.md). The expected improvement is measured
against their recorded PV, not against anything this module computes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud.backtest import read_traces
from cloud.forecast import Location, PvArray, clear_sky, forecast_pv, learn_pv_factor, pv_nowcast

DATA = Path(__file__).resolve().parents[2] / "bench" / "data"
HOUSES = [
    ("ausgrid_c12_nl_2023.csv", Location(-33.87, 151.21), PvArray(1.04, 20.0, 0.0)),
    ("opsd_kn_res4_nl_2023.csv", Location(47.66, 9.18), PvArray(10.1, 28.0, 208.0)),
]


def test_no_evidence_leaves_the_forecast_alone() -> None:
    fc = np.array([1.0, 2.0, 3.0])
    night = np.zeros(2)
    assert np.array_equal(pv_nowcast(fc, night, night, 1.0, 5.0), fc)  # night: nothing to measure against
    nan = np.full(2, np.nan)
    assert np.array_equal(pv_nowcast(fc, nan, np.ones(2), 1.0, 5.0), fc)  # no measurements
    assert np.array_equal(pv_nowcast(fc, np.ones(2), np.ones(2), 1.0, 0.0), fc)  # no PV registered


def test_ratio_applies_now_fades_and_is_bounded() -> None:
    fc = np.full(48, 2.0)
    dim = pv_nowcast(fc, np.full(2, 1.0), np.full(2, 2.0), 1.0, 5.0)  # the last 2 h made half the forecast
    assert dim[0] == pytest.approx(1.0)
    assert np.all(np.diff(dim) > 0) and dim[-1] == pytest.approx(2.0, abs=1e-5)
    zero = pv_nowcast(fc, np.zeros(2), np.full(2, 2.0), 1.0, 5.0)  # snow on the panels: bounded, never 0
    assert zero[0] == pytest.approx(0.4)
    huge = pv_nowcast(fc, np.full(2, 50.0), np.full(2, 2.0), 1.0, 5.0)
    assert huge[0] == pytest.approx(3.2) and np.all(np.isfinite(huge))


@pytest.mark.parametrize(("name", "site", "array"), HOUSES)
def test_nowcast_lowers_the_next_hours_error_on_real_houses(name: str, site: Location, array: PvArray) -> None:
    """Forecasts made every slot from the 14-day factor, with and without the nowcast, against the recorded PV
    of the next 3 hours, over the year's daytime slots: the nowcast must cut the mean absolute error."""
    tr = read_traces(str(DATA / name))
    spd, dt = tr.slots_per_day, tr.dt_h
    sky = clear_sky(site, [array], tr.start, tr.step, tr.n).pv_kw
    lead, recent = round(3 / dt), round(2 / dt)
    err_plain = err_now = 0.0
    for day in range(14, tr.n // spd - 1):
        lo, k0 = (day - 14) * spd, day * spd
        factor = learn_pv_factor(tr.pv_kw[lo:k0], sky[lo:k0], spd, array.kwp)
        for k in range(k0, k0 + spd):
            if sky[k] <= 0.05 * array.kwp:
                continue
            base = forecast_pv(sky[k : k + lead], factor)
            now = pv_nowcast(base, tr.pv_kw[k - recent : k], forecast_pv(sky[k - recent : k], factor), dt, array.kwp)
            actual = tr.pv_kw[k : k + lead]
            err_plain += float(np.abs(base - actual).sum())
            err_now += float(np.abs(now - actual).sum())
    assert err_now < 0.9 * err_plain
