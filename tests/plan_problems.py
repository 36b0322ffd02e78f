"""Planning problems the optimizer tests share: the bench's battery, and a small hourly problem for the
two-stage tests (cloud.optimizer_scenarios, cloud.plan_risk): that battery at its minimum, flat prices, so a
test states only the load and PV it is about."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cloud.optimizer_io import Battery, Grid, Problem


def bench_battery(soc_initial: float, **overrides: Any) -> Battery:
    """The bench's battery (bench.backtest): 10 kWh / 5 kW, 95 % each way, SoC 10-95 %, 0.02 per kWh of wear."""
    fields: dict[str, Any] = {
        "capacity_kwh": 10.0,
        "soc_initial": soc_initial,
        "soc_min": 0.1,
        "soc_max": 0.95,
        "max_charge_kw": 5.0,
        "max_discharge_kw": 5.0,
        "charge_efficiency": 0.95,
        "discharge_efficiency": 0.95,
        "cycle_cost_per_kwh": 0.02,
    }
    return Battery(**{**fields, **overrides})


def hour_problem(
    pv: list[float], load: list[float], *, export_price: float = 0.05, max_import_kw: float = 10.0
) -> Problem:
    n = len(pv)
    return Problem(
        start=datetime(2026, 6, 1, 8, tzinfo=UTC),
        step_minutes=60.0,
        import_price=[0.30] * n,
        export_price=[export_price] * n,
        load_kw=load,
        pv_kw=pv,
        battery=bench_battery(0.1, soc_max=1.0),
        grid=Grid(max_import_kw=max_import_kw, max_export_kw=10.0),
    )
