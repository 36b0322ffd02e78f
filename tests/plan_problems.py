"""A small hourly planning problem shared by the two-stage tests (cloud.optimizer_scenarios, cloud.plan_risk):
a 10 kWh / 5 kW battery at its minimum, flat prices, so a test states only the load and PV it is about."""

from __future__ import annotations

from datetime import UTC, datetime

from cloud.optimizer_io import Battery, Grid, Problem


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
        battery=Battery(
            capacity_kwh=10.0,
            soc_initial=0.1,
            soc_min=0.1,
            soc_max=1.0,
            max_charge_kw=5.0,
            max_discharge_kw=5.0,
            charge_efficiency=0.95,
            discharge_efficiency=0.95,
            cycle_cost_per_kwh=0.02,
        ),
        grid=Grid(max_import_kw=max_import_kw, max_export_kw=10.0),
    )
