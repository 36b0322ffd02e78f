"""Backtest wall time: a year of hourly traces, re-planned every hour with a 48 h horizon (up to the
published prices), with the real forecasters, plus the perfect-foresight year solve.

The traces are the SYNTHETIC year in bench/data (see make_synthetic_year.py); the capture ratio is reported
alongside the time because a fast backtest that plans badly would be no achievement.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cloud.backtest import Config, read_traces, run

COMMAND = "python -m bench.backtest"
DATA = Path(__file__).resolve().parent / "data" / "synthetic_nl_2025_hourly.csv"
TARGET_S = 180.0


def rows() -> list[dict[str, str]]:
    traces = read_traces(str(DATA))
    report = run(traces, Config())
    days = traces.n * traces.dt_h / 24
    return [
        {
            "name": f"backtest year hourly re-planned ({report.replans} re-plans, {days:.0f} days, synthetic)",
            "value": f"{report.total_wall_s:.1f} s",
            "target": f"<= {TARGET_S:g} s",
            "command": COMMAND,
        },
        {
            "name": "backtest capture ratio (planner saving / perfect-foresight saving)",
            "value": f"{report.capture_ratio:.3f}",
            "target": "-",
            "command": COMMAND,
        },
    ]


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
