"""Where forecast errors meet the grid, by plan slot type (`python -m bench.slot_types SLOTS.csv ...`).

Reads the per-slot CSV of `zapcloud backtest --slots-csv` and sorts the planner's slots by what the plan did
there (discharge / charge / idle, against a planned import or export; balancing slots the edge ran as
self-consumption). Per type: the error's energy in each direction (more demand or less surplus than the forecast:
"more"; the other way: "less"), what that error costs at the grid with the battery left on its setpoint
(EUR), and the part of it that crosses zero exchange (a planned import turned export, a planned export turned
import), where the other price applies. The planned grid is the forecast load - forecast PV + the planned
battery (PV curtailment in the plan is not in the CSV). Figures: docs/cloud-planning.md, fifth pass (execution).
"""

from __future__ import annotations

import csv
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from cloud.execution import IDLE_BATTERY_KW as IDLE_KW  # the planner's own threshold: below it the battery is idle


@dataclass
class TypeSums:
    slots: int = 0
    more_kwh: float = 0.0
    more_eur: float = 0.0
    less_kwh: float = 0.0
    less_eur: float = 0.0
    past_zero_kwh: float = 0.0
    past_zero_eur: float = 0.0  # at the grid price the crossed part meets


def slot_type(planned_battery_kw: float, planned_grid_kw: float, rung_intent: str) -> str:
    if "self_consumption" in rung_intent:
        return "balancing"
    if planned_battery_kw < -IDLE_KW:
        return "discharge, import" if planned_grid_kw > 0 else "discharge, export"
    if planned_battery_kw > IDLE_KW:
        return "charge, import" if planned_grid_kw > 0.01 else "surplus charge"
    return "idle, import" if planned_grid_kw > 0 else "idle, export"


def grid_cost(grid_kw: float, import_price: float, export_price: float) -> float:
    """EUR per hour for a grid exchange (+ import)."""
    return grid_kw * (import_price if grid_kw > 0 else export_price)


def classify(path: str) -> dict[str, TypeSums]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if len(rows) < 2:
        return {}
    step = datetime.fromisoformat(rows[1]["ts"]) - datetime.fromisoformat(rows[0]["ts"])
    dt = step.total_seconds() / 3600.0
    sums: dict[str, TypeSums] = defaultdict(TypeSums)
    for row in rows:
        f = {k: float(v) for k, v in row.items() if k not in ("ts", "rung_intent")}
        if not all(math.isfinite(v) for v in f.values()):
            continue  # a slot with no plan
        forecast_kw = f["load_forecast_kw"] - f["pv_forecast_kw"]
        planned = forecast_kw + f["planned_battery_kw"]
        error = f["load_kw"] - f["pv_kw"] - forecast_kw
        imp, exp = f["import_price"], f["export_price"]
        s = sums[slot_type(f["planned_battery_kw"], planned, row["rung_intent"])]
        s.slots += 1
        eur = (grid_cost(planned + error, imp, exp) - grid_cost(planned, imp, exp)) * dt
        if error > 0:
            s.more_kwh += error * dt
            s.more_eur += eur
        else:
            s.less_kwh -= error * dt
            s.less_eur += eur
        crossed = planned + error
        if planned > 0 > crossed:
            s.past_zero_kwh -= crossed * dt
            s.past_zero_eur -= crossed * dt * exp
        elif planned < 0 < crossed:
            s.past_zero_kwh += crossed * dt
            s.past_zero_eur += crossed * dt * imp
    return dict(sums)


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m bench.slot_types SLOTS.csv ...", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
        print(
            f"{'type':<20}{'slots':>7}{'more kWh':>10}{'EUR':>9}{'less kWh':>10}{'EUR':>9}{'past 0 kWh':>12}{'EUR':>8}"
        )
        for name, s in sorted(classify(path).items()):
            print(
                f"{name:<20}{s.slots:>7}{s.more_kwh:>10.1f}{s.more_eur:>9.2f}{s.less_kwh:>10.1f}{s.less_eur:>9.2f}"
                f"{s.past_zero_kwh:>12.1f}{s.past_zero_eur:>8.2f}"
            )
    return 0


__all__ = ["TypeSums", "classify", "slot_type"]

if __name__ == "__main__":
    sys.exit(main())
