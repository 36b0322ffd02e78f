"""The factor PV forecast's winter bias on the real houses, its two causes, and the fixes' effect on them.

Real data: both measured houses of bench/data (OPSD DE_KN_residential4, Konstanz, hourly, 2016; Ausgrid
customer 12, Sydney, half-hourly, 2011-07..2012-06; sources in bench/data/README.md). Each test takes one
winter slice of a house (Konstanz November-December, Ausgrid July-August, its southern winter) and re-makes the
backtest's first-slot PV forecast for every slot of it (the 14-day factor learned at the start of each UTC day,
as `cloud.backtest.Planner._pv_model` does), against the recorded PV:

* the intraday nowcast's ratio bound 1.6 cuts every bright winter day, because in winter the typical factor is
  0.3-0.5 and a clear hour is 2-3 times the typical forecast (Konstanz);
* the clear-sky shape of the registered array is wrong by hour of day (too much in the morning, too little in
  the afternoon); the day-total factor cannot see that, and the nowcast carries a morning's shortfall into
  the next hours as if it were clouds (both houses).

Figures for the whole years: docs/cloud-planning.md, "PV forecast bias".
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cloud.backtest import Config, Traces, read_traces, rolling_flows
from cloud.forecast import (
    NOWCAST_RECENT_H,
    FloatArray,
    Location,
    PvArray,
    PvShape,
    clear_sky,
    forecast_pv,
    learn_pv_factor,
    learn_pv_shape,
    pv_nowcast,
)

DATA = Path(__file__).resolve().parents[2] / "bench" / "data"
KONSTANZ = ("opsd_kn_res4_nl_2023.csv", Location(47.66, 9.18), PvArray(10.1, 28.0, 208.0))
AUSGRID = ("ausgrid_c12_nl_2023.csv", Location(-33.87, 151.21), PvArray(1.04, 20.0, 0.0))
DEFAULT_BOUNDS = (0.2, 1.6)
UNCAPPED = (0.2, 5.0)


def first_slot_errors(
    house: tuple[str, Location, PvArray], days: range, *, shape: bool, bounds: tuple[float, float]
) -> tuple[FloatArray, float]:
    """(forecast - measured energy per slot of the UTC day, summed over `days`; the measured energy)."""
    name, site, array = house
    tr = read_traces(str(DATA / name))
    spd, dt = tr.slots_per_day, tr.dt_h
    sky = clear_sky(site, [array], tr.start, tr.step, tr.n).pv_kw
    recent = round(NOWCAST_RECENT_H / dt)
    err = np.zeros(spd)
    for day in days:
        k0, lo = day * spd, (day - 14) * spd
        factor = learn_pv_factor(tr.pv_kw[lo:k0], sky[lo:k0], spd, array.kwp)
        hourly = learn_pv_shape(tr.pv_kw[lo:k0], sky[lo:k0], spd, array.kwp, factor.typical)
        if not shape:
            hourly = PvShape.flat(spd)
        for j in range(spd):
            k = k0 + j
            fc = forecast_pv(sky[k : k + 1], factor) * hourly.at(j, 1)
            before = forecast_pv(sky[k - recent : k], factor) * hourly.at(j - recent, recent)
            fc = pv_nowcast(fc, tr.pv_kw[k - recent : k], before, dt, array.kwp, ratio_bounds=bounds)
            err[j] += (fc[0] - tr.pv_kw[k]) * dt
    return err, float(tr.pv_kw[days.start * spd : days.stop * spd].sum() * dt)


def test_konstanz_winter_the_nowcast_cap_makes_the_forecast_low() -> None:
    """Konstanz, 1 November - 31 December 2016: the default forecast of the slots a plan executes is 18 % low
    (measured: -132 of 744 kWh); the factor alone is not (+17). Letting the ratio reach the clear-sky day
    (bound 5) removes most of it; with the site's own hour-of-day shape it is within a few per cent and the
    hour-by-hour error falls to a third."""
    days = range(305, 366)
    capped, measured = first_slot_errors(KONSTANZ, days, shape=False, bounds=DEFAULT_BOUNDS)
    assert capped.sum() < -0.12 * measured
    uncapped, _ = first_slot_errors(KONSTANZ, days, shape=False, bounds=UNCAPPED)
    assert abs(uncapped.sum()) < abs(capped.sum()) / 3
    fixed, _ = first_slot_errors(KONSTANZ, days, shape=True, bounds=UNCAPPED)
    assert abs(fixed.sum()) < 0.05 * measured
    assert np.abs(fixed).sum() < np.abs(capped).sum() / 3


def test_ausgrid_winter_the_wrong_shape_makes_the_nowcast_low() -> None:
    """Ausgrid, July-August 2011 (its winter): the nowcast makes the first-slot forecast 10 % low (-18 of
    182 kWh); the cause is the shape (the factor alone is too high in the morning, too low in the afternoon, and
    the nowcast carries the morning's shortfall forward), not the cap (uncapped it is still 8 % low). With the
    site's own hour-of-day shape the bias is within 2 % and the hour-by-hour error falls to a tenth."""
    days = range(14, 74)
    plain, measured = first_slot_errors(AUSGRID, days, shape=False, bounds=DEFAULT_BOUNDS)
    assert plain.sum() < -0.08 * measured
    uncapped, _ = first_slot_errors(AUSGRID, days, shape=False, bounds=UNCAPPED)
    assert uncapped.sum() < -0.06 * measured
    fixed, _ = first_slot_errors(AUSGRID, days, shape=True, bounds=DEFAULT_BOUNDS)
    assert abs(fixed.sum()) < 0.02 * measured
    assert np.abs(fixed).sum() < np.abs(plain).sum() / 5


def test_shape_keeps_the_window_total_and_is_flat_without_evidence() -> None:
    spd, kwp = 24, 5.0
    hours = np.arange(14 * spd) % spd
    clear = np.clip(np.sin((hours - 6) / 12 * np.pi), 0.0, None) * kwp
    # a site shaded before noon: 40 % of the clear-sky curve in the morning, 80 % after
    measured = clear * np.where(hours < 12, 0.4, 0.8)
    factor = learn_pv_factor(measured, clear, spd, kwp)
    shape = learn_pv_shape(measured, clear, spd, kwp, factor.typical)
    assert shape.factors[8] < 1.0 < shape.factors[15]
    sunny = clear > 0.02 * kwp
    total = (clear * factor.typical * shape.at(-len(clear), len(clear)))[sunny].sum()
    assert total == pytest.approx(measured[sunny].sum())
    assert np.array_equal(learn_pv_shape(np.zeros(0), np.zeros(0), spd, kwp, 0.6).factors, np.ones(spd))
    holey = measured.copy()
    holey[:] = np.nan  # no complete day: nothing learned
    assert np.array_equal(learn_pv_shape(holey, clear, spd, kwp, 0.6).factors, np.ones(spd))
    assert np.all(np.isfinite(shape.factors)) and shape.factors.min() >= 0.0 and shape.factors.max() <= 2.0


def test_shape_and_uncapped_nowcast_use_no_future_pv() -> None:
    """The backtest with --pv-shape: changing the measured PV and load from slot k on changes nothing the site
    did before k (16 days of the Ausgrid house, so the shape is learned from full 14-day windows)."""
    tr = read_traces(str(DATA / AUSGRID[0])).head(16 * 48)
    cfg = Config(
        tz="Australia/Sydney",
        lat=-33.87,
        lon=151.21,
        pv_kwp=1.04,
        tilt_deg=20.0,
        azimuth_deg=0.0,
        horizon_hours=36.0,
        pv_shape=True,
    )
    k = 15 * 48 + 7
    changed = Traces(
        tr.start,
        tr.step,
        tr.import_price,
        tr.export_price,
        np.concatenate([tr.load_kw[:k], tr.load_kw[k:] * 2.5 + 0.3]),
        np.concatenate([tr.pv_kw[:k], tr.pv_kw[k:] * 0.2]),
    )
    c1, d1, _, _ = rolling_flows(tr, cfg)
    c2, d2, _, _ = rolling_flows(changed, cfg)
    assert np.array_equal(c1[:k], c2[:k]) and np.array_equal(d1[:k], d2[:k])
    c0, d0, _, _ = rolling_flows(tr, replace(cfg, pv_shape=False))
    assert not (np.array_equal(c0[14 * 48 :], c1[14 * 48 :]) and np.array_equal(d0[14 * 48 :], d1[14 * 48 :]))


def test_bias_tool_runs_on_a_real_slice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m bench.pv_bias` (the docs' tables) on the first 20 days of the Ausgrid trace: every variant
    reported, every forecast a finite number, and the factor-only forecast as the backtest makes it."""
    from bench import pv_bias

    lines = (DATA / AUSGRID[0]).read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("ts,"))
    trace = tmp_path / "slice.csv"
    trace.write_text("\n".join(lines[: header + 1 + 20 * 48]) + "\n")
    assert pv_bias.main([str(trace)]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in pv_bias.VARIANTS)
    frame, _, _ = pv_bias.forecasts(str(trace))
    assert np.isfinite(frame.drop(columns=["pv", "sky"]).to_numpy()).all()
    tr = read_traces(str(trace))
    site, array = AUSGRID[1], AUSGRID[2]
    sky = clear_sky(site, [array], tr.start, tr.step, tr.n).pv_kw
    k = 15 * 48  # where the frame starts: after the 14-day window and a day of lead
    factor = learn_pv_factor(tr.pv_kw[k - 14 * 48 : k], sky[k - 14 * 48 : k], 48, array.kwp)
    expected = forecast_pv(sky[k : k + 48], factor)
    assert np.allclose(frame["factor"].to_numpy()[:48], expected)
