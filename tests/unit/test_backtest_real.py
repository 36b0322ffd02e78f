"""The backtest on a real house: it uses no future data, and the edge it simulates is zapd's own code.

Fixture: the first days of `bench/data/ausgrid_c12_nl_2023.csv` (a real measured household under real NL 2023
day-ahead prices, see bench/data/README.md).
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import numpy as np
import pytest

import zapd.controller
from cloud import backtest
from cloud.backtest import Config, Traces, price_outlook, read_traces, rolling_flows
from cloud.backtest_config import LoadModel, PvModel
from cloud.cli import main
from cloud.execution import Execution
from cloud.forecast_price import forecast_prices

TRACE = Path(__file__).resolve().parents[2] / "bench" / "data" / "ausgrid_c12_nl_2023.csv"
SITE = Config(
    tz="Australia/Sydney", lat=-33.87, lon=151.21, pv_kwp=1.04, tilt_deg=20.0, azimuth_deg=0.0, horizon_hours=36.0
)
SITE_ARGS = ["--tz", "Australia/Sydney", "--lat", "-33.87", "--lon", "151.21", "--pv-kwp", "1.04", "--azimuth", "0"]


@pytest.fixture(scope="module")
def days() -> Traces:
    return read_traces(str(TRACE)).head(4 * 48)


def _changed_after(tr: Traces, k: int) -> Traces:
    return Traces(
        tr.start,
        tr.step,
        tr.import_price,
        tr.export_price,
        np.concatenate([tr.load_kw[:k], tr.load_kw[k:] * 2.5 + 0.3]),
        np.concatenate([tr.pv_kw[:k], tr.pv_kw[k:] * 0.2]),
    )


@pytest.mark.parametrize("execution", list(Execution))
def test_no_load_or_pv_from_the_future(days: Traces, execution: Execution) -> None:
    """Changing the measured load and PV from slot k on changes nothing the site did before k."""
    cfg = _with(SITE, execution=execution)
    k = 3 * 48 + 7
    c1, d1, _, _ = rolling_flows(days, cfg)
    c2, d2, _, _ = rolling_flows(_changed_after(days, k), cfg)
    assert np.array_equal(c1[:k], c2[:k]) and np.array_equal(d1[:k], d2[:k])
    assert not (np.array_equal(c1[k:], c2[k:]) and np.array_equal(d1[k:], d2[k:]))


def test_scenario_plans_use_no_future_load_or_pv(days: Traces) -> None:
    """--scenarios (two-stage over PV weather scenarios) sees no more of the future than the point plan, and
    its shared first-slot decision is what the edge executes: it differs from the point plan's somewhere."""
    cfg = _with(SITE, scenarios=True)
    k = 3 * 48 + 7
    c1, d1, _, _ = rolling_flows(days, cfg)
    c2, d2, _, _ = rolling_flows(_changed_after(days, k), cfg)
    assert np.array_equal(c1[:k], c2[:k]) and np.array_equal(d1[:k], d2[:k])
    c0, d0, _, _ = rolling_flows(days, _with(SITE, scenarios=False))
    assert not (np.array_equal(c0, c1) and np.array_equal(d0, d1))


@pytest.mark.parametrize("price_forecast", [False, True])
def test_no_prices_before_they_are_published(days: Traces, price_forecast: bool) -> None:
    """Tomorrow's prices changed: nothing before their publication (13:00 site time) may differ.

    With --price-forecast the planner plans past the published prices, on prices forecast from published ones.
    """
    cfg = _with(SITE, price_forecast=price_forecast)
    zone = SITE.zone
    day2 = datetime(2011, 7, 3, tzinfo=zone)  # local midnight starting day 3 of the trace
    publish = datetime(2011, 7, 2, 13, 0, tzinfo=zone)
    a = int((day2.astimezone(UTC) - days.start) // days.step)
    p = int((publish.astimezone(UTC) - days.start) // days.step)
    changed = Traces(
        days.start,
        days.step,
        np.concatenate([days.import_price[:a], days.import_price[a:] * 3.0]),
        np.concatenate([days.export_price[:a], days.export_price[a:] * 3.0]),
        days.load_kw,
        days.pv_kw,
    )
    c1, d1, _, _ = rolling_flows(days, cfg)
    c2, d2, _, _ = rolling_flows(changed, cfg)
    assert np.array_equal(c1[:p], c2[:p]) and np.array_equal(d1[:p], d2[:p])
    assert not (np.array_equal(c1[p:a], c2[p:a]) and np.array_equal(d1[p:a], d2[p:a]))


def test_the_edge_is_zapds_controller_code(days: Traces, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every slot's battery power goes through the daemon's ladder, intent resolution and envelope."""
    assert backtest.decide_batteries is zapd.controller.decide_batteries
    calls = {"choose": 0, "resolve": 0, "clamp": 0}
    real = (zapd.controller.choose, zapd.controller.resolve_battery_w, zapd.controller.clamp_batteries)

    def spy(name: str, fn):  # type: ignore[no-untyped-def]
        def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(zapd.controller, "choose", spy("choose", real[0]))
    monkeypatch.setattr(zapd.controller, "resolve_battery_w", spy("resolve", real[1]))
    monkeypatch.setattr(zapd.controller, "clamp_batteries", spy("clamp", real[2]))
    tr = days.head(48)
    _, _, _, log = rolling_flows(tr, SITE)
    assert calls == {"choose": tr.n, "resolve": tr.n, "clamp": tr.n}
    assert all(r.startswith("plan/") for r in log.intent)  # the ladder's PLAN rung ran every slot


def test_envelope_decides_what_the_battery_gets(days: Traces) -> None:
    """A reserve the plan does not know about is still enforced by the envelope: the battery never goes below."""
    cfg = _with(SITE, soc_min=0.4, soc_initial=0.45)
    charge, discharge, _, log = rolling_flows(days, cfg)
    assert np.nanmin(log.soc) >= 0.4 - 1e-9
    assert float(np.max(charge)) <= cfg.battery_kw + 1e-9 and float(np.max(discharge)) <= cfg.battery_kw + 1e-9


def test_cli_options_csv_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    slots, png = tmp_path / "slots.csv", tmp_path / "plot.png"
    args = ["backtest", str(TRACE), *SITE_ARGS, "--days", "2", "--battery-kwh", "6", "--battery-kw", "3"]
    args += ["--efficiency", "0.9", "--soc-min", "0.2", "--soc-max", "0.9", "--soc-initial", "0.3"]
    args += ["--grid-import-kw", "9", "--grid-export-kw", "5", "--price-publication", "12:30"]
    args += ["--execution", "setpoint", "--slots-csv", str(slots), "--plot", str(png), "--plot-days", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "capture ratio" in out and "planner - rule" in out
    rows = slots.read_text().splitlines()
    assert rows[0].startswith("ts,import_price,export_price,load_kw,pv_kw,load_forecast_kw") and len(rows) == 97
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--soc-min", "0.9", "--soc-max", "0.5"], "soc-min"),
        (["--efficiency", "1.5"], "efficiency"),
        (["--tz", "Mars/Olympus"], "time zone"),
        (["--battery-kwh", "nan"], "finite"),
    ],
)
def test_cli_refuses_bad_options(extra: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backtest", str(TRACE), "--days", "1", *extra]) == 2
    assert message in capsys.readouterr().err


def test_external_pv_forecast_column(tmp_path: Path) -> None:
    text = TRACE.read_text().splitlines()
    rows = [line for line in text if not line.startswith("#")][: 2 * 48 + 1]
    with_fc = [rows[0] + ",pv_service_kw", *(r + "," + r.split(",")[4] for r in rows[1:])]  # a perfect service
    path = tmp_path / "t.csv"
    path.write_text("\n".join(with_fc) + "\n")
    tr = read_traces(str(path), "pv_service_kw")
    assert tr.pv_forecast_kw is not None and np.array_equal(tr.pv_forecast_kw, tr.pv_kw)
    _, _, _, log = rolling_flows(tr, SITE)
    planned = ~np.isnan(log.pv_fc_kw)
    assert np.allclose(log.pv_fc_kw[planned], tr.pv_kw[planned])


def _with(cfg: Config, **changes: object) -> Config:
    from dataclasses import replace

    return replace(cfg, **changes)  # type: ignore[arg-type]


def test_price_outlook_fills_only_unpublished_slots_from_the_published_ones() -> None:
    price = np.arange(10.0)
    out = price_outlook(price, 0, 4, 10, 2)
    assert out[:4].tolist() == [0, 1, 2, 3]
    assert out[4:].tolist() == forecast_prices(price[:4], 6, 2).tolist()
    future = price.copy()
    future[4:] = 99.0
    assert price_outlook(future, 0, 4, 10, 2).tolist() == out.tolist()  # unpublished prices are never read
    assert price_outlook(price, 3, 7, 7, 2).tolist() == price[3:10].tolist()  # all published: untouched


def test_start_is_local_midnight(days: Traces) -> None:
    assert days.start.astimezone(SITE.zone).time() == time(0, 0)
    assert days.step == timedelta(minutes=30)


@pytest.fixture(scope="module")
def weeks() -> Traces:
    return read_traces(str(TRACE)).head(16 * 48)


def test_trained_forecasters_use_no_future_load_or_pv(weeks: Traces) -> None:
    """The trained forecasters (LightGBM load quantiles, the pvlib PV site model) see no more of the future than
    the default ones: 16 days, so both are past their cold start (14 and 7 days) and really plan the last days;
    changing load and PV from slot k on changes nothing the site did before k."""
    cfg = _with(SITE, load_model=LoadModel.GBM, pv_model=PvModel.FIT, load_quantile=0.7)
    k = 15 * 48 + 7
    c1, d1, _, _ = rolling_flows(weeks, cfg)
    c2, d2, _, _ = rolling_flows(_changed_after(weeks, k), cfg)
    assert np.array_equal(c1[:k], c2[:k]) and np.array_equal(d1[:k], d2[:k])
    c0, d0, _, _ = rolling_flows(weeks, SITE)
    warm = 14 * 48  # after both cold starts the trained models plan differently from the default ones
    assert not (np.array_equal(c0[warm:], c1[warm:]) and np.array_equal(d0[warm:], d1[warm:]))
