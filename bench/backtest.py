"""Backtest wall time: a year of hourly traces, re-planned every hour with a 48 h horizon (up to the
published prices), with the real forecasters, plus the perfect-foresight year solve.

The traces are the SYNTHETIC year in bench/data (see make_synthetic_year.py), and a year of REAL day-ahead
prices (ENTSO-E, Belgium 2023, bench/data/entsoe_be_2023_dayahead.csv) under a Belgian dynamic tariff with the
same synthetic house (bench/data/be_2023_real_prices_hourly.csv; by hand: `zapcloud backtest
bench/data/be_2023_real_prices_hourly.csv --lat 50.80 --lon 4.36`). The capture ratio is reported alongside the
time because a fast backtest that plans badly would be no achievement. Each year takes 15-30 s here (2 cores).
"""

from __future__ import annotations

import sys
from pathlib import Path

from cloud.backtest import Config, read_traces, run

COMMAND = "python -m bench.backtest"
DATA = Path(__file__).resolve().parent / "data" / "synthetic_nl_2025_hourly.csv"
REAL = Path(__file__).resolve().parent / "data" / "be_2023_real_prices_hourly.csv"
REAL_SITE = Config(lat=50.80, lon=4.36)  # Brussels (Uccle), where the trace's synthetic PV is made
TARGET_S = 180.0


def year_rows(path: Path, cfg: Config, label: str) -> list[dict[str, str]]:
    traces = read_traces(str(path))
    report = run(traces, cfg)
    days = traces.n * traces.dt_h / 24
    return [
        {
            "name": f"backtest year hourly re-planned ({report.replans} re-plans, {days:.0f} days, {label})",
            "value": f"{report.total_wall_s:.1f} s",
            "target": f"<= {TARGET_S:g} s",
            "command": COMMAND,
        },
        {
            "name": f"backtest capture ratio (planner saving / perfect-foresight saving, {label})",
            "value": f"{report.capture_ratio:.3f}",
            "target": "-",
            "command": COMMAND,
        },
    ]


def rows() -> list[dict[str, str]]:
    return year_rows(DATA, Config(), "synthetic") + year_rows(REAL, REAL_SITE, "real BE 2023 prices")


def main() -> int:
    table = rows()
    widths = {k: max(len(k), *(len(r[k]) for r in table)) for k in ("name", "value", "target", "command")}
    print("  ".join(k.ljust(widths[k]) for k in widths))
    print("  ".join("-" * widths[k] for k in widths))
    for r in table:
        print("  ".join(r[k].ljust(widths[k]) for k in widths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
