"""Build backtest traces from REAL measured household data and REAL day-ahead prices.

Inputs (all in this folder, sources and licences in README.md):
* `ausgrid_c12_2011_2012_load_w.csv`, `ausgrid_c12_2011_2012_pv_w.csv`: Ausgrid "Solar home electricity data",
  customer 12 (Sydney area), 2011-07-01 .. 2012-06-30, mean power per half-hour slot in W, one row per local
  date with 48 slots on the Sydney wall clock (the meter follows daylight saving time);
* `entsoe_nl_2023_dayahead.csv`, `entsoe_be_2023_dayahead.csv`: ENTSO-E day-ahead prices of 2023 (UTC hours).

Output: `ausgrid_c12_<zone>_2023.csv` (and `opsd_kn_res4_<zone>_2023.csv`, below) in the `zapcloud backtest`
trace format (ts,import_price,export_price,load_kw,pv_kw, and the day-ahead spot_price that `--tariff
tariff_<zone>_2023.json` turns into the same import and export prices), half-hourly, on the house's own
timeline (UTC), so the PV stays consistent with the sun at the house (lat -33.87, lon 151.21; the `# site:`
header line gives the backtest `--tz Australia/Sydney --lat -33.87 --lon 151.21 --pv-kwp 1.04 --tilt 20
--azimuth 0` as defaults).

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

OPSD house (`raw/opsd_de_kn_residential4_2016_{h1,h2,close}.csv`): Open Power System Data "Household data",
DE_KN_residential4 (Konstanz, 47.66 N 9.18 E; PV, heat pump, EV), cumulative kWh meter readings (grid import,
grid export, PV) at every hour of 2016 plus the closing reading 2017-01-01T00Z, moved to true UTC first (the
source's stamps run 1 h late in summer time: `opsd_true_clock`). Per hour:
pv = delta(pv meter), load = delta(import) - delta(export) + delta(pv). Where readings are missing, the hours
between the two known readings around the gap get the meter's known delta across the gap, spread by the shape
(mean of each UTC hour, negatives as 0) of the same hours on the nearest complete days (up to 2 before and 2
after): energy-preserving per series, listed in the output's header. A measured hour whose load comes out
below 0 (the export meter ticking before the PV meter, <= 1.1 kWh) is clipped to 0 and counted. Prices: the
house's local day i (Europe/Berlin; 0 = 2016-01-01, a Friday) gets price day (i + 5) mod 365 of 2023
(2023-01-06, a Friday), by local wall hour as above (2016-03-27 has no local 02:00; the doubled 02:00 of
2016-10-30 gets the 02:00 price twice). Result: 8,784 contiguous hours.

OPSD house 3 (`raw/opsd_de_kn_residential3_2016_2017_{h1,h2,close}.csv`): DE_KN_residential3 (Konstanz, PV),
the same meters from 2016-03-01T00Z to the closing reading 2017-03-01T00Z, no gaps; its stamps run 1 h early all
year (`opsd_early_clock`), so the trace is 2016-03-01T01Z .. 2017-03-01T00Z, 8,760 hours. Load and PV as
house 2 (29 hours clipped where the source's meters disagree, README.md). Prices: local day i (0 = 2016-03-01, a
Tuesday) gets price day i + 58 of 2023 (2023-02-28, a Tuesday), and past 2023-12-31 price day i + 58 - 364, so
2017-01-02 (a Monday) gets Monday 2023-01-02: the weekdays stay aligned all year.

OPSD house 1 (`raw/opsd_de_kn_residential1_2016_{h1,h2,close}.csv`): DE_KN_residential1 (Konstanz, PV, heat pump
on its own meter), grid import and PV meters, 2016-01-01T00Z to the closing reading 2017-01-01T00Z, no gaps. Its PV
is metered and sold on its own (full feed-in: the house has no export meter and its import meter never dips
under the PV, README.md), so the load is the import meter alone: load = delta(import), pv = delta(pv). Its stamps
run 1 h early all year like house 3's (`opsd_early_clock`), so the trace is 2016-01-01T01Z .. 2017-01-01T00Z,
8,784 hours. Prices: local day i (0 = 2016-01-01, a Friday) gets price day i + 5 of 2023 with house 3's weekday
wrap (2016-12-26, a Monday, gets Monday 2023-01-02).

Run: `python bench/data/make_real_traces.py` (deterministic; no randomness anywhere).
"""

from __future__ import annotations

import csv
import itertools
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

HERE = Path(__file__).resolve().parent
SYDNEY = ZoneInfo("Australia/Sydney")
HOUSE_START = date(2011, 7, 1)
PRICE_DAY_OFFSET = 5  # 2011-07-01 (Friday) -> 2023-01-06 (Friday)
SLOT = timedelta(minutes=30)
HOUR = timedelta(hours=1)
BERLIN = ZoneInfo("Europe/Berlin")
OPSD_START = date(2016, 1, 1)  # a Friday, like 2023-01-06: PRICE_DAY_OFFSET holds for this house too
OPSD_FILES = (
    "opsd_de_kn_residential4_2016_h1.csv",
    "opsd_de_kn_residential4_2016_h2.csv",
    "opsd_de_kn_residential4_2016_close.csv",
)
OPSD_RES3_START = date(2016, 3, 1)  # a Tuesday, like 2023-02-28
OPSD_RES3_FILES = (
    "opsd_de_kn_residential3_2016_2017_h1.csv",
    "opsd_de_kn_residential3_2016_2017_h2.csv",
    "opsd_de_kn_residential3_2016_2017_close.csv",
)
RES3_PRICE_DAY_OFFSET = 58  # 2016-03-01 (Tuesday) -> 2023-02-28 (Tuesday)
OPSD_RES1_FILES = (
    "opsd_de_kn_residential1_2016_h1.csv",
    "opsd_de_kn_residential1_2016_h2.csv",
    "opsd_de_kn_residential1_2016_close.csv",
)
EARLY_CLOCK = "# Clock: the source's stamps run 1 h early all year; shifted to true UTC (see opsd_early_clock).\n"
SHAPE_DAYS = 2  # complete days each side of a gap whose hourly shape spreads the gap's energy

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


@dataclass(frozen=True)
class House:
    """A measured house on its own contiguous UTC timeline, with each slot's (local day index, local hour)."""

    key: str  # output file prefix
    about: str  # first comment lines of the output (source, place, clock)
    stamps: list[datetime]
    local: list[tuple[int, int]]
    load_kw: list[float]
    pv_kw: list[float]
    step: timedelta
    notes: str = ""  # further comment lines (gaps filled)
    # `zapcloud backtest` reads this `# site:` line as its defaults for the site options (an option given wins)
    site: str = ""
    price_offset: int = PRICE_DAY_OFFSET  # house local day i gets price day i + price_offset of 2023 ...
    # ... modulo 365 (False), or, past the end of 2023, price day i + price_offset - 364 (True): 2023 has 52 weeks
    # and a day, so this keeps the weekdays aligned after the wrap (one price day is replayed twice)
    weekday_wrap: bool = False

    def price_day(self, i: int) -> int:
        k = i + self.price_offset
        return k if k < 365 else (k - 364 if self.weekday_wrap else k % 365)


def ausgrid_house() -> House:
    load = read_pivot(HERE / "ausgrid_c12_2011_2012_load_w.csv")
    pv = read_pivot(HERE / "ausgrid_c12_2011_2012_pv_w.csv")
    stamps, local, load_kw, pv_kw = house_series(load, pv)
    about = (
        "# REAL measured household (Ausgrid Solar home electricity data, customer 12, Sydney, 2011-07..2012-06,\n"
        "# half-hourly load and PV) with REAL ENTSO-E {ZONE} 2023 day-ahead prices replayed by local\n"
        "# clock (bench/data/make_real_traces.py; site tz Australia/Sydney, lat -33.87 lon 151.21)."
    )
    site = "# site: tz=Australia/Sydney lat=-33.87 lon=151.21 pv-kwp=1.04 tilt=20 azimuth=0 (README.md)\n"
    return House("ausgrid_c12", about, stamps, local, load_kw, pv_kw, SLOT, site=site)


def read_meters(paths: list[Path]) -> tuple[list[datetime], dict[str, np.ndarray]]:
    """Cumulative hourly meter readings (OPSD household data format): UTC stamps, kWh per column, NaN = empty."""
    stamps: list[datetime] = []
    cols: dict[str, list[float]] = {}
    for path in paths:
        with path.open(newline="") as fh:
            for row in csv.DictReader(line for line in fh if not line.startswith("#")):
                stamps.append(datetime.fromisoformat(row.pop("utc_timestamp").replace("Z", "+00:00")))
                for k, v in row.items():
                    cols.setdefault(k, []).append(float(v) if v else np.nan)
    for a, b in itertools.pairwise(stamps):
        if b - a != HOUR:
            raise SystemExit(f"meter readings not hourly at {a} -> {b}")
    out = {k: np.array(v) for k, v in cols.items()}
    for k, v in out.items():
        if np.any(np.diff(v[np.isfinite(v)]) < 0):
            raise SystemExit(f"meter {k} runs backwards")
    return stamps, out


def hourly_energy(reading: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """kWh per hour from readings at the hour starts (len(reading) - 1 hours), gaps filled; and the filled runs.

    A run of hours [a, b) between two known readings (none known inside) has a known total: it is spread
    over the run by the mean of the same UTC hours on the nearest complete days (up to SHAPE_DAYS entirely
    before the run and SHAPE_DAYS entirely after it; negative hours count as 0), evenly if that shape is all 0.
    """
    if not (np.isfinite(reading[0]) and np.isfinite(reading[-1])):
        raise SystemExit("the first and the last reading must be known")
    d = np.diff(reading)
    days = len(d) // 24
    complete = [bool(np.all(np.isfinite(d[24 * j : 24 * j + 24]))) for j in range(days)]
    known = np.flatnonzero(np.isfinite(reading))
    runs = [(int(a), int(b)) for a, b in itertools.pairwise(known) if b - a > 1]
    out = d.copy()
    for a, b in runs:
        before = [j for j in range(days) if complete[j] and 24 * j + 24 <= a][-SHAPE_DAYS:]
        after = [j for j in range(days) if complete[j] and 24 * j >= b][:SHAPE_DAYS]
        shape = np.mean([np.clip(d[24 * j : 24 * j + 24], 0.0, None) for j in before + after], axis=0)
        w = shape[np.arange(a, b) % 24]
        total = reading[b] - reading[a]
        out[a:b] = total * w / w.sum() if w.sum() > 0 else total / (b - a)
    return out, runs


def _ranges(stamps: list[datetime], runs: list[tuple[int, int]]) -> str:
    return ", ".join(f"{stamps[a]:%Y-%m-%dT%HZ}..{stamps[b - 1]:%Y-%m-%dT%HZ} ({b - a} h)" for a, b in runs)


def opsd_true_clock(stamps: list[datetime], m: dict[str, np.ndarray]) -> tuple[list[datetime], dict[str, np.ndarray]]:
    """The readings on the true UTC clock: the source's `utc_timestamp` is the logger's Berlin wall clock minus
    1 h all year (CET taken for UTC), so during summer time it runs 1 h late. Evidence (README): PV output in
    evening hours with the sun 8-15 degrees below the horizon, on summer-time days only (2016-03-27 .. 10-28),
    and a clear-day PV peak 1 h later than the sun's in summer, not in winter. The row whose wall time does
    not exist (2016-03-27, label 01:00Z = 02:00 wall) is one the source interpolated and is dropped; the
    doubled wall hour of 2016-10-30 has one reading (taken as the CET one), so 00:00Z has none and is a gap."""
    at: dict[datetime, int] = {}
    for i, t in enumerate(stamps):
        wall = (t + HOUR).replace(tzinfo=None)
        true = wall.replace(tzinfo=BERLIN, fold=1).astimezone(UTC)
        if true.astimezone(BERLIN).replace(tzinfo=None) == wall:  # else: a wall time that does not exist
            at[true] = i
    grid = [stamps[0] + HOUR * k for k in range(int((stamps[-1] - stamps[0]) / HOUR) + 1)]
    idx = np.array([at.get(t, -1) for t in grid])
    out = {k: np.where(idx >= 0, v[np.maximum(idx, 0)], np.nan) for k, v in m.items()}
    return grid, out


def opsd_early_clock(stamps: list[datetime], m: dict[str, np.ndarray]) -> tuple[list[datetime], dict[str, np.ndarray]]:
    """The readings on the true UTC clock for the OPSD houses whose stamps run 1 h EARLY all year (a reading
    stamped t is the meter at t + 1 h; residential3 and residential1, unlike residential4's summer-only lag).
    Evidence (README, one test per house): on the source's stamps the PV meter counts 20 Wh or more in hours that
    end before sunrise (sun below -3 degrees all hour), mornings only, in winter as in summer; on the true clock
    no such hour is left. No row is missing or doubled at the clock changes, so the shift is the whole change."""
    return [t + HOUR for t in stamps], m


def opsd_house() -> House:
    about = (
        "# REAL measured household (Open Power System Data household data, DE_KN_residential4, Konstanz, 2016,\n"
        "# hourly meter readings; CC-BY 4.0) with REAL ENTSO-E {ZONE} 2023 day-ahead prices replayed by local\n"
        "# clock (bench/data/make_real_traces.py; site tz Europe/Berlin, lat 47.66 lon 9.18)."
    )
    site = "# site: tz=Europe/Berlin lat=47.66 lon=9.18 pv-kwp=10.1 tilt=28 azimuth=208 (README.md)\n"
    clock = "# Clock: the source's stamps run 1 h late in summer time; shifted to true UTC (see opsd_true_clock).\n"
    stamps, m = opsd_true_clock(*read_meters([HERE / "raw" / name for name in OPSD_FILES]))
    return opsd_meter_house("opsd_kn_res4", stamps, m, OPSD_START, about, clock, site)


def opsd_res3_house() -> House:
    about = (
        "# REAL measured household (Open Power System Data household data, DE_KN_residential3, Konstanz,\n"
        "# 2016-03..2017-02, hourly meter readings; CC-BY 4.0) with REAL ENTSO-E {ZONE} 2023 day-ahead prices\n"
        "# replayed by local clock (bench/data/make_real_traces.py; site tz Europe/Berlin, lat 47.66 lon 9.18)."
    )
    site = "# site: tz=Europe/Berlin lat=47.66 lon=9.18 pv-kwp=4.85 tilt=5 azimuth=20 (README.md)\n"
    clock = EARLY_CLOCK
    stamps, m = opsd_early_clock(*read_meters([HERE / "raw" / name for name in OPSD_RES3_FILES]))
    return opsd_meter_house(
        "opsd_kn_res3",
        stamps,
        m,
        OPSD_RES3_START,
        about,
        clock,
        site,
        RES3_PRICE_DAY_OFFSET,
        weekday_wrap=True,
        clip_why="the source's meters disagree on 7 days, README.md",
    )


def opsd_res1_house() -> House:
    about = (
        "# REAL measured household (Open Power System Data household data, DE_KN_residential1, Konstanz, 2016,\n"
        "# hourly meter readings; CC-BY 4.0; PV sold on its own meter, load = the import meter) with REAL ENTSO-E\n"
        "# {ZONE} 2023 day-ahead prices replayed by local clock (bench/data/make_real_traces.py; site tz\n"
        "# Europe/Berlin, lat 47.66 lon 9.18)."
    )
    site = "# site: tz=Europe/Berlin lat=47.66 lon=9.18 pv-kwp=9.7 tilt=30 azimuth=145 (README.md)\n"
    stamps, m = opsd_early_clock(*read_meters([HERE / "raw" / name for name in OPSD_RES1_FILES]))
    return opsd_meter_house(
        "opsd_kn_res1", stamps, m, OPSD_START, about, EARLY_CLOCK, site, weekday_wrap=True, full_feed_in=True
    )


def opsd_meter_house(
    key: str,
    stamps: list[datetime],
    m: dict[str, np.ndarray],
    start: date,
    about: str,
    clock: str,
    site: str,
    price_offset: int = PRICE_DAY_OFFSET,
    weekday_wrap: bool = False,
    clip_why: str = "meter timing",
    full_feed_in: bool = False,
) -> House:
    """An OPSD house from its meter readings on the true UTC clock; local day 0 is `start` (Europe/Berlin).

    Behind one meter the house used what it bought plus its own PV less what it sold; with `full_feed_in` the PV
    is metered and sold on its own (no export meter), so what the house used is its import meter alone."""
    # NaN where any reading is missing
    net = m["grid_import_kwh"] if full_feed_in else m["grid_import_kwh"] - m["grid_export_kwh"] + m["pv_kwh"]
    load, load_runs = hourly_energy(net)
    pv, pv_runs = hourly_energy(m["pv_kwh"])
    hours = stamps[:-1]  # the closing reading starts no hour
    filled = np.zeros(len(hours), dtype=bool)
    for a, b in load_runs:
        filled[a:b] = True
    clipped = (load < 0) & ~filled
    load = np.clip(load, 0.0, None)
    first = datetime.combine(start, datetime.min.time(), tzinfo=BERLIN)
    local = []
    for t in hours:
        wall = t.astimezone(BERLIN)
        local.append(((wall.date() - first.date()).days, wall.hour))
    gaps = (
        f"# Gap hours filled energy-preserving (see make_real_traces.py): load {_ranges(hours, load_runs)};\n"
        f"# PV {_ranges(hours, pv_runs)}."
        if load_runs or pv_runs
        else f"# No gaps: every hour has {'both' if len(m) == 2 else 'all three'} meter readings."
    )
    clip = f" Load clipped at 0 ({clip_why}) in {int(clipped.sum())} measured hours." if clipped.any() else ""
    notes = f"{gaps}{clip}\n{clock}"
    print(
        f"{key}: {int(filled.sum())} load hours filled in {len(load_runs)} gaps, "
        f"{sum(b - a for a, b in pv_runs)} PV hours in {len(pv_runs)} gaps, {int(clipped.sum())} hours clipped"
    )
    load_kw, pv_kw = [float(x) for x in load], [float(x) for x in pv]
    return House(key, about, hours, local, load_kw, pv_kw, HOUR, notes, site, price_offset, weekday_wrap)


def build(house: House, zone: str) -> Path:
    tz = ZoneInfo("Europe/Amsterdam" if zone == "nl" else "Europe/Brussels")
    days = price_days(HERE / f"entsoe_{zone}_2023_dayahead.csv", tz)
    spot = np.array([days[house.price_day(i)][h] for i, h in house.local])
    imp, exp = tariff(zone, spot)
    out = HERE / f"{house.key}_{zone}_2023.csv"
    tariff_text = (
        f"import = (spot + {NL_MARKUP} + {NL_ENERGY_TAX}) x {1 + NL_VAT}, export = spot (no net metering)"
        if zone == "nl"
        else f"import = (spot + {BE_MARKUP} + {BE_GRID_FEE} + {BE_ENERGY_TAX}) x {1 + BE_VAT}, "
        f"export = spot - {BE_EXPORT_FEE}"
    )
    per_h = house.step / HOUR
    with out.open("w", newline="") as fh:
        fh.write(f"{house.about.replace('{ZONE}', zone.upper())} {tariff_text}.\n{house.notes}{house.site}")
        fh.write("ts,import_price,export_price,load_kw,pv_kw,spot_price\n")  # spot_price: for --tariff
        for t, ip, ep, lk, pk, sp in zip(house.stamps, imp, exp, house.load_kw, house.pv_kw, spot, strict=True):
            fh.write(f"{t:%Y-%m-%dT%H:%M:%SZ},{ip:.5f},{ep:.5f},{lk:.3f},{pk:.3f},{sp:.5f}\n")
    print(
        f"{out.name}: {len(house.stamps)} slots, load {sum(house.load_kw) * per_h:.0f} kWh, "
        f"PV {sum(house.pv_kw) * per_h:.0f} kWh, spot mean {1000 * spot.mean():.1f} EUR/MWh"
    )
    return out


def main() -> int:
    for house in (ausgrid_house(), opsd_house(), opsd_res3_house(), opsd_res1_house()):
        for zone in ("nl", "be"):
            build(house, zone)
    return 0


if __name__ == "__main__":
    sys.exit(main())
