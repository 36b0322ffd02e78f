"""Queries on the planning tables (schema in cloud/db/schema.py): the planning work queue, spot prices,
forecasts with their errors, the flows behind each plan, demand-response allocations.

The work queue is the database itself (ARCHITECTURE.md "Scale"): `claim_site` hands a due site to exactly
one worker by a lease. PostgreSQL: `SELECT ... FOR UPDATE SKIP LOCKED` then UPDATE in one transaction, so
workers never wait on each other. SQLite: a single conditional UPDATE (the row must still be unleased),
which the database-wide write lock makes atomic. A worker that dies holding a lease loses it when the
lease expires; nothing lives in any process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Insert, Table, and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from cloud.db.database import Database, _utc
from cloud.db.schema import (
    fleet_event_sites,
    forecasts,
    plan_flows,
    plan_jobs,
    plans,
    sites,
    spot_prices,
)
from cloud.prices import PriceSeries

QUARTER = timedelta(minutes=15)


def _insert_ignore(db: Database, table: Table) -> Insert:
    if db.engine.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def _upsert(db: Database, table: Table, keys: list[str], update_cols: list[str]) -> Insert:
    if db.engine.dialect.name == "postgresql":
        pg = postgresql.insert(table)
        return pg.on_conflict_do_update(index_elements=keys, set_={c: pg.excluded[c] for c in update_cols})
    lite = sqlite.insert(table)
    return lite.on_conflict_do_update(index_elements=keys, set_={c: lite.excluded[c] for c in update_cols})


# --- work queue ---------------------------------------------------------------------------


async def ensure_jobs(db: Database, now: datetime) -> None:
    """Give every site with assets a queue row (due now). Racing workers insert it once."""
    async with db.engine.begin() as conn:
        missing = (
            await conn.execute(
                select(sites.c.site_id).where(
                    sites.c.assets.is_not(None), sites.c.site_id.not_in(select(plan_jobs.c.site_id))
                )
            )
        ).scalars()
        rows = [{"site_id": s, "due_at": now, "planned_through_seq": 0} for s in missing]
        if rows:
            stmt = _insert_ignore(db, plan_jobs)
            await conn.execute(stmt, rows)


async def mark_due_on_telemetry(db: Database, now: datetime, min_interval: timedelta) -> int:
    """Sites with telemetry newer than their last plan become due, at most once per `min_interval`."""
    stored = select(sites.c.stored_through).where(sites.c.site_id == plan_jobs.c.site_id).scalar_subquery()
    async with db.engine.begin() as conn:
        result = await conn.execute(
            update(plan_jobs)
            .where(
                plan_jobs.c.due_at > now,
                # a site that failed waits for its retry time; new telemetry rarely fixes it
                plan_jobs.c.last_error.is_(None),
                plan_jobs.c.planned_through_seq < stored,
                or_(plan_jobs.c.planned_at.is_(None), plan_jobs.c.planned_at <= now - min_interval),
            )
            .values(due_at=now)
        )
        return int(result.rowcount or 0)


async def mark_due(db: Database, site_ids: list[str], now: datetime) -> None:
    if not site_ids:
        return
    async with db.engine.begin() as conn:
        await conn.execute(
            update(plan_jobs).where(plan_jobs.c.site_id.in_(site_ids), plan_jobs.c.due_at > now).values(due_at=now)
        )


def _claimable(now: datetime) -> Any:
    return and_(plan_jobs.c.due_at <= now, or_(plan_jobs.c.lease_until.is_(None), plan_jobs.c.lease_until < now))


async def claim_site(db: Database, owner: str, now: datetime, lease: timedelta) -> str | None:
    """Lease the most overdue site to `owner`; None when nothing is due."""
    async with db.engine.begin() as conn:
        if db.engine.dialect.name == "postgresql":
            site_id = (
                await conn.execute(
                    select(plan_jobs.c.site_id)
                    .where(_claimable(now))
                    .order_by(plan_jobs.c.due_at)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                )
            ).scalar()
            if site_id is None:
                return None
            await conn.execute(
                update(plan_jobs)
                .where(plan_jobs.c.site_id == site_id)
                .values(lease_until=now + lease, lease_owner=owner)
            )
            return str(site_id)
        oldest = select(plan_jobs.c.site_id).where(_claimable(now)).order_by(plan_jobs.c.due_at).limit(1)
        claimed = (
            await conn.execute(
                update(plan_jobs)
                .where(plan_jobs.c.site_id == oldest.scalar_subquery(), _claimable(now))
                .values(lease_until=now + lease, lease_owner=owner)
                .returning(plan_jobs.c.site_id)
            )
        ).scalar()
        return None if claimed is None else str(claimed)


async def finish_site(
    db: Database,
    site_id: str,
    owner: str,
    now: datetime,
    *,
    next_due: datetime,
    planned_through_seq: int | None,
    error: str | None,
) -> None:
    """Release the lease. A success records what telemetry the plan saw; a failure keeps it."""
    values: dict[str, Any] = {"lease_until": None, "lease_owner": None, "due_at": next_due, "last_error": error}
    if error is None:
        values["planned_at"] = now
        if planned_through_seq is not None:
            values["planned_through_seq"] = planned_through_seq
    async with db.engine.begin() as conn:
        await conn.execute(
            update(plan_jobs).where(plan_jobs.c.site_id == site_id, plan_jobs.c.lease_owner == owner).values(**values)
        )


async def job_state(db: Database, site_id: str) -> dict[str, Any] | None:
    async with db.engine.connect() as conn:
        row = (await conn.execute(select(plan_jobs).where(plan_jobs.c.site_id == site_id))).first()
    return None if row is None else dict(row._mapping)


# --- spot prices --------------------------------------------------------------------------


async def put_spot_prices(
    db: Database, area: str, series: PriceSeries, now: datetime, *, source: str = "operator upload"
) -> int:
    """Store prices (per kWh) at 15-minute rows and make the area's sites due for a re-plan.

    Each row records its `source` and when the source published it (`series.published_at`, else now).
    """
    rows: list[dict[str, Any]] = []
    published = series.published_at or now
    per = max(1, int(series.step // QUARTER))
    if series.step < QUARTER or series.step % QUARTER:
        raise ValueError(f"price step {series.step} is not a multiple of 15 minutes")
    for i, v in enumerate(series.values):
        if math.isnan(v):
            continue
        for q in range(per):
            start = series.start + series.step * i + QUARTER * q
            rows.append({"area": area, "start": start, "price": v, "fetched_at": now, "source": source,
                         "published_at": published})  # fmt: skip
    if not rows:
        return 0
    stmt = _upsert(db, spot_prices, ["area", "start"], ["price", "fetched_at", "source", "published_at"])
    async with db.engine.begin() as conn:
        await conn.execute(stmt, rows)
        tariffs = (await conn.execute(select(sites.c.site_id, sites.c.tariff))).all()
    due = [s for s, t in tariffs if isinstance(t, dict) and t.get("spot_area") == area]
    await mark_due(db, due, now)
    return len(rows)


async def get_spot_prices(db: Database, area: str, start: datetime, n: int) -> list[float | None]:
    """Prices on the 15-minute grid from `start` (None where unknown)."""
    async with db.engine.connect() as conn:
        result = await conn.execute(
            select(spot_prices.c.start, spot_prices.c.price).where(
                spot_prices.c.area == area,
                spot_prices.c.start >= start,
                spot_prices.c.start < start + QUARTER * n,
            )
        )
        by_start = {_utc(s): float(p) for s, p in result}
    return [by_start.get(_utc(start + QUARTER * i)) for i in range(n)]


class SpotPrices:
    """`get_spot_prices` read once per (area, start, slots) for a batch of sites planned at one instant.

    A DR turn (cloud/fleet_work.py) prepares up to 8 sites of mostly one area at one `now`: one read serves
    them all. Prices uploaded during the turn reach its later sites a turn late, which a routine re-plan
    on new prices (it keeps the event's incentive) would correct anyway.
    """

    def __init__(self) -> None:
        self._read: dict[tuple[str, datetime, int], list[float | None]] = {}

    async def get(self, db: Database, area: str, start: datetime, n: int) -> list[float | None]:
        key = (area, start, n)
        if key not in self._read:
            self._read[key] = await get_spot_prices(db, area, start, n)
        return list(self._read[key])


# --- forecasts ----------------------------------------------------------------------------


async def save_forecast(
    db: Database, site_id: str, kind: str, issued_at: datetime, start: datetime, step: timedelta, values: list[float]
) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(
            _insert_ignore(db, forecasts),
            [
                {
                    "site_id": site_id,
                    "kind": kind,
                    "issued_at": issued_at,
                    "start": start,
                    "step_s": int(step.total_seconds()),
                    "values": [round(v, 4) for v in values],
                }
            ],
        )


@dataclass(frozen=True, slots=True)
class StoredForecast:
    kind: str
    issued_at: datetime
    start: datetime
    step: timedelta
    values: list[float]


async def unscored_forecasts(db: Database, site_id: str, scored_before: datetime) -> list[StoredForecast]:
    """Forecasts whose scoring window (the first day after issue) ended before `scored_before`."""
    async with db.engine.connect() as conn:
        result = await conn.execute(
            select(
                forecasts.c.kind, forecasts.c.issued_at, forecasts.c.start, forecasts.c.step_s, forecasts.c["values"]
            )
            .where(forecasts.c.site_id == site_id, forecasts.c.mae_slots.is_(None), forecasts.c.start < scored_before)
            .order_by(forecasts.c.issued_at)
            .limit(500)
        )
        return [StoredForecast(k, _utc(i), _utc(s), timedelta(seconds=st), list(v)) for k, i, s, st, v in result]


async def set_forecast_mae(
    db: Database, site_id: str, kind: str, issued_at: datetime, mae: float | None, slots: int
) -> None:
    """mae None with slots 0: scored, but there was nothing to compare with (telemetry gap)."""
    async with db.engine.begin() as conn:
        await conn.execute(
            update(forecasts)
            .where(forecasts.c.site_id == site_id, forecasts.c.kind == kind, forecasts.c.issued_at == issued_at)
            .values(mae=mae, mae_slots=slots)
        )


async def forecast_errors(db: Database, site_id: str, since: datetime) -> dict[str, dict[str, float]]:
    """Per kind: mean day-ahead MAE (kW) of the forecasts issued since `since`, and how many were scored."""
    async with db.engine.connect() as conn:
        result = await conn.execute(
            select(forecasts.c.kind, func.avg(forecasts.c.mae), func.count())
            .where(forecasts.c.site_id == site_id, forecasts.c.mae.is_not(None), forecasts.c.issued_at >= since)
            .group_by(forecasts.c.kind)
        )
        return {k: {"mae_kw": float(m), "forecasts": float(c)} for k, m, c in result}


# --- plan flows ---------------------------------------------------------------------------


def stored_flows(flows: dict[str, list[float]]) -> dict[str, list[float]]:
    """A plan's flows as they are stored: 4 decimals (0.1 W, 0.01 % SoC, 1e-4 EUR/kWh)."""
    return {k: [round(x, 4) for x in v] for k, v in flows.items()}


async def save_flows(
    db: Database, site_id: str, version: int, start: datetime, step: timedelta, flows: dict[str, list[float]]
) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(
            _insert_ignore(db, plan_flows),
            [
                {
                    "site_id": site_id,
                    "version": version,
                    "start": start,
                    "step_s": int(step.total_seconds()),
                    "flows": stored_flows(flows),
                }
            ],
        )


@dataclass(frozen=True, slots=True)
class PlanFlows:
    site_id: str
    version: int
    start: datetime
    step: timedelta
    flows: dict[str, list[float]]
    valid_until: datetime


async def current_flows(db: Database, now: datetime) -> list[PlanFlows]:
    """For every site: the flows of its latest plan, if that plan is still valid and has flows."""
    latest = select(plans.c.site_id, func.max(plans.c.version).label("version")).group_by(plans.c.site_id).subquery()
    async with db.engine.connect() as conn:
        result = await conn.execute(
            select(plan_flows, plans.c.valid_until)
            .join(latest, and_(plan_flows.c.site_id == latest.c.site_id, plan_flows.c.version == latest.c.version))
            .join(plans, and_(plans.c.site_id == latest.c.site_id, plans.c.version == latest.c.version))
            .where(plans.c.valid_until > now)
        )
        return [
            PlanFlows(
                site_id=r.site_id,
                version=int(r.version),
                start=_utc(r.start),
                step=timedelta(seconds=r.step_s),
                flows=dict(r.flows),
                valid_until=_utc(r.valid_until),
            )
            for r in result
        ]


async def latest_flows(db: Database, site_id: str) -> PlanFlows | None:
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(
                select(plan_flows, plans.c.valid_until)
                .join(plans, and_(plans.c.site_id == plan_flows.c.site_id, plans.c.version == plan_flows.c.version))
                .where(plan_flows.c.site_id == site_id)
                .order_by(plan_flows.c.version.desc())
                .limit(1)
            )
        ).first()
    if row is None:
        return None
    return PlanFlows(
        site_id=row.site_id,
        version=int(row.version),
        start=_utc(row.start),
        step=timedelta(seconds=row.step_s),
        flows=dict(row.flows),
        valid_until=_utc(row.valid_until),
    )


# --- demand response ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Incentive:
    start: datetime
    end: datetime
    per_kwh: float


async def site_incentives(db: Database, site_id: str, start: datetime, end: datetime) -> list[Incentive]:
    """Demand-response incentives for the site that overlap [start, end)."""
    async with db.engine.connect() as conn:
        result = await conn.execute(
            select(fleet_event_sites.c.start, fleet_event_sites.c.end, fleet_event_sites.c.incentive).where(
                fleet_event_sites.c.site_id == site_id,
                fleet_event_sites.c.end > start,
                fleet_event_sites.c.start < end,
                fleet_event_sites.c.incentive > 0,
            )
        )
        return [Incentive(_utc(s), _utc(e), float(p)) for s, e, p in result]


async def planned_sites(db: Database) -> list[str]:
    async with db.engine.connect() as conn:
        return [str(s) for s in (await conn.execute(select(plan_jobs.c.site_id))).scalars()]


__all__ = [
    "Incentive",
    "PlanFlows",
    "SpotPrices",
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
    "stored_flows",
    "unscored_forecasts",
]
