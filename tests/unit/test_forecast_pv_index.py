"""The PV forecast's day level from a regional day-ahead PV forecast (`cloud.forecast_pv_index`, `--pv-index`).

A site whose PV is the region's scaled is forecast exactly once its ratio is learnt; each day's ratio reads only
the days before it; a day's index is used only once it is published; the rolling backtest reads no PV measured
after a decision and no index of a day not yet published; the file reader refuses bad values with the line.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from cloud.backtest import Config, Planner, Traces, rolling_flows
from cloud.backtest_config import config_from_args, options_problem
from cloud.cli import build_parser, main
from cloud.forecast import Location, PvArray, clear_sky
from cloud.forecast_pv_index import (
    MIN_INDEX_DAYS,
    PvIndexError,
    index_days,
    index_outlook,
    index_ratios,
    read_pv_index,
)

SITE = Location(47.66, 9.18)
ARRAY = PvArray(10.0, 30.0, 180.0)
STEP = timedelta(hours=1)
START = datetime(2016, 3, 31, 22, tzinfo=UTC)  # local midnight (CEST) on the trace's first row


def _days(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.1, 1.0, n)


def _site(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(measured kW, clear-sky kW) over len(k) days, a day more of clear sky: each day the sky × its clearness."""
    sky = clear_sky(SITE, [ARRAY], START, STEP, (len(k) + 2) * 24).pv_kw
    return sky[: len(k) * 24] * np.repeat(k, 24), sky


def test_a_site_that_is_the_region_scaled_is_forecast_exactly() -> None:
    k = _days(40, seed=1)
    measured, sky = _site(k)
    region = 250.0 * measured  # MW of a control area whose weather is the site's
    days = index_days(measured, sky[: len(measured)], region, 24, ARRAY.kwp)
    assert np.all(np.isnan(days.beta[:MIN_INDEX_DAYS]))  # too few days before them
    assert np.allclose(days.beta[MIN_INDEX_DAYS:], 1 / 250.0)
    assert np.allclose(days.residual[MIN_INDEX_DAYS:], 1.0)
    outlook = index_outlook(days, 30)
    assert outlook is not None and outlook.spread == pytest.approx((1.0, 1.0))
    assert outlook.level(float(days.index[30]), float(days.clear[30])) == pytest.approx(k[30])
    assert index_outlook(days, MIN_INDEX_DAYS + 2) is None  # too few residuals yet
    assert outlook.level(float("nan"), 5.0) != outlook.level(float("nan"), 5.0)  # unknown index: NaN


def test_each_days_ratio_reads_only_the_days_before_it() -> None:
    k = _days(40, seed=2)
    measured, sky = _site(k)
    region = 250.0 * measured * np.repeat(_days(40, seed=3), 24)  # a region that only partly follows the site
    a = index_days(measured, sky[: len(measured)], region, 24, ARRAY.kwp)
    changed = measured.copy()
    changed[25 * 24 :] *= 0.2
    b = index_days(changed, sky[: len(measured)], region, 24, ARRAY.kwp)
    assert np.array_equal(a.beta[:26], b.beta[:26], equal_nan=True)
    assert not np.allclose(a.beta[27:], b.beta[27:])
    assert np.array_equal(a.residual[:25], b.residual[:25], equal_nan=True)
    shorter = index_days(measured[: 25 * 24 + 5], sky[: len(measured)], region, 24, ARRAY.kwp)
    assert np.array_equal(shorter.beta[:26], a.beta[:26], equal_nan=True)
    assert np.all(np.isnan(shorter.residual[25:]))  # not measured yet: no residual


def test_the_index_days_ratios_replace_only_their_slots() -> None:
    dark, bright = np.full(4, 0.5), np.full(4, 1.5)
    pairs = np.array([[np.nan, np.nan], [0.7, 1.2], [0.7, 1.2], [np.nan, np.nan]])
    d, b = index_ratios((dark, bright), pairs)
    assert np.array_equal(d, [0.5, 0.7, 0.7, 0.5]) and np.array_equal(b, [1.5, 1.2, 1.2, 1.5])
    assert np.array_equal(dark, np.full(4, 0.5))  # the inputs are not changed


def _trace(days: int, seed: int) -> tuple[Traces, np.ndarray]:
    """A site, and a region whose day is the site's with noise (the index)."""
    k = _days(days, seed)
    measured, _ = _site(k)
    n = len(measured)
    prices = 0.2 + 0.1 * np.sin(np.arange(n) * 2 * np.pi / 24)
    noise = np.repeat(np.random.default_rng(seed + 1).uniform(0.7, 1.3, days), 24)
    region = 300.0 * measured * noise
    return Traces(START, STEP, prices, prices - 0.1, np.full(n, 0.8), measured, pv_index=region), region


def _cfg(**kw: object) -> Config:
    cfg = Config(lat=SITE.lat, lon=SITE.lon, pv_kwp=ARRAY.kwp, tilt_deg=30.0, horizon_hours=36.0, replan_hours=3.0)
    return replace(cfg, **kw)  # type: ignore[arg-type]


def test_a_day_is_planned_on_its_index_only_once_published() -> None:
    tr, region = _trace(30, seed=4)
    day = 25
    evening = day * 24 - 7  # 17:00 the day before: tomorrow's index not published (6 h before the day)
    after = day * 24 - 5  # 19:00: published
    for k, published in ((evening, False), (after, True)):
        changed = replace(tr, pv_index=region.copy())
        assert changed.pv_index is not None
        changed.pv_index[day * 24 : (day + 1) * 24] *= 0.3  # tomorrow looks dark in the region
        a, b = Planner(tr, _cfg()), Planner(changed, _cfg())
        pv_a, pv_b = a.forecasts(k, 36)[1], b.forecasts(k, 36)[1]
        tomorrow = slice(day * 24 - k, (day + 1) * 24 - k)
        if published:
            assert pv_b[tomorrow].sum() < 0.5 * pv_a[tomorrow].sum()
        else:
            assert np.array_equal(pv_a, pv_b)
    late = Planner(tr, _cfg(pv_index_lead_hours=0.0))  # published at the day's first slot only
    early = Planner(tr, _cfg())
    assert not np.array_equal(late.forecasts(after, 36)[1], early.forecasts(after, 36)[1])


def test_rolling_plans_with_an_index_use_no_future_pv_or_unpublished_index() -> None:
    tr, region = _trace(24, seed=5)
    cfg = _cfg(scenarios=True)
    k = 20 * 24 + 9
    changed = replace(tr, pv_kw=tr.pv_kw.copy(), pv_index=region.copy())
    changed.pv_kw[k:] *= 0.3
    assert changed.pv_index is not None
    changed.pv_index[21 * 24 :] *= 0.2  # the day after tomorrow of slot k and later: published after k
    c1, d1, _, _ = rolling_flows(tr, cfg)
    c2, d2, _, _ = rolling_flows(changed, cfg)
    assert np.array_equal(c1[:k], c2[:k]) and np.array_equal(d1[:k], d2[:k])
    c0, d0, _, _ = rolling_flows(replace(tr, pv_index=None), cfg)
    assert not (np.array_equal(c0, c1) and np.array_equal(d0, d1))


def test_the_index_file_is_read_onto_the_trace_grid(tmp_path: Path) -> None:
    path = tmp_path / "index.csv"
    rows = "2016-04-01T00:00:00Z,1.5\n2016-04-01T01:00:00Z,\n2016-04-01T02:00:00+00:00,3\n"
    path.write_text("# a comment\nts,value\n" + rows)
    start = datetime(2016, 3, 31, 23, 30, tzinfo=UTC)
    out = read_pv_index(str(path), start, timedelta(minutes=30), 8)
    assert np.array_equal(out, [np.nan, 1.5, 1.5, np.nan, np.nan, 3.0, 3.0, np.nan], equal_nan=True)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("ts,value\n2016-04-01T00:00:00Z,nan\n2016-04-01T01:00:00Z,1\n", "line 2: value = 'nan'"),
        ("ts,value\n2016-04-01T00:00:00Z,-1\n2016-04-01T01:00:00Z,1\n", "line 2: value = '-1'"),
        ("ts,value\n2016-04-01T00:00:00Z,1e9\n2016-04-01T01:00:00Z,1\n", "line 2: value = '1e9'"),
        ("ts,value\n2016-04-01T00:00:00,1\n2016-04-01T01:00:00Z,1\n", "line 2: ts 2016-04-01T00:00:00 without UTC"),
        ("ts,value\n2016-04-01T01:00:00Z,1\n2016-04-01T00:00:00Z,1\n", "line 3: 2016-04-01T00:00:00Z is not after"),
        ("ts,value\n2016-04-01T00:00:00Z,x\n2016-04-01T01:00:00Z,1\n", "line 2:"),
        ("time,mw\n2016-04-01T00:00:00Z,1\n", "the columns ts,value"),
        ("ts,value\n2016-04-01T00:00:00Z,1\n", "at least two rows"),
    ],
)
def test_a_bad_index_file_is_refused_with_its_line(tmp_path: Path, body: str, words: str) -> None:
    path = tmp_path / "index.csv"
    path.write_text(body)
    with pytest.raises(PvIndexError) as err:
        read_pv_index(str(path), START, STEP, 4)
    assert words in str(err.value) and str(path) in str(err.value)


REAL = Path(__file__).resolve().parents[2] / "bench" / "data"


def test_the_cli_plans_on_the_real_regional_forecast_and_refuses_a_bad_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three January days of the real Konstanz house with APG's real day-ahead forecast of Austria's PV."""
    trace, index = str(REAL / "opsd_kn_res4_nl_2023.csv"), str(REAL / "apg_at_solar_dayahead_utc.csv")
    assert main(["backtest", trace, "--days", "3", "--no-oracle", "--pv-index", index]) == 0
    assert "planner" in capsys.readouterr().out
    bad = tmp_path / "index.csv"
    bad.write_text("ts,value\n2016-01-01T00:00:00Z,inf\n2016-01-01T01:00:00Z,1\n")
    assert main(["backtest", trace, "--days", "3", "--no-oracle", "--pv-index", str(bad)]) == 2
    assert "line 2: value = 'inf'" in capsys.readouterr().err
    assert main(["backtest", trace, "--days", "3", "--pv-index", index, "--pv-persistence"]) == 2
    assert "--pv-index and --pv-persistence" in capsys.readouterr().err


def test_the_options_are_parsed_and_bounded() -> None:
    parser = build_parser()
    args = parser.parse_args(["backtest", "x.csv", "--pv-index", "i.csv", "--pv-index-lead-hours", "3"])
    assert args.pv_index == "i.csv" and config_from_args(args).pv_index_lead_hours == 3.0
    assert config_from_args(parser.parse_args(["backtest", "x.csv"])).pv_index_lead_hours == 6.0
    for bad in ("-1", "49", "nan"):
        problem = options_problem(parser.parse_args(["backtest", "x.csv", "--pv-index-lead-hours", bad]))
        assert problem is not None and "--pv-index-lead-hours" in problem
