"""The cloud's data layer in one place (issue 15: the schema and queries were split between
cloud/server/db.py and cloud/store.py):

- `cloud.db.schema`: every table (one `MetaData`);
- `cloud.db.database`: `Database` (engine, sites, telemetry ingest, plans, the fleet's rows) and the
  SQLite file rules;
- `cloud.db.planning`: the planning work queue (`claim_site`), prices, forecasts, flows.

`from cloud.db import Database, sites` works for the first two.
"""

from __future__ import annotations

from cloud.db.database import (
    Database,
    DatabaseFileError,
    IngestResult,
    PlanVersionConflictError,
    SiteKeyConflictError,
    SiteRecord,
    StoredPlan,
    secure_sqlite_file,
)
from cloud.db.schema import (
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
