"""Backtest: settlement, the four strategies on a week of the synthetic year, no peeking, the CLI."""

from __future__ import annotations

from dataclasses import replace
from datetime import time
from pathlib import Path

import numpy as np
import pytest

from cloud.backtest import (
    Config,
    TraceError,
    Traces,
    known_price_slots,
    no_battery,
    read_traces,
    rolling_flows,
    run,
    self_consumption,
    settle,
)
from cloud.cli import main

DATA = Path(__file__).resolve().parents[2] / "bench" / "data" / "synthetic_nl_2025_hourly.csv"


@pytest.fixture(scope="module")
def week() -> Traces:
    full = read_traces(str(DATA))
    a, b = 150 * 24, 157 * 24  # a week in June: sun, a price dip at midday
    return Traces(
        full.start + full.step * a,
        full.step,
        full.import_price[a:b],
        full.export_price[a:b],
        full.load_kw[a:b],
        full.pv_kw[a:b],
    )


def test_the_data_file_is_a_year_and_small() -> None:
    assert DATA.stat().st_size < 2_000_000
    tr = read_traces(str(DATA))
    assert tr.n == 8760
    assert "SYNTHETIC" in DATA.read_text().splitlines()[0]


def test_settlement_worked_example() -> None:
    tr = Traces(
        read_traces(str(DATA)).start,
        read_traces(str(DATA)).step,
        import_price=np.array([0.30, 0.30, 0.10]),
        export_price=np.array([0.05, -0.02, 0.05]),
        load_kw=np.array([1.0, 0.5, 0.5]),
        pv_kw=np.array([0.0, 2.0, 0.0]),
    )
    # slot 0 imports 1 kWh at 0.30; slot 1 would export 1.5 kWh at -0.02, so PV is curtailed (0);
    # slot 2 imports 0.5 kWh at 0.10 → 0.30 + 0 + 0.05
    assert no_battery(tr).cost == pytest.approx(0.35)
    # discharge 1 kW in slot 0, charge 1 kW in slot 1 (from the PV that would be curtailed): wear 2 × 0.02
    out = settle(tr, np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0]), 0.02, "x")
    assert out.cost == pytest.approx(0.0 + 0.0 + 0.05 + 0.04)
    assert out.throughput_kwh == pytest.approx(2.0)


def test_strategies_are_ordered_and_the_planner_captures_most(week: Traces) -> None:
    report = run(week, Config())
    none = report.by_name("no battery").cost
    rules = report.by_name("self-consumption rules").cost
    planner = report.by_name("planner").cost
    best = report.by_name("perfect foresight").cost
    assert best <= planner + 1e-6 and best <= rules + 1e-6 and best < none
    assert planner < none
    assert 0.6 < report.capture_ratio <= 1.0 + 1e-9
    assert report.replans == week.n


def test_no_peeking_at_the_future(week: Traces) -> None:
    """Changing load and PV after slot k changes nothing the planner did before k."""
    k = 80
    changed = replace(
        week,
        load_kw=np.concatenate([week.load_kw[:k], week.load_kw[k:] * 3.0]),
        pv_kw=np.concatenate([week.pv_kw[:k], week.pv_kw[k:] * 0.1]),
    )
    cfg = Config()
    c1, d1, _, _ = rolling_flows(week, cfg)
    c2, d2, _, _ = rolling_flows(changed, cfg)
    assert np.array_equal(c1[:k], c2[:k]) and np.array_equal(d1[:k], d2[:k])
    assert not np.array_equal(c1[k:], c2[k:])


def test_prices_are_known_only_after_publication(week: Traces) -> None:
    # week starts at 00:00 UTC; with a UTC site publishing at 12:00: until then only today's, then tomorrow's too
    utc = Config(tz="UTC", price_publication=time(12, 0))
    assert known_price_slots(week, 0, utc) == 24
    assert known_price_slots(week, 11, utc) == 13
    assert known_price_slots(week, 12, utc) == 36
    # a Dutch site in summer (UTC+2) learns tomorrow's prices at 13:00 local = 11:00 UTC, days end at 22:00 UTC
    nl = Config(tz="Europe/Amsterdam", price_publication=time(13, 0))
    assert known_price_slots(week, 0, nl) == 22
    assert known_price_slots(week, 10, nl) == 12
    assert known_price_slots(week, 11, nl) == 35


def test_self_consumption_never_charges_from_the_grid(week: Traces) -> None:
    out = self_consumption(week, Config())
    assert out.import_kwh <= no_battery(week).import_kwh


def test_cli_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backtest", str(DATA), "--days", "3", "--battery-kwh", "8"]) == 0
    out = capsys.readouterr().out
    for name in ("no battery", "self-consumption rules", "planner", "perfect foresight", "capture ratio"):
        assert name in out


def test_cli_bad_trace_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "t.csv"
    bad.write_text("ts,import_price,export_price,load_kw\n2025-01-01T00:00:00Z,1,1,1\n")
    assert main(["backtest", str(bad)]) == 2
    assert "missing columns pv_kw" in capsys.readouterr().err
    bad.write_text(
        "ts,import_price,export_price,load_kw,pv_kw\n2025-01-01T00:00:00Z,1,1,1,0\n2025-01-01T01:00:00Z,1,1,1,0\n"
        "2025-01-01T03:00:00Z,1,1,1,0\n"
    )
    with pytest.raises(TraceError, match="line 4"):
        read_traces(str(bad))
    assert main(["backtest", str(tmp_path / "missing.csv")]) == 2
