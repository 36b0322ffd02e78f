"""The cloud's schema: every table, in one SQLAlchemy `MetaData` (the migrations in cloud/migrations
build and check against it). The queries live next door: cloud/db/database.py (sites, telemetry,
plans, the fleet's rows) and cloud/db/planning.py (the planning work queue, prices, forecasts, flows).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

metadata = MetaData()

sites = Table(
    "sites",
    metadata,
    Column("site_id", String(64), primary_key=True),
    Column("public_key", String(64), nullable=False),
    Column("key_id", String(16), nullable=False, unique=True),
    Column("assets", JSON, nullable=True),
    Column("tariff", JSON, nullable=True),
    # Highest seq such that every seq 1..stored_through is stored (or declared lost).
    Column("stored_through", BigInteger, nullable=False, default=0),
    Column("lost_readings", BigInteger, nullable=False, default=0),
    Column("registered_at", DateTime(timezone=True), nullable=False),
)

telemetry = Table(
    "telemetry",
    metadata,
    Column("site_id", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("der_id", String(128), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("values", JSON, nullable=False),
    Column("quality", String(16), nullable=False),
    PrimaryKeyConstraint("site_id", "seq"),
)

plans = Table(
    "plans",
    metadata,
    Column("site_id", String(64), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("signature", String(128), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("valid_until", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("site_id", "version"),
)

der_models = Table(
    "der_models",
    metadata,
    Column("site_id", String(64), nullable=False),
    Column("der_id", String(128), nullable=False),
    Column("capabilities", JSON, nullable=False),
    Column("reported_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("site_id", "der_id"),
)

command_reports = Table(
    "command_reports",
    metadata,
    Column("site_id", String(64), nullable=False),
    Column("der_id", String(128), nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("command", JSON, nullable=False),
    Column("result", Text, nullable=False),
    Column("clamped_reason", Text, nullable=True),
    # One command per DER per instant: a re-sent batch carries the same reports and is ignored.
    PrimaryKeyConstraint("site_id", "der_id", "ts"),
)

# Forecasters read telemetry by time range (cloud/site_series.py).
Index("ix_telemetry_site_ts", telemetry.c.site_id, telemetry.c.ts)

# --- planning (cloud/planner.py, cloud/store.py, cloud/fleet.py own these tables) ----------

# One row per planned site: the work queue any worker claims from (lease), and why it is due.
plan_jobs = Table(
    "plan_jobs",
    metadata,
    Column("site_id", String(64), primary_key=True),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("planned_at", DateTime(timezone=True), nullable=True),
    Column("planned_through_seq", BigInteger, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
)

# Day-ahead spot prices per bidding zone, per kWh, normalized to 15-minute rows.
spot_prices = Table(
    "spot_prices",
    metadata,
    Column("area", String(32), nullable=False),
    Column("start", DateTime(timezone=True), nullable=False),
    Column("price", Float, nullable=False),
    Column("fetched_at", DateTime(timezone=True), nullable=False),
    # Where the price came from and when its source published it (migration 0008); NULL before that.
    Column("source", String(64), nullable=True),
    Column("published_at", DateTime(timezone=True), nullable=True),
    PrimaryKeyConstraint("area", "start"),
)

# Each forecast the planner used, and its day-ahead error once the actuals are in.
forecasts = Table(
    "forecasts",
    metadata,
    Column("site_id", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("start", DateTime(timezone=True), nullable=False),
    Column("step_s", Integer, nullable=False),
    Column("values", JSON, nullable=False),
    Column("mae", Float, nullable=True),
    Column("mae_slots", Integer, nullable=True),
    PrimaryKeyConstraint("site_id", "kind", "issued_at"),
)

# The optimizer's flows behind a stored plan (the signed plan carries only the intents).
plan_flows = Table(
    "plan_flows",
    metadata,
    Column("site_id", String(64), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("start", DateTime(timezone=True), nullable=False),
    Column("step_s", Integer, nullable=False),
    Column("flows", JSON, nullable=False),
    PrimaryKeyConstraint("site_id", "version"),
)

# Demand-response events and what each site was asked to do for them.
fleet_events = Table(
    "fleet_events",
    metadata,
    Column("event_id", String(40), primary_key=True),
    Column("start", DateTime(timezone=True), nullable=False),
    Column("end", DateTime(timezone=True), nullable=False),
    Column("reduction_kw", Float, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("result", JSON, nullable=True),  # None while a worker is dispatching it
    # The caller's idempotency key (migration 0004): a retry with it gets the first answer, never a second dispatch.
    Column("client_key", String(64), nullable=True),
    # Migration 0007 (cloud/fleet_work.py): "curves" while workers solve the sites, "dispatched" once the
    # allocation and every chosen site's plan are published (one transaction). NULL: an event from before.
    Column("status", String(16), nullable=True),
    Column("dispatched_at", DateTime(timezone=True), nullable=True),
)
Index("ux_fleet_events_client_key", fleet_events.c.client_key, unique=True)

fleet_event_sites = Table(
    "fleet_event_sites",
    metadata,
    Column("event_id", String(40), nullable=False),
    Column("site_id", String(64), nullable=False),
    Column("start", DateTime(timezone=True), nullable=False),
    Column("end", DateTime(timezone=True), nullable=False),
    Column("incentive", Float, nullable=False),  # per kWh of net import avoided in the window
    PrimaryKeyConstraint("event_id", "site_id"),
)

# One row per (event, site): the demand-response work queue (cloud/fleet_work.py, migration 0007). A worker
# claims a "pending" row by lease and solves the site's reduction/cost curve ("curved", or "skipped" /
# "failed" with a reason); the publishing transaction marks the chosen rows "dispatched" with their plan
# version and the others "unchosen"; the Zap's fetch (or channel acknowledgement) sets acked_at.
fleet_event_jobs = Table(
    "fleet_event_jobs",
    metadata,
    Column("event_id", String(40), nullable=False),
    Column("site_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("reason", Text, nullable=True),
    Column("prior_version", BigInteger, nullable=True),  # the site's latest plan when its curve was solved
    Column("base_net_kw", Float, nullable=True),  # mean planned net import in the window without the event
    Column("curve", JSON, nullable=True),  # [{incentive, reduction_kw, extra_cost}], the lower convex hull
    Column("candidates", LargeBinary, nullable=True),  # gzip JSON: the unsigned plan and flows per curve point
    Column("incentive", Float, nullable=True),
    Column("reduction_kw", Float, nullable=True),
    Column("extra_cost", Float, nullable=True),
    Column("plan_version", BigInteger, nullable=True),
    Column("planned_at", DateTime(timezone=True), nullable=True),
    Column("dispatched_at", DateTime(timezone=True), nullable=True),
    Column("acked_at", DateTime(timezone=True), nullable=True),
    PrimaryKeyConstraint("event_id", "site_id"),
)
Index("ix_fleet_event_jobs_state", fleet_event_jobs.c.state)
Index("ix_fleet_event_jobs_site", fleet_event_jobs.c.site_id)
