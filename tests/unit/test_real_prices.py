"""The real price year (ENTSO-E day-ahead, Belgium 2023) and the backtest trace built on it are plausible.

`problems()` is the check; it is run on the committed file and on broken copies of it, so it is known to fail
when the file is wrong (a dropped, repeated or swapped hour, local time instead of UTC, EUR/MWh instead of
EUR/kWh, a missing source note). The converter's clock-change rules are checked on a made-up year in the
source's own format.
"""

from __future__ import annotations

import csv
import importlib.util
import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import ModuleType
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from cloud.backtest import read_traces

DATA = Path(__file__).resolve().parents[2] / "bench" / "data"
PRICES = DATA / "entsoe_be_2023_dayahead.csv"
TRACE = DATA / "be_2023_real_prices_hourly.csv"
BRUSSELS = ZoneInfo("Europe/Brussels")
FIRST = datetime(2022, 12, 31, 23, tzinfo=UTC)  # 2023-01-01 00:00 CET
HOUR = timedelta(hours=1)


def _converter() -> ModuleType:
    spec = importlib.util.spec_from_file_location("entsoe_be_prices", DATA / "entsoe_be_prices.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def problems(text: str) -> list[str]:
    """What is wrong with a `ts,price_eur_per_kwh` file meant to hold every hour of Belgian local 2023."""
    lines = text.splitlines()
    comment = " ".join(line for line in lines if line.startswith("#"))
    found: list[str] = []
    for word in ("ENTSO-E", "bidding zone BE", "2023", "RigauxBaptiste/The_Proof_of_the_Pudding_is_in_the_Heating"):
        if word not in comment:
            found.append(f"header comment does not name {word!r}")
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    if not rows or set(rows[0]) != {"ts", "price_eur_per_kwh"}:
        return [*found, "columns are not ts,price_eur_per_kwh"]
    stamps = [datetime.fromisoformat(r["ts"]) for r in rows]
    prices = np.array([float(r["price_eur_per_kwh"]) for r in rows])
    if any(ts.utcoffset() != timedelta(0) for ts in stamps):
        found.append("timestamps are not UTC")
    # the 23-hour day in March and the 25-hour day in October cancel: 365 x 24 hours
    if len(stamps) != 8760:
        found.append(f"{len(stamps)} rows, expected 8760")
    if stamps[0] != FIRST or stamps[-1] != datetime(2023, 12, 31, 22, tzinfo=UTC):
        found.append(f"covers {stamps[0]}..{stamps[-1]}, not local 2023")
    gaps = [i for i in range(1, len(stamps)) if stamps[i] - stamps[i - 1] != HOUR]
    if gaps:
        found.append(f"not one row per hour in order: row {gaps[0] + 1} and {len(gaps) - 1} more")
    per_day: dict[date, int] = {}
    for ts in stamps:
        day = ts.astimezone(BRUSSELS).date()
        per_day[day] = per_day.get(day, 0) + 1
    odd = {day: n for day, n in per_day.items() if n != 24}
    if odd != {date(2023, 3, 26): 23, date(2023, 10, 29): 25}:
        found.append(f"local days without 24 hours: {odd}, expected only 26 Mar (23) and 29 Oct (25)")
    if not np.all(np.isfinite(prices)):
        found.append("prices not finite")
        return found
    mean = float(prices.mean())
    if not 0.05 <= mean <= 0.20:  # BE 2023 averaged about 97 EUR/MWh; EUR/MWh by mistake would give ~97
        found.append(f"mean {mean:.4f} EUR/kWh is not a 2023 day-ahead average")
    if int((prices < 0).sum()) < 100:  # 2023 had a couple of hundred negative hours in BE
        found.append(f"only {int((prices < 0).sum())} negative hours")
    if prices.min() < -0.5 or prices.max() > 4.0:  # the SDAC harmonised price limits of 2023, in EUR/kWh
        found.append(f"prices {prices.min()}..{prices.max()} outside the day-ahead market limits")
    return found


def test_real_price_file_is_plausible() -> None:
    assert PRICES.stat().st_size < 1_000_000
    assert problems(PRICES.read_text()) == []


def _mutations(text: str) -> dict[str, str]:
    head = [line for line in text.splitlines() if line.startswith("#") or line.startswith("ts,")]
    body = [line for line in text.splitlines() if line not in head]

    def join(rows: list[str]) -> str:
        return "\n".join(head + rows) + "\n"

    def scaled(row: str, factor: float) -> str:
        ts, value = row.split(",")
        return f"{ts},{float(value) * factor:.5f}"

    def shifted(row: str) -> str:  # local wall-clock time written as if it were UTC
        ts, value = row.split(",")
        local = datetime.fromisoformat(ts).astimezone(BRUSSELS).replace(tzinfo=UTC)
        return f"{local:%Y-%m-%dT%H:%M:%SZ},{value}"

    return {
        "hour dropped": join(body[:5000] + body[5001:]),
        "hour repeated": join([*body[:5000], body[5000], *body[5000:8759]]),
        "hours swapped": join([*body[:100], body[101], body[100], *body[102:]]),
        "EUR/MWh": join([scaled(r, 1000) for r in body]),
        "local time": join([shifted(r) for r in body]),
        "negatives clipped": join([r if float(r.split(",")[1]) >= 0 else r.split(",")[0] + ",0" for r in body]),
        "no source note": join(body).replace("ENTSO-E", "someone"),
        "no rows": "\n".join(head) + "\n",
    }


BROKEN = ("hour dropped", "hour repeated", "hours swapped", "EUR/MWh", "local time", "negatives clipped",
          "no source note", "no rows")  # fmt: skip


@pytest.mark.parametrize("broken", BROKEN)
def test_the_check_fails_on_a_broken_file(broken: str) -> None:
    assert problems(_mutations(PRICES.read_text())[broken]), broken


def _source_year(*, march_price: str = "", october_repeat: bool = True) -> list[str]:
    """A local 2023 in DAM_prices.csv's format: 24 rows a day, an empty 02:00 on 26 Mar, 02:00 twice on 29 Oct."""
    lines = ["time,DAM_price", "31dec2022 23:00:00,.0001299999952316"]
    n = 0
    day = date(2023, 1, 1)
    while day.year == 2023:
        hours = [0, 1, 2, 2, *range(3, 24)] if day == date(2023, 10, 29) and october_repeat else list(range(24))
        for h in hours:
            stamp = f"{day:%d%b%Y}".lower() + f" {h:02d}:00:00"
            if day == date(2023, 3, 26) and h == 2:
                lines.append(f"{stamp},{march_price}")
                continue
            n += 1
            lines.append(f"{stamp},{n / 100000:.16f}")
        day += timedelta(days=1)
    lines.append("01jan2024 00:00:00,.0001")
    return lines


def test_converter_applies_the_clock_changes() -> None:
    conv = _converter()
    prices = conv.convert(_source_year(), 2023)
    assert len(prices) == 8760
    assert [ts for ts, _ in prices] == [FIRST + i * HOUR for i in range(8760)]
    assert [p for _, p in prices] == [round(i / 100000, 5) for i in range(1, 8761)]  # file order kept
    at = dict(prices)
    # 26 Mar: 01:00 CET is 00:00Z, the next row 03:00 CEST is 01:00Z
    assert at[datetime(2023, 3, 26, 0, tzinfo=UTC)] + 0.00001 == pytest.approx(at[datetime(2023, 3, 26, 1, tzinfo=UTC)])
    # 29 Oct: the first 02:00 is CEST (00:00Z), the second CET (01:00Z), then 03:00 CET is 02:00Z
    first = at[datetime(2023, 10, 29, 0, tzinfo=UTC)]
    assert at[datetime(2023, 10, 29, 1, tzinfo=UTC)] == pytest.approx(first + 0.00001)
    assert at[datetime(2023, 10, 29, 2, tzinfo=UTC)] == pytest.approx(first + 0.00002)


def test_converter_refuses_what_it_was_not_written_for() -> None:
    conv = _converter()
    with pytest.raises(conv.SourceError, match="does not exist"):
        conv.convert(_source_year(march_price=".05"), 2023)
    with pytest.raises(conv.SourceError, match="expected every UTC hour"):
        conv.convert(_source_year(october_repeat=False), 2023)
    gap = [line if not line.startswith("05may2023 12") else "05may2023 12:00:00," for line in _source_year()]
    with pytest.raises(conv.SourceError, match="no price"):
        conv.convert(gap, 2023)


def test_backtest_trace_is_the_real_prices_under_the_belgian_tariff() -> None:
    spot = np.array([float(r["price_eur_per_kwh"]) for r in csv.DictReader(
        line for line in PRICES.read_text().splitlines() if not line.startswith("#"))])  # fmt: skip
    assert TRACE.stat().st_size < 1_000_000
    assert "REAL day-ahead prices" in TRACE.read_text()[:300] and "SYNTHETIC load and PV" in TRACE.read_text()[:300]
    tr = read_traces(str(TRACE))
    assert tr.start == FIRST and tr.n == 8760 and tr.step == HOUR
    np.testing.assert_allclose(tr.import_price, (spot + 0.02 + 0.05 + 0.05) * 1.06, atol=6e-6)
    np.testing.assert_allclose(tr.export_price, spot - 0.01, atol=6e-6)
    assert (tr.export_price < 0).sum() > 200  # the curtailment rule gets exercised
    assert math.isclose(float(tr.load_kw.sum()), 3500.0, rel_tol=1e-3)
    assert 3500 < tr.pv_kw.sum() < 6500  # 5 kWp in Brussels
