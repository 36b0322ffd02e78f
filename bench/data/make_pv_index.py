"""Build `apg_at_solar_dayahead_utc.csv`: a REAL day-ahead regional PV forecast as a `zapcloud backtest
--pv-index` file (`ts,value`, UTC hour starts, MW).

Input: `raw/apg_at_solar_dayahead_{2016_h1,2016_h2,2017_janfeb}.csv`, Austrian Power Grid's day-ahead forecast
of the PV output of the Austrian control area (README.md, "A real day-ahead PV forecast"), transcribed with
the source's own wall-clock stamps (Europe/Vienna, CET/CEST): a 2-hour row `01:00 -> 03:00` on the spring
change and hours labelled `2A` / `2B` on the autumn one. Each row's start is moved to UTC (`2A` the first
02:00, `2B` the second); the spring row covers one real hour, so it stands for it. Where the files overlap
(their first and last day), the first file read wins; the overlapping rows are the same forecast.

    python bench/data/make_pv_index.py
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

HERE = Path(__file__).resolve().parent
SOURCES = ("2016_h1", "2016_h2", "2017_janfeb")
OUT = HERE / "apg_at_solar_dayahead_utc.csv"
VIENNA = ZoneInfo("Europe/Vienna")


def source_start(text: str) -> datetime:
    """The UTC start of a row stamped `dd.mm.yyyy HH:MM:SS` on the Vienna wall clock (`2A` / `2B`: the doubled
    hour's first / second occurrence)."""
    fold = 1 if " 2B:" in text else 0
    naive = datetime.strptime(text.replace(" 2A:", " 02:").replace(" 2B:", " 02:"), "%d.%m.%Y %H:%M:%S")
    return naive.replace(tzinfo=VIENNA, fold=fold).astimezone(UTC)


def read_forecast() -> dict[datetime, str]:
    out: dict[datetime, str] = {}
    for name in SOURCES:
        with open(HERE / "raw" / f"apg_at_solar_dayahead_{name}.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                out.setdefault(source_start(row["start"]), row["solar_mw"])
    return out


def main(out: Path = OUT) -> None:
    rows = read_forecast()
    with open(out, "w", newline="") as fh:
        fh.write(
            "# REAL day-ahead forecast of the PV output of the Austrian control area (Austrian Power Grid),\n"
            "# MW per hour, published the day before; transcribed in raw/apg_at_solar_dayahead_*.csv\n"
            "# (bench/data/make_pv_index.py; README.md, 'A real day-ahead PV forecast').\n"
            "ts,value\n"
        )
        for ts in sorted(rows):
            fh.write(f"{ts.isoformat().replace('+00:00', 'Z')},{rows[ts]}\n")


if __name__ == "__main__":
    main()
