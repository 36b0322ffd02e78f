"""`python -m bench` (`make bench`): one table of every figure, its target, pass/fail and how to reproduce it.

Each bench module exposes `rows() -> list[dict[str, str]]` with keys name, value, target and
command. A module that fails still gets a row (marked fail) so one broken bench never hides the
others' figures. Modules of other teams (bench/backtest.py) are picked up when they exist.
The whole run takes about 20 minutes (the 24-hour soak is 12 of them); `--quick` about 5, with
smaller sizes that each metric names; `--only sync,latency` runs a subset.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import time
import traceback

from bench.table import Row, print_table

MODULES = (
    "footprint", "latency", "closedloop", "ocpp", "sync", "nonfinite", "optimizer", "backtest", "forecast_scores",
    "planner_loop", "dataapi", "live", "channel", "fleet", "fleet_channel", "soak",
)  # fmt: skip


def collect(names: list[str]) -> list[Row]:
    rows: list[Row] = []
    for name in names:
        module_name = f"bench.{name}"
        if importlib.util.find_spec(module_name) is None:
            continue  # e.g. bench/backtest.py not written yet
        started = time.monotonic()
        print(f"bench: running {module_name} ...", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(module_name)
            rows += module.rows()
        except Exception as exc:  # one broken bench must not hide the others' figures
            traceback.print_exc(file=sys.stderr)
            rows.append({"name": f"{name}: bench failed", "value": f"{type(exc).__name__}: {exc}"[:80],
                         "target": "runs", "ok": "fail", "command": f"python -m bench.{name}"})  # fmt: skip
        print(f"bench: {module_name} took {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and windows (stated in each metric)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(MODULES)}")
    args = parser.parse_args(argv)
    if args.quick:
        os.environ["ZAPD_BENCH_QUICK"] = "1"
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(MODULES)
    unknown = sorted(set(names) - set(MODULES))
    if unknown:
        parser.error(f"unknown bench {', '.join(unknown)}")
    rows = collect(names)
    print_table(rows)
    # A missed target is a figure to report, not a broken build; a bench that could not run is.
    return 1 if any(r.get("target") == "runs" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
