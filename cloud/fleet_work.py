"""Demand response as fleet work: an event is rows in the database that every worker helps to finish.

`POST /v1/fleet/events` only calls `create_event`: one transaction stores the event and one
`fleet_event_jobs` row per planned site ("pending"), so an event never exists without its work, nor work
without its event; a retry with the same client key finds the event instead of making a second one.

The workers' planner loops (cloud/planner.py `run_planner`, `urgent=`) then call `work_one` before any
routine planning. It claims up to CLAIM_BATCH pending rows by a lease (PostgreSQL: `FOR UPDATE SKIP
LOCKED`, so workers never wait on each other; SQLite: a conditional UPDATE under the database's write
lock), solves each site's reduction/cost curve with the candidate plan of each curve point (cloud/fleet.py
`solve_curve`) and stores them together ("curved"; "skipped" or "failed" with a reason). A worker that
dies mid-batch loses its leases and another worker takes the rows; a row that has cost three leases is
given up ("failed").

When no row of the event is pending, one worker publishes it, in ONE transaction: it moves the event from
"curves" to "dispatched" (a conditional UPDATE, so only one worker can), allocates (greedy over the
curves), stores the chosen sites' incentives, signs and inserts their plans and flows, and marks their rows
"dispatched" with the plan version. A crash or timeout rolls all of it back and the event is published
again whole later; nothing is ever published twice. After the commit each chosen site is told "plan vN"
over its channel (cloud/server/channel_hub.py `notify_plans`, from any worker), and each one connected
on the channel gets the signed DR-window command (an import limit for the window, `_notify`); a Zap
without a channel finds the plan on its next poll. A site's dispatch is acknowledged when its Zap
fetched that plan version or a later one (cloud/fleet_acks.py) or said over the channel that it took it
(`channel_sites.plan_version`).
"""

from __future__ import annotations

import asyncio
import gzip
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec
import structlog
from nacl.signing import SigningKey
from sqlalchemy import Insert, Table, and_, bindparam, exists, func, null, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from cloud.db import Database, fleet_event_jobs, fleet_event_sites, fleet_events, plan_flows, plan_jobs, plans
from cloud.db import planning as store
from cloud.fleet import EventError, EventRequest, Option, SiteCurve, allocate, check_event, in_horizon, solve_curve
from cloud.planner import STEP, PlanError, PlannerOptions, prepare
from cloud_sync.channel_wire import MAX_WINDOW_S, DrAction
from cloud_sync.wire import check_plan, format_ts, sign_plan
from zapd.model import Plan

log = structlog.get_logger("zapcloud.fleet")

LEASE: Final = timedelta(seconds=60)  # one site's curve takes well under a second
LEASE_ENV: Final = "ZAPCLOUD_FLEET_LEASE_S"  # tests shorten it to see a dead worker's site taken over


def lease() -> timedelta:
    """How long a claimed site is a worker's before another may take it (LEASE, or $ZAPCLOUD_FLEET_LEASE_S)."""
    raw = os.environ.get(LEASE_ENV)
    try:
        seconds = float(raw) if raw else LEASE.total_seconds()
    except ValueError:
        seconds = LEASE.total_seconds()
    return timedelta(seconds=min(max(seconds, 1.0), 3600.0)) if math.isfinite(seconds) else LEASE


MAX_ATTEMPTS: Final = 3
PUBLISH_TRIES: Final = 3  # a routine plan may take a site's next version meanwhile: try the whole again

J = fleet_event_jobs


@dataclass(frozen=True, slots=True)
class Created:
    event_id: str
    replayed: bool  # True: the client key already named this event; nothing new was made


def _insert_ignore(db: Database, table: Table) -> Insert:
    if db.engine.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


# --- creating ------------------------------------------------------------------------------


async def create_event(db: Database, request: EventRequest, now: datetime) -> Created:
    """Store the event and its per-site work in one transaction (idempotent on the client key)."""
    check_event(request, now)
    await store.ensure_jobs(db, now)  # every site with assets has its planning row: those are the fleet
    event_id = uuid.uuid4().hex
    row = {
        "event_id": event_id,
        "client_key": request.client_key,
        "start": request.start,
        "end": request.end,
        "reduction_kw": request.reduction_kw,
        "created_at": now,
        "result": null(),
        "status": "curves",
    }
    async with db.engine.begin() as conn:
        inserted = await conn.execute(_insert_ignore(db, fleet_events).values(**row))
        if inserted.rowcount != 1:
            found = (
                await conn.execute(
                    select(
                        fleet_events.c.event_id, fleet_events.c.start, fleet_events.c.end, fleet_events.c.reduction_kw
                    ).where(fleet_events.c.client_key == request.client_key)
                )
            ).first()
            if found is None:
                raise RuntimeError("event id collision")  # uuid4: never
            if (_utc(found.start), _utc(found.end), float(found.reduction_kw)) != (
                request.start,
                request.end,
                request.reduction_kw,
            ):
                raise EventError(
                    f"client_key {request.client_key!r} already names event {found.event_id} with other parameters"
                )
            return Created(str(found.event_id), replayed=True)
        site_ids = (await conn.execute(select(plan_jobs.c.site_id).order_by(plan_jobs.c.site_id))).scalars().all()
        if site_ids:
            await conn.execute(
                J.insert(), [{"event_id": event_id, "site_id": s, "state": "pending", "attempts": 0} for s in site_ids]
            )
    log.info("fleet.event_created", event_id=event_id, sites=len(site_ids), requested_kw=request.reduction_kw)
    return Created(event_id, replayed=False)


# --- claiming and solving ------------------------------------------------------------------


def _claimable(now: datetime) -> Any:
    return and_(J.c.state == "pending", or_(J.c.lease_until.is_(None), J.c.lease_until < now))


@dataclass(frozen=True, slots=True)
class Claimed:
    event_id: str
    site_id: str


# Sites one worker claims per turn: one claim, one event read, one prior-version read and one finishing
# transaction for all of them (each cost ~2 ms of a worker's CPU per site when done one by one). A worker
# that dies holds at most this many sites until their lease runs out.
CLAIM_BATCH: Final = 8


async def claim_job(db: Database, owner: str, now: datetime) -> Claimed | None:
    """Lease one pending (event, site) row to `owner` (`claim_jobs` with a limit of one)."""
    got = await claim_jobs(db, owner, now, 1)
    return got[0] if got else None


async def claim_jobs(db: Database, owner: str, now: datetime, limit: int = CLAIM_BATCH) -> list[Claimed]:
    """Lease up to `limit` pending rows to `owner`; rows past their attempts are marked failed instead."""
    for _ in range(50):
        async with db.engine.begin() as conn:
            pick = (
                select(J.c.event_id, J.c.site_id, J.c.attempts)
                .where(_claimable(now))
                .order_by(J.c.event_id, J.c.site_id)
                .limit(limit)
            )
            if db.engine.dialect.name == "postgresql":
                pick = pick.with_for_update(skip_locked=True)
            found = (await conn.execute(pick)).all()
            if not found:
                return []
            spent = [(r.event_id, r.site_id) for r in found if r.attempts >= MAX_ATTEMPTS]
            fresh = [(r.event_id, r.site_id) for r in found if r.attempts < MAX_ATTEMPTS]
            if spent:
                reason = f"given up after {MAX_ATTEMPTS} attempts (a worker died on it or it kept failing)"
                await conn.execute(
                    update(J)
                    .where(tuple_(J.c.event_id, J.c.site_id).in_(spent), _claimable(now))
                    .values(state="failed", reason=reason, lease_owner=None)
                )
            if not fresh:
                continue
            # SQLite: another worker may have taken some between the SELECT and here: RETURNING says which
            took = await conn.execute(
                update(J)
                .where(tuple_(J.c.event_id, J.c.site_id).in_(fresh), _claimable(now))
                .values(lease_owner=owner, lease_until=now + lease(), attempts=J.c.attempts + 1)
                .returning(J.c.event_id, J.c.site_id)
            )
            claimed = [Claimed(str(e), str(s)) for e, s in sorted(took.all())]
            if claimed:
                return claimed
    return []


async def _finish_all(db: Database, owner: str, done: list[tuple[Claimed, dict[str, Any]]]) -> None:
    """Store the outcomes of claimed rows in one transaction (only rows still pending and ours).

    One statement per set of columns ("curved" rows carry the curve, the others a reason only), so a
    column an outcome does not name stays NULL rather than becoming JSON null.
    """
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for job, values in done:
        groups.setdefault(tuple(sorted(values)), []).append({"k_event": job.event_id, "k_site": job.site_id, **values})
    if not groups:
        return
    async with db.engine.begin() as conn:
        for columns, rows in groups.items():
            await conn.execute(
                update(J)
                .where(
                    J.c.event_id == bindparam("k_event"),
                    J.c.site_id == bindparam("k_site"),
                    J.c.state == "pending",
                    J.c.lease_owner == owner,
                )
                .values(lease_owner=None, lease_until=None, **{c: bindparam(c) for c in columns}),
                rows,
            )


async def _event_requests(db: Database, event_ids: set[str]) -> dict[str, EventRequest]:
    async with db.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(
                    fleet_events.c.event_id, fleet_events.c.start, fleet_events.c.end, fleet_events.c.reduction_kw
                ).where(fleet_events.c.event_id.in_(sorted(event_ids)))
            )
        ).all()
    return {str(r.event_id): EventRequest(_utc(r.start), _utc(r.end), float(r.reduction_kw)) for r in rows}


async def _latest_versions(db: Database, site_ids: list[str]) -> dict[str, int]:
    async with db.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(plans.c.site_id, func.max(plans.c.version))
                .where(plans.c.site_id.in_(site_ids))
                .group_by(plans.c.site_id)
            )
        ).all()
    return {str(s): int(v) for s, v in rows}


async def solve_job(db: Database, job: Claimed, owner: str, now: datetime, options: PlannerOptions) -> str:
    """Solve one claimed site's curve and store it; returns the row's new state."""
    states = await solve_jobs(db, [job], owner, now, options)
    return states[0] if states else "pending"


async def solve_jobs(
    db: Database, batch: list[Claimed], owner: str, now: datetime, options: PlannerOptions
) -> list[str]:
    """Solve the claimed sites' curves and store them together; returns the new state of each row solved.

    Past half the lease (slow sites: each solve may take up to its time limit) the rest of the batch is
    handed back unsolved, so no other worker takes a row this one is still about to solve.
    """
    started = time.monotonic()
    events = await _event_requests(db, {job.event_id for job in batch})
    priors = await _latest_versions(db, [job.site_id for job in batch])
    prices = store.SpotPrices()  # one read per area for the whole batch (all at `now`)
    done: list[tuple[Claimed, dict[str, Any]]] = []
    try:
        for job in batch:
            if time.monotonic() - started > lease().total_seconds() / 2:
                break
            row = await _curve_row(db, job, events.get(job.event_id), priors, now, options, prices)
            done.append((job, row))
    finally:
        # what was solved before a database error is kept; the rest waits for its lease to run out
        await _finish_all(db, owner, done)
    if len(done) < len(batch):
        await _release(db, owner, batch[len(done) :])
    return [values["state"] for _, values in done]


async def _release(db: Database, owner: str, jobs: list[Claimed]) -> None:
    """Hand claimed rows back unsolved (their attempt not counted)."""
    async with db.engine.begin() as conn:
        await conn.execute(
            update(J)
            .where(
                tuple_(J.c.event_id, J.c.site_id).in_([(j.event_id, j.site_id) for j in jobs]),
                J.c.state == "pending",
                J.c.lease_owner == owner,
            )
            .values(lease_owner=None, lease_until=None, attempts=J.c.attempts - 1)
        )


async def _curve_row(
    db: Database,
    job: Claimed,
    event: EventRequest | None,
    priors: dict[str, int],
    now: datetime,
    options: PlannerOptions,
    prices: store.SpotPrices,
) -> dict[str, Any]:
    """The row's new values: "curved" with the curve and its candidate plans, or "skipped"/"failed"."""
    if event is None:
        return {"state": "failed", "reason": "event gone"}
    try:
        base = await prepare(db, job.site_id, now, options, prices=prices)
        if not in_horizon(base, event.start, event.end):
            raise PlanError("window outside the site's planning horizon")
        solved = await asyncio.to_thread(solve_curve, base, event.start, event.end, options)
    except PlanError as exc:
        return {"state": "skipped", "reason": str(exc)}
    except SQLAlchemyError:
        raise  # the lease runs out and another worker retries the row
    except Exception as exc:  # one site's bad data must not hold the event until its attempts run out
        log.exception("fleet.curve_crashed", event_id=job.event_id, site_id=job.site_id)
        return {"state": "failed", "reason": f"internal error: {type(exc).__name__}: {exc}"}
    curve = [
        {"incentive": o.incentive, "reduction_kw": o.reduction_kw, "extra_cost": o.extra_cost}
        for o in solved.curve.options
    ]
    return {
        "state": "curved",
        "curve": curve,
        "candidates": gzip.compress(msgspec.json.encode(solved.candidates), compresslevel=3),
        "prior_version": priors.get(job.site_id),
        "base_net_kw": solved.base_net_kw,
        "planned_at": now,
    }


# --- publishing ----------------------------------------------------------------------------


def _no_pending(event_id: str) -> Any:
    return ~exists().where(J.c.event_id == event_id, J.c.state == "pending")


async def ready_event(db: Database) -> str | None:
    """An event whose curves are all in but which is not yet published (e.g. its last worker died)."""
    async with db.engine.connect() as conn:
        value = (
            await conn.execute(
                select(fleet_events.c.event_id)
                .where(
                    fleet_events.c.status == "curves",
                    ~exists().where(J.c.event_id == fleet_events.c.event_id, J.c.state == "pending"),
                )
                .limit(1)
            )
        ).scalar()
    return None if value is None else str(value)


async def publish_event(
    db: Database, signing_key: SigningKey, event_id: str, now: datetime, options: PlannerOptions
) -> bool:
    """Allocate and publish the event in one transaction; False if it is not ready or already published."""
    for attempt in range(1, PUBLISH_TRIES + 1):
        try:
            dispatched = await _publish_once(db, signing_key, event_id, now, options)
        except IntegrityError:
            # a routine plan took one of the versions meanwhile: everything rolled back, try it all again
            if attempt == PUBLISH_TRIES:
                raise
            continue
        if dispatched is None:
            return False
        window, sites = dispatched
        await _notify(db, signing_key, event_id, window, now, sites)
        return True
    return False


@dataclass(frozen=True, slots=True)
class Dispatched:
    """A chosen site's published plan and the import limit it holds in the event's window (kW)."""

    site_id: str
    version: int
    window_import_kw: float | None  # the largest of the plan's window slots' limits; None: no slot there


# A DR-window command must reach a connected Zap in this long, or the plan (fetched on the notice or the
# next poll) carries the event alone.
DR_COMMAND_TTL_S: Final = 600.0


async def _notify(
    db: Database, signing_key: SigningKey, event_id: str, window: tuple[datetime, datetime], now: datetime,
    dispatched: list[Dispatched],
) -> None:  # fmt: skip
    """ "Plan vN" to each dispatched site, and to each one connected on the live channel the signed DR window.

    The command (cloud/server/channel_hub.py `send_commands`: signed, with a nonce, expiring) caps the site's
    import in the window at the largest limit its new plan holds there, so the Zap acts within a second,
    before it has fetched the plan, and never asks more of the site than the plan does in any slot. Both
    go after the commit: a Zap told of a plan must find it stored. A lost doorbell or command only makes the
    Zap find the plan on its next poll; the event is published either way.
    """
    from cloud.server.channel_hub import live_sites, notify_plans, send_commands

    start, end = window
    try:
        await notify_plans(db, [(d.site_id, d.version) for d in dispatched])
        if end <= now or start > now + timedelta(seconds=MAX_WINDOW_S):
            return  # over, or too far ahead for a command (channel_wire.check_command): the plans carry it
        limits = {d.site_id: d.window_import_kw for d in dispatched if d.window_import_kw is not None}
        live = await live_sites(db, sorted(limits)) if limits else {}
        actions = [
            (site_id, DrAction(start=start, end=end, import_limit_kw=limits[site_id]))
            for site_id in sorted(limits)
            if site_id in live and live[site_id].connected
        ]
        if actions:
            await send_commands(db, signing_key, actions, now=now, ttl_s=DR_COMMAND_TTL_S)
            log.info("fleet.dr_commands_sent", event_id=event_id, sites=len(actions))
    except SQLAlchemyError:
        log.warning("fleet.notify_failed", event_id=event_id, sites=len(dispatched))


def _window_import_kw(plan: Plan, start: datetime, end: datetime) -> float | None:
    limits = [
        s.intent.grid_import_limit_w
        for s in plan.slots
        if start <= s.start < end and s.intent.grid_import_limit_w is not None
    ]
    return round(max(limits) / 1000.0, 3) if limits else None


async def _publish_once(
    db: Database, signing_key: SigningKey, event_id: str, now: datetime, options: PlannerOptions
) -> tuple[tuple[datetime, datetime], list[Dispatched]] | None:
    async with db.engine.begin() as conn:
        took = await conn.execute(
            update(fleet_events)
            .where(fleet_events.c.event_id == event_id, fleet_events.c.status == "curves", _no_pending(event_id))
            .values(status="dispatched", dispatched_at=now)
        )
        if took.rowcount != 1:
            return None
        event = (await conn.execute(select(fleet_events).where(fleet_events.c.event_id == event_id))).one()
        start, end, target = _utc(event.start), _utc(event.end), float(event.reduction_kw)
        curved = (
            await conn.execute(select(J.c.site_id, J.c.curve).where(J.c.event_id == event_id, J.c.state == "curved"))
        ).all()
        curves = [
            SiteCurve(
                str(s), [Option(p["incentive"], p["reduction_kw"], p["extra_cost"], i) for i, p in enumerate(c or [])]
            )
            for s, c in curved
        ]
        chosen = allocate(curves, target)
        latest = dict(
            (
                await conn.execute(
                    select(plans.c.site_id, func.max(plans.c.version))
                    .join(J, and_(J.c.site_id == plans.c.site_id, J.c.event_id == event_id, J.c.state == "curved"))
                    .group_by(plans.c.site_id)
                )
            ).all()
        )
        blobs = (
            dict(
                (
                    await conn.execute(
                        select(J.c.site_id, J.c.candidates).where(
                            J.c.event_id == event_id, J.c.site_id.in_(list(chosen))
                        )
                    )
                ).all()
            )
            if chosen
            else {}
        )
        plan_rows: list[dict[str, Any]] = []
        flow_rows: list[dict[str, Any]] = []
        job_rows: list[dict[str, Any]] = []
        sites_out: list[dict[str, Any]] = []
        dispatched: list[Dispatched] = []
        for site_id, option in sorted(chosen.items()):
            candidate = msgspec.json.decode(gzip.decompress(blobs[site_id]))[option.index]
            version = int(latest.get(site_id) or 0) + 1
            plan = msgspec.structs.replace(msgspec.convert(candidate["plan"], Plan), version=version, issued_at=now)
            plan = msgspec.structs.replace(plan, valid_until=min(plan.valid_until, now + options.plan_valid_for))
            check_plan(plan)
            signed = sign_plan(signing_key, plan)
            dispatched.append(Dispatched(site_id, version, _window_import_kw(plan, start, end)))
            plan_rows.append(
                {
                    "site_id": site_id,
                    "version": version,
                    "body": signed.body,
                    "signature": signed.signature,
                    "issued_at": now,
                    "valid_until": plan.valid_until,
                }
            )
            flows = candidate["flows"]  # already as stored (store.stored_flows, when the curve was solved)
            flow_rows.append(
                {
                    "site_id": site_id,
                    "version": version,
                    "start": plan.slots[0].start,
                    "step_s": int(STEP.total_seconds()),
                    "flows": flows,
                }
            )
            job_rows.append(
                {
                    "k_site": site_id,
                    "incentive": option.incentive,
                    "reduction_kw": option.reduction_kw,
                    "extra_cost": option.extra_cost,
                    "plan_version": version,
                }
            )
            sites_out.append(
                {
                    "site_id": site_id,
                    "reduction_kw": round(option.reduction_kw, 3),
                    "extra_cost": round(option.extra_cost, 4),
                    "incentive_per_kwh": option.incentive,
                    "plan_version": version,
                }
            )
        if chosen:
            await conn.execute(plans.insert(), plan_rows)
            await conn.execute(plan_flows.insert(), flow_rows)
            await conn.execute(
                fleet_event_sites.insert(),
                [
                    {"event_id": event_id, "site_id": s, "start": start, "end": end, "incentive": o.incentive}
                    for s, o in chosen.items()
                ],
            )
            await conn.execute(
                update(J)
                .where(J.c.event_id == event_id, J.c.site_id == bindparam("k_site"))
                .values(
                    state="dispatched",
                    dispatched_at=now,
                    candidates=None,
                    incentive=bindparam("incentive"),
                    reduction_kw=bindparam("reduction_kw"),
                    extra_cost=bindparam("extra_cost"),
                    plan_version=bindparam("plan_version"),
                ),
                job_rows,
            )
        await conn.execute(
            update(J).where(J.c.event_id == event_id, J.c.state == "curved").values(state="unchosen", candidates=None)
        )
        met = sum(o.reduction_kw for o in chosen.values())
        result = {
            "event_id": event_id,
            "client_key": event.client_key,
            "start": format_ts(start),
            "end": format_ts(end),
            "requested_kw": target,
            "met_kw": round(met, 3),
            "fully_met": met >= target - 1e-6,
            "extra_cost": round(sum(o.extra_cost for o in chosen.values()), 4),
            "sites": sites_out,
        }
        await conn.execute(update(fleet_events).where(fleet_events.c.event_id == event_id).values(result=result))
    log.info("fleet.event_dispatched", event_id=event_id, sites=len(chosen), requested_kw=target, met_kw=round(met, 3))
    return (start, end), dispatched


# --- the worker's turn ---------------------------------------------------------------------


async def work_one(db: Database, signing_key: SigningKey, owner: str, now: datetime, options: PlannerOptions) -> bool:
    """One step of demand-response work, if there is any: a site's curve, or publishing a ready event."""
    batch = await claim_jobs(db, owner, now)
    if batch:
        await solve_jobs(db, batch, owner, now, options)
        # publish right away if these were the event's last rows (one conditional UPDATE; a worker that
        # finds nothing to claim publishes a ready event in its next turn anyway)
        for event_id in sorted({job.event_id for job in batch}):
            await publish_event(db, signing_key, event_id, now, options)
        return True
    ready = await ready_event(db)
    if ready is not None:
        return await publish_event(db, signing_key, ready, now, options)
    return False


def urgent_work(
    db: Database, signing_key: SigningKey, options: PlannerOptions | None = None
) -> Callable[[str, datetime], Awaitable[bool]]:
    """`work_one` in the shape `run_planner(urgent=...)` takes."""
    opts = options or PlannerOptions()

    async def urgent(owner: str, now: datetime) -> bool:
        return await work_one(db, signing_key, owner, now, opts)

    return urgent


__all__ = [
    "CLAIM_BATCH",
    "LEASE",
    "LEASE_ENV",
    "MAX_ATTEMPTS",
    "Claimed",
    "Created",
    "claim_job",
    "claim_jobs",
    "create_event",
    "lease",
    "publish_event",
    "ready_event",
    "solve_job",
    "solve_jobs",
    "urgent_work",
    "work_one",
]
