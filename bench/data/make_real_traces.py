"""Build backtest traces from REAL measured household data and REAL day-ahead prices.

Inputs (all in this folder, sources and licences in README.md):
* `ausgrid_c12_2011_2012_load_w.csv`, `ausgrid_c12_2011_2012_pv_w.csv`: Ausgrid "Solar home electricity data",
  customer 12 (Sydney area), 2011-07-01 .. 2012-06-30, mean power per half-hour slot in W, one row per local
  date with 48 slots on the Sydney wall clock (the meter follows daylight saving time);
* `entsoe_nl_2023_dayahead.csv`, `entsoe_be_2023_dayahead.csv`: ENTSO-E day-ahead prices of 2023 (UTC hours).

Output: `ausgrid_c12_<zone>_2023.csv` in the `zapcloud backtest` trace format (ts,import_price,export_price,
load_kw,pv_kw), half-hourly, on the house's own timeline (UTC), so the PV stays consistent with the sun at the
house (lat -33.87, lon 151.21; pass `--tz Australia/Sydney --lat -33.87 --lon 151.21 --azimuth 0` to the backtest).

The house and the prices come from different places and years, so the prices are replayed onto the house by
LOCAL clock, which is what matters for a battery (the evening peak of the load meets the evening peak of the
prices): the house's day i (0 = 2011-07-01, a Friday, southern winter) gets the price day (i + 5) mod 365 of
2023 (2023-01-06, a Friday, northern winter), so seasons and weekdays line up (except the last 6 days, where
the modulo wraps to 1 January); the price of local hour h of that day applies to both half-hours of local hour
h at the house. On the 23-hour price day (26 March) the missing 02:00 takes the 03:00 price; on the 25-hour
day (29 October) the two 02:00 prices are averaged.

House clock changes: on 2011-10-02 the meter's 02:00 and 02:30 slots do not exist on the Sydney clock (they
hold 0 in the source) and are dropped; on 2012-04-01 the hour 02:00-03:00 happens twice but the source has it
once, so both occurrences get the source values. Result: 17,568 contiguous half-hours.

Tariffs (EUR/kWh):
* NL: Dutch dynamic contract, 2023 taxes, without net metering (the situation from 2027):
  import = (spot + 0.0225 supplier markup + 0.12599 energy tax 2023) x 1.21 VAT; export = spot.
* BE: the Flemish dynamic contract of `make_synthetic_year.py`: import = (spot + 0.02 + 0.05 + 0.05) x 1.06;
  export = spot - 0.01.

Run: `python bench/data/make_real_traces.py` (deterministic; no randomness anywhere).
"""

from __future__ import annotations

import csv
import itertools
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

HERE = Path(__file__).resolve().parent
SYDNEY = ZoneInfo("Australia/Sydney")
HOUSE_START = date(2011, 7, 1)
PRICE_DAY_OFFSET = 5  # 2011-07-01 (Friday) -> 2023-01-06 (Friday)
SLOT = timedelta(minutes=30)

NL_MARKUP, NL_ENERGY_TAX, NL_VAT = 0.0225, 0.12599, 0.21
BE_MARKUP, BE_GRID_FEE, BE_ENERGY_TAX, BE_VAT, BE_EXPORT_FEE = 0.020, 0.050, 0.050, 0.06, 0.010


def read_pivot(path: Path) -> dict[date, list[float]]:
    """date -> 48 half-hour values in kW."""
    out: dict[date, list[float]] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(line for line in fh if not line.startswith("#")):
            values = [float(row[k]) / 1000.0 for k in row if k != "date"]
            if len(values) != 48:
                raise SystemExit(f"{path}: {row['date']}: {len(values)} slots, want 48")
            out[date.fromisoformat(row["date"])] = values
    return out


def house_series(
    load: dict[date, list[float]], pv: dict[date, list[float]]
) -> tuple[list[datetime], list[tuple[int, int]], list[float], list[float]]:
    """UTC slot starts, (house day index, local hour) of each slot, load kW and PV kW: contiguous, in order."""
    rows: dict[datetime, tuple[tuple[int, int], float, float]] = {}
    for i, day in enumerate(sorted(load)):
        for k in range(48):
            wall = datetime.combine(day, datetime.min.time()) + SLOT * k
            for fold in (0, 1):  # an ambiguous wall time (fall back) yields two instants, a normal one the same
                utc = wall.replace(tzinfo=SYDNEY, fold=fold).astimezone(UTC)
                if utc.astimezone(SYDNEY).replace(tzinfo=None) != wall:
                    continue  # a wall time that does not exist (spring forward)
                rows.setdefault(utc, ((i, wall.hour), load[day][k], pv[day][k]))
    stamps = sorted(rows)
    for a, b in itertools.pairwise(stamps):
        if b - a != SLOT:
            raise SystemExit(f"house timeline not contiguous at {a} -> {b}")
    return stamps, [rows[t][0] for t in stamps], [rows[t][1] for t in stamps], [rows[t][2] for t in stamps]


def price_days(path: Path, zone: ZoneInfo) -> list[list[float]]:
    """Per local calendar day of the price year: 24 prices by local wall hour (EUR/kWh)."""
    by_day: dict[date, dict[int, list[float]]] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(line for line in fh if not line.startswith("#")):
            ts = datetime.fromisoformat(row["ts"].replace("Z", "+00:00")).astimezone(zone)
            by_day.setdefault(ts.date(), {}).setdefault(ts.hour, []).append(float(row["price_eur_per_kwh"]))
    days = []
    for day in sorted(by_day):
        hours = by_day[day]
        filled = []
        for h in range(24):
            vals = hours.get(h) or hours.get(h + 1)  # spring forward: the missing hour takes the next one
            if not vals:
                raise SystemExit(f"{path}: {day} has no price for hour {h}")
            filled.append(sum(vals) / len(vals))  # fall back: the doubled hour is averaged
        days.append(filled)
    if len(days) != 365:
        raise SystemExit(f"{path}: {len(days)} local days, want 365")
    return days


def tariff(zone: str, spot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if zone == "nl":
        return np.round((spot + NL_MARKUP + NL_ENERGY_TAX) * (1 + NL_VAT), 5), np.round(spot, 5)
    imp = (spot + BE_MARKUP + BE_GRID_FEE + BE_ENERGY_TAX) * (1 + BE_VAT)
    return np.round(imp, 5), np.round(spot - BE_EXPORT_FEE, 5)


def build(zone: str) -> Path:
    load = read_pivot(HERE / "ausgrid_c12_2011_2012_load_w.csv")
    pv = read_pivot(HERE / "ausgrid_c12_2011_2012_pv_w.csv")
    stamps, local, load_kw, pv_kw = house_series(load, pv)
    tz = ZoneInfo("Europe/Amsterdam" if zone == "nl" else "Europe/Brussels")
    days = price_days(HERE / f"entsoe_{zone}_2023_dayahead.csv", tz)
    spot = np.array([days[(i + PRICE_DAY_OFFSET) % 365][h] for i, h in local])
    imp, exp = tariff(zone, spot)
    out = HERE / f"ausgrid_c12_{zone}_2023.csv"
    tariff_text = (
        f"import = (spot + {NL_MARKUP} + {NL_ENERGY_TAX}) x {1 + NL_VAT}, export = spot (no net metering)"
        if zone == "nl"
        else f"import = (spot + {BE_MARKUP} + {BE_GRID_FEE} + {BE_ENERGY_TAX}) x {1 + BE_VAT}, "
        f"export = spot - {BE_EXPORT_FEE}"
    )
    with out.open("w", newline="") as fh:
        fh.write(
            "# REAL measured household (Ausgrid Solar home electricity data, customer 12, Sydney, 2011-07..2012-06,\n"
            f"# half-hourly load and PV) with REAL ENTSO-E {zone.upper()} 2023 day-ahead prices replayed by local\n"
            "# clock "
            f"(bench/data/make_real_traces.py; site tz Australia/Sydney, lat -33.87 lon 151.21). {tariff_text}.\n"
        )
        fh.write("ts,import_price,export_price,load_kw,pv_kw\n")
        for t, ip, ep, lk, pk in zip(stamps, imp, exp, load_kw, pv_kw, strict=True):
            fh.write(f"{t:%Y-%m-%dT%H:%M:%SZ},{ip:.5f},{ep:.5f},{lk:.3f},{pk:.3f}\n")
    print(
        f"{out.name}: {len(stamps)} slots, load {sum(load_kw) / 2:.0f} kWh, PV {sum(pv_kw) / 2:.0f} kWh, "
        f"spot mean {1000 * spot.mean():.1f} EUR/MWh"
    )
    return out


def main() -> int:
    for zone in ("nl", "be"):
        build(zone)
    return 0


if __name__ == "__main__":
    sys.exit(main())
