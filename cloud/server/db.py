"""Moved to `cloud.db` (issue 15: one place for the cloud's schema and queries). This name stays so
code in flight keeps importing; new code imports from `cloud.db`."""

from __future__ import annotations

from cloud.db import (
    Database,
    DatabaseFileError,
    IngestResult,
    PlanVersionConflictError,
    SiteKeyConflictError,
    SiteRecord,
    StoredPlan,
    command_reports,
    der_models,
    fleet_event_jobs,
    fleet_event_sites,
    fleet_events,
    forecasts,
    metadata,
    plan_flows,
    plan_jobs,
    plans,
    secure_sqlite_file,
    sites,
    spot_prices,
    telemetry,
)

__all__ = [
    "Database",
    "DatabaseFileError",
    "IngestResult",
    "PlanVersionConflictError",
    "SiteKeyConflictError",
    "SiteRecord",
    "StoredPlan",
    "command_reports",
    "der_models",
    "fleet_event_jobs",
    "fleet_event_sites",
    "fleet_events",
    "forecasts",
    "metadata",
    "plan_flows",
    "plan_jobs",
    "plans",
    "secure_sqlite_file",
    "sites",
    "spot_prices",
    "telemetry",
]
