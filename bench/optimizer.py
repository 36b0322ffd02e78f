"""Optimizer solve time on seeded household profiles (15-minute slots, 1, 2 and 7 days).

Every case has a demand charge and sunny middays with negative import prices; half add an overnight EV
session. Two battery cost models:

* `realistic`: a degradation cost of 0.02 per kWh charged or discharged. Wasting energy by cycling the
  battery then never pays, so the LP relaxation is already exclusion-free and the LP path is measured.
* `stress` (`cycle0`): no cycle cost, so in negative-price hours the LP dumps energy by charging and
  discharging at once and the exact MILP has to be solved and proven. No target: this is the worst case.

The figure is the `solve_ms` the optimizer reports (model build + every HiGHS solve, not JSON decoding).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from cloud.optimizer import solve
from cloud.optimizer_io import Battery, DemandCharge, Ev, Grid, Problem

COMMAND = "python -m bench.optimizer"
REPETITIONS = 30
STEP_MINUTES = 15
SLOTS_PER_DAY = 24 * 60 // STEP_MINUTES


@dataclass(frozen=True)
class Case:
    horizon: int
    with_ev: bool
    cycle_cost: float
    p50_target_ms: float | None = None
    p99_target_ms: float | None = None
    repetitions: int = REPETITIONS

    @property
    def label(self) -> str:
        profile = "cycle0" if self.cycle_cost == 0.0 else "realistic"
        return f"optimizer {profile} T={self.horizon} {'ev+' if self.with_ev else ''}demand+negprices"


REALISTIC = 0.02
CASES = (
    Case(96, False, REALISTIC),
    Case(96, True, REALISTIC),
    Case(192, False, REALISTIC),
    Case(192, True, REALISTIC, 10.0, 50.0),
    Case(672, False, REALISTIC, 200.0, 200.0),
    Case(672, True, REALISTIC, 200.0, 200.0),
    Case(96, True, 0.0),
    Case(192, True, 0.0),
    Case(672, True, 0.0, repetitions=10),
)


def site_problem(horizon: int, with_ev: bool, seed: int, cycle_cost: float = REALISTIC) -> Problem:
    """A household with PV, a 10 kWh battery and day-ahead prices that dip below zero on sunny days."""
    rng = np.random.default_rng(seed)
    hours = np.arange(horizon) * STEP_MINUTES / 60.0
    hod = hours % 24.0
    days = math.ceil(horizon / SLOTS_PER_DAY)
    sun = np.repeat(rng.uniform(0.2, 1.0, days), SLOTS_PER_DAY)[:horizon]
    clear_sky = np.clip(np.sin((hod - 6.0) / 14.0 * np.pi), 0.0, None) ** 1.5
    pv = 6.0 * clear_sky * sun * rng.uniform(0.85, 1.0, horizon)
    peaks = np.exp(-(((hod - 8.0) / 1.5) ** 2)) + 1.3 * np.exp(-(((hod - 19.0) / 2.0) ** 2))
    load = 0.35 + 1.6 * peaks * rng.uniform(0.7, 1.3, horizon) + rng.exponential(0.25, horizon)
    price = 0.22 + 0.12 * peaks - 0.30 * clear_sky * sun + rng.normal(0.0, 0.015, horizon)
    import_price = np.round(price, 4)
    export_price = np.round(np.minimum(price - 0.02, 0.08), 4)
    ev = None
    if with_ev:
        arrival = int(18 * 60 / STEP_MINUTES)
        ev = Ev(
            capacity_kwh=60.0,
            soc_initial=float(rng.uniform(0.15, 0.5)),
            soc_target=0.8,
            arrival_slot=arrival,
            departure_slot=arrival + int(13 * 60 / STEP_MINUTES),
            max_charge_kw=11.0,
            efficiency=0.92,
        )
    return Problem(
        start=datetime(2026, 6, 1, tzinfo=UTC),
        step_minutes=float(STEP_MINUTES),
        import_price=import_price.tolist(),
        export_price=export_price.tolist(),
        load_kw=np.round(load, 3).tolist(),
        pv_kw=np.round(pv, 3).tolist(),
        battery=Battery(
            capacity_kwh=10.0,
            soc_initial=float(rng.uniform(0.1, 0.9)),
            soc_min=0.1,
            soc_max=0.95,
            max_charge_kw=5.0,
            max_discharge_kw=5.0,
            charge_efficiency=0.95,
            discharge_efficiency=0.95,
            cycle_cost_per_kwh=cycle_cost,
        ),
        grid=Grid(max_import_kw=17.0, max_export_kw=10.0),
        demand_charge=DemandCharge(price_per_kw=8.0, peak_already_kw=2.0),
        ev=ev,
    )


def solve_times_ms(case: Case) -> list[float]:
    times: list[float] = []
    for seed in range(case.repetitions):
        solution = solve(site_problem(case.horizon, case.with_ev, seed, case.cycle_cost))
        if solution.status != "optimal":
            raise RuntimeError(f"{case.label} seed {seed}: {solution.status}: {solution.message}")
        times.append(solution.solve_ms)
    return times


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def rows() -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    solve(site_problem(96, True, 999))  # warm-up: first HiGHS call loads the library
    for case in CASES:
        times = solve_times_ms(case)
        for name, value, target in (
            ("p50", percentile(times, 50), case.p50_target_ms),
            ("p99", percentile(times, 99), case.p99_target_ms),
        ):
            out.append(
                {
                    "name": f"{case.label} solve {name} (n={case.repetitions})",
                    "value": f"{value:.1f} ms",
                    "target": f"<= {target:g} ms" if target is not None else "-",
                    "command": COMMAND,
                }
            )
    return out


def main() -> int:
    table = rows()
    widths = {k: max(len(k), *(len(r[k]) for r in table)) for k in ("name", "value", "target", "command")}
    header = "  ".join(k.ljust(widths[k]) for k in widths)
    print(header)
    print("  ".join("-" * widths[k] for k in widths))
    for r in table:
        print("  ".join(r[k].ljust(widths[k]) for k in widths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
