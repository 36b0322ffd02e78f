"""The PV site model (cloud/forecast_pv.py): fitted to telemetry with pvlib, never from the future.

Synthetic truth: a site made with pvlib's clear sky on a known plane (tilt 32°, azimuth 130°, 4.2 kW
effective, an inverter clipping at 3.4 kW, a shadow at one solar hour), under whole-day clouds and 2 % noise;
the fit must recover each part within a tolerance. Real data: the Ausgrid customer-12 house (bench/data),
whose orientation nobody registered, must come out as a plausible Sydney roof (facing north-ish) with an
effective size below its 1.04 kWp nameplate and a better day-ahead MAE than the factor model's.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from cloud.backtest import read_traces
from cloud.forecast import Location, PvArray, clear_sky, forecast_pv, learn_pv_factor
from cloud.forecast_pv import FitInput, PvSiteForecaster, PvSiteModel, SkyGrid, fit_pv_site

TRACE = Path(__file__).resolve().parents[2] / "bench" / "data" / "ausgrid_c12_nl_2023.csv"
DE_BILT = Location(52.1, 5.18)
Q = timedelta(minutes=15)
TRUTH = PvSiteModel(tilt_deg=32.0, azimuth_deg=130.0, kwp=4.2)


def _synthetic(days: int, *, shade_hour: int | None = None, seed: int = 1) -> tuple[SkyGrid, np.ndarray]:
    sky = SkyGrid.compute(DE_BILT, datetime(2026, 5, 1, tzinfo=UTC), Q, 96 * days)
    shade = [1.0] * 24
    if shade_hour is not None:
        shade[shade_hour] = 0.5
    truth = PvSiteModel(tilt_deg=TRUTH.tilt_deg, azimuth_deg=TRUTH.azimuth_deg, kwp=TRUTH.kwp, shade=shade)
    rng = np.random.default_rng(seed)
    clouds = np.repeat(rng.choice([1.0, 0.6, 0.3], size=days, p=[0.4, 0.3, 0.3]), 96)
    noise = 1.0 + 0.02 * rng.standard_normal(sky.n)
    return sky, np.minimum(truth.clear_kw(sky, 0, sky.n) * clouds * noise, 3.4)


def test_fit_recovers_a_known_orientation_size_and_clipping() -> None:
    sky, measured = _synthetic(28)
    fit = fit_pv_site(sky, FitInput(measured, 0, [PvArray(5.0, 35.0, 180.0)]))  # the registration is wrong
    assert fit.tilt_deg == pytest.approx(32.0, abs=3.0)
    assert fit.azimuth_deg == pytest.approx(130.0, abs=5.0)
    assert fit.kwp == pytest.approx(4.2, rel=0.05)
    assert fit.clip_kw == pytest.approx(3.4, rel=0.02)
    assert fit.days == 28 and fit.residual < 0.05
    assert max(abs(s - 1.0) for s in fit.shade) < 0.1  # no shading was put in
    # the typical factor is the median day: 0.6 of the clear days (40 % clear, 30 % at 0.6, 30 % at 0.3)
    assert 0.5 < fit.typical < 0.9


def test_fit_finds_an_hourly_shadow() -> None:
    sky, measured = _synthetic(28, shade_hour=14)
    fit = fit_pv_site(sky, FitInput(measured, 0, [PvArray(5.0, 35.0, 180.0)]))
    assert fit.shade[14] == pytest.approx(0.5, abs=0.1)
    assert all(abs(fit.shade[h] - 1.0) < 0.12 for h in range(24) if h != 14)


def test_cold_start_is_the_registration() -> None:
    arrays = [PvArray(3.0, 30.0, 90.0), PvArray(3.0, 30.0, 270.0)]
    model = PvSiteModel.default(arrays)
    assert model.days == 0 and model.tilt_deg == 30.0 and model.kwp == pytest.approx(6.0 * 0.85)
    assert model.azimuth_deg % 360 in (pytest.approx(0.0, abs=1e-6), pytest.approx(180.0, abs=1e-6))
    sky, measured = _synthetic(3)  # too little history: the default again
    assert fit_pv_site(sky, FitInput(measured, 0, arrays)) == model


def test_model_state_round_trips_and_rejects_garbage() -> None:
    sky, measured = _synthetic(14)
    fit = fit_pv_site(sky, FitInput(measured, 0, [PvArray(5.0)]))
    assert PvSiteModel.from_json(fit.to_json()) == fit
    assert len(fit.to_json()) < 1000  # bounded: a handful of numbers per site
    bad = fit.to_json().replace(b'"kwp":', b'"kwp":-')
    with pytest.raises(ValueError):
        PvSiteModel.from_json(bad)


def test_forecaster_uses_no_future_data() -> None:
    sky, measured = _synthetic(28)
    now = 20 * 96 + 37
    fc = PvSiteForecaster(sky, [PvArray(5.0)]).forecast(measured, now, 96)
    changed = measured.copy()
    changed[now:] = changed[now:][::-1] * 3.0
    assert np.array_equal(PvSiteForecaster(sky, [PvArray(5.0)]).forecast(changed, now, 96), fc)
    assert np.all(np.isfinite(fc)) and np.all(fc >= 0) and fc.max() <= 3.4 + 1e-9


def test_real_house_gives_a_sane_model_and_beats_the_factor() -> None:
    tr = read_traces(str(TRACE))
    loc = Location(-33.87, 151.21)
    registered = [PvArray(1.04, 20.0, 0.0)]
    sky = SkyGrid.compute(loc, tr.start, tr.step, tr.n)
    spd = tr.slots_per_day
    for day in (30, 120, 210, 300):  # every season
        a = (day - 28) * spd
        fit = fit_pv_site(sky, FitInput(tr.pv_kw[a : day * spd], a, registered))
        assert fit.days >= 20
        # a Sydney roof faces the equator (north, azimuth 0/360) give or take; its tilt is a roof's
        assert min(fit.azimuth_deg, 360.0 - fit.azimuth_deg) <= 60.0
        assert 5.0 <= fit.tilt_deg <= 45.0
        assert 0.5 <= fit.kwp <= 1.04  # effective below the nameplate
        out = fit.forecast(sky, day * spd, (day + 1) * spd)
        assert out.max() <= 1.04 and out[: 4 * 2].max() == 0.0  # local night (14:00 UTC = midnight)
    # day-ahead MAE over a season (origins at midnight UTC, ~10:00 local), fit vs factor
    clear = clear_sky(loc, registered, tr.start, tr.step, tr.n).pv_kw
    site = PvSiteForecaster(sky, registered)
    err_fit, err_factor = [], []
    for day in range(28, 120):
        k = day * spd
        actual = tr.pv_kw[k : k + spd]
        factor = learn_pv_factor(tr.pv_kw[k - 14 * spd : k], clear[k - 14 * spd : k], spd, 1.04)
        err_factor.append(np.abs(forecast_pv(clear[k : k + spd], factor) - actual).mean())
        err_fit.append(np.abs(site.forecast(tr.pv_kw, k, spd) - actual).mean())
    assert np.mean(err_fit) < np.mean(err_factor)
