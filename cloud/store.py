"""Moved to `cloud.db.planning` (issue 15: one place for the cloud's schema and queries). This name
stays so code in flight keeps importing; new code imports from `cloud.db.planning`."""

from __future__ import annotations

from cloud.db.planning import (
    QUARTER,
    Incentive,
    PlanFlows,
    StoredForecast,
    claim_site,
    current_flows,
    ensure_jobs,
    finish_site,
    forecast_errors,
    get_spot_prices,
    job_state,
    latest_flows,
    mark_due,
    mark_due_on_telemetry,
    planned_sites,
    put_spot_prices,
    save_flows,
    save_forecast,
    set_forecast_mae,
    site_incentives,
    unscored_forecasts,
)

__all__ = [
    "QUARTER",
    "Incentive",
    "PlanFlows",
    "StoredForecast",
    "claim_site",
    "current_flows",
    "ensure_jobs",
    "finish_site",
    "forecast_errors",
    "get_spot_prices",
    "job_state",
    "latest_flows",
    "mark_due",
    "mark_due_on_telemetry",
    "planned_sites",
    "put_spot_prices",
    "save_flows",
    "save_forecast",
    "set_forecast_mae",
    "site_incentives",
    "unscored_forecasts",
]
