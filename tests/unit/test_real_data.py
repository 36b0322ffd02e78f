"""The real household (Ausgrid customer 12) and the real NL 2023 prices are what their sources say.

Expected values come from the sources, not from the files: the source repository's statistics for customer 12
(load about 5 900 kWh/yr, PV yield about 1 250 kWh/yr per kWp of 1.04 kWp, "no obvious missing data"), the
Sydney clock changes of 2011-10-02 and 2012-04-01 (the sun must move by an hour on the meter clock), and the
ENTSO-E NL 2023 facts (8 760 hours, 23/25-hour days, the -500 EUR/MWh floor hit on 2 July 2023).
"""

from __future__ import annotations

import csv
import itertools
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from cloud.backtest import read_traces

DATA = Path(__file__).resolve().parents[2] / "bench" / "data"
AMSTERDAM = ZoneInfo("Europe/Amsterdam")


def _pivot(name: str) -> dict[date, np.ndarray]:
    with (DATA / name).open(newline="") as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    return {date.fromisoformat(r["date"]): np.array([float(r[k]) for k in r if k != "date"]) for r in rows}


def _noon_of_production(day_w: np.ndarray) -> float:
    """Energy-weighted mean slot time of PV output, in hours on the meter clock."""
    t = np.arange(48) / 2 + 0.25
    return float((day_w * t).sum() / day_w.sum())


def test_house_year_is_complete_and_matches_the_source_statistics() -> None:
    load, pv = _pivot("ausgrid_c12_2011_2012_load_w.csv"), _pivot("ausgrid_c12_2011_2012_pv_w.csv")
    days = sorted(load)
    assert days == sorted(pv)
    assert days[0] == date(2011, 7, 1) and days[-1] == date(2012, 6, 30) and len(days) == 366
    assert all(len(v) == 48 for v in (*load.values(), *pv.values()))
    load_kwh = sum(v.sum() for v in load.values()) / 2000
    pv_kwh = sum(v.sum() for v in pv.values()) / 2000
    assert 5800 <= load_kwh <= 6000  # "yearly total of 5 900 kWh/yr"
    assert 0.95 * 1250 * 1.04 <= pv_kwh <= 1.05 * 1250 * 1.04  # "1250 kWh/yr/kWc", 1.04 kW capacity
    assert max(v.max() for v in pv.values()) <= 1040  # never above the nameplate
    assert max(v.max() for v in load.values()) <= 4000 * 1.1  # "max 4.0 kW" (half-hour mean)


def test_meter_clock_follows_sydney_daylight_saving() -> None:
    pv = _pivot("ausgrid_c12_2011_2012_pv_w.csv")
    week = timedelta(days=7)
    start, end = date(2011, 10, 2), date(2012, 4, 1)
    before = np.mean([_noon_of_production(pv[start - week + timedelta(d)]) for d in range(7)])
    after = np.mean([_noon_of_production(pv[start + timedelta(d + 1)]) for d in range(7)])
    assert 0.6 <= after - before <= 1.4  # solar noon moves ~1 h later on the meter clock
    before = np.mean([_noon_of_production(pv[end - week + timedelta(d)]) for d in range(7)])
    after = np.mean([_noon_of_production(pv[end + timedelta(d + 1)]) for d in range(7)])
    assert 0.6 <= before - after <= 1.4


def test_nl_prices_are_the_2023_day_ahead_year() -> None:
    with (DATA / "entsoe_nl_2023_dayahead.csv").open(newline="") as fh:
        text = fh.read()
    assert "ENTSO-E" in text and "10YNL----------L" in text and "MaykThewessen" in text
    rows = list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))
    stamps = [datetime.fromisoformat(r["ts"].replace("Z", "+00:00")) for r in rows]
    prices = np.array([float(r["price_eur_per_kwh"]) for r in rows])
    assert len(rows) == 8760 and stamps[0] == datetime(2022, 12, 31, 23, tzinfo=UTC)
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(stamps))
    per_day: dict[date, int] = {}
    for ts in stamps:
        per_day[ts.astimezone(AMSTERDAM).date()] = per_day.get(ts.astimezone(AMSTERDAM).date(), 0) + 1
    assert {d: n for d, n in per_day.items() if n != 24} == {date(2023, 3, 26): 23, date(2023, 10, 29): 25}
    assert 0.08 <= prices.mean() <= 0.11  # NL 2023 averaged ~96 EUR/MWh
    floor = [ts.astimezone(AMSTERDAM) for ts, p in zip(stamps, prices, strict=True) if p <= -0.5]
    assert floor and all(ts.date() == date(2023, 7, 2) for ts in floor)  # the -500 EUR/MWh Sunday


@pytest.mark.parametrize("zone", ["nl", "be"])
def test_real_trace_is_the_house_on_its_own_clock(zone: str) -> None:
    tr = read_traces(str(DATA / f"ausgrid_c12_{zone}_2023.csv"))
    assert tr.step == timedelta(minutes=30) and tr.n == 366 * 48
    assert tr.start == datetime(2011, 6, 30, 14, tzinfo=UTC)  # 2011-07-01 00:00 AEST
    assert abs(float(tr.load_kw.sum()) / 2 - 5939) < 1 and abs(float(tr.pv_kw.sum()) / 2 - 1296) < 1
    # PV only when the sun is up in Sydney (UTC+10/+11): never between 10:00 and 18:00 UTC
    hours = np.array([(tr.start + tr.step * i).hour for i in range(tr.n)])
    assert float(tr.pv_kw[(hours >= 10) & (hours < 18)].max()) <= 0.02
    assert np.all(tr.import_price > tr.export_price)
