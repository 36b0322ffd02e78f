"""What `GET /v1/fleet/events/{id}` answers: progress, the allocation and, once the window has begun, delivery.

Progress counts the event's per-site rows (cloud/fleet_work.py): planned (curve solved), skipped, failed,
dispatched (plan published) and acknowledged (the Zap fetched that plan or a later one).

Delivery, per dispatched site, is measured grid import against two baselines:

* the plan before the event: the mean net import (import - export) the site's latest plan before the
  event expected in the window (its stored flows); where that plan does not cover the window, the
  counterfactual solved with the event's inputs and no incentive (`baseline_plan_source` says which);
* a standard "10-of-10" baseline (after CAISO/PJM-style X-of-Y customer baselines): the mean measured net
  import in the same clock window on the 10 most recent comparable days before the event, where comparable
  is the same day type in the site's time zone (Monday-Friday, or Saturday-Sunday), looking back at most
  45 days, skipping days on which the site had another demand-response event in that window and days with
  telemetry for under 80 % of the window's slots. Fewer than 5 such days: no baseline (null). No day-of
  adjustment is applied.

Measured import is the grid meter's mean power per 15-minute slot (cloud/site_series.py), over the
window's slots that have begun (`measured_slots`), with at least 80 % of them covered.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

import numpy as np
from sqlalchemy import case, func, or_, select

from cloud.assets import AssetsError, decode_assets
from cloud.db import Database, fleet_event_jobs, fleet_event_sites, fleet_events, plan_flows
from cloud.planner import STEP, floor_slot
from cloud.server.channel_hub import channel_sites
from cloud.site_series import load_series
from cloud_sync.wire import format_ts

BASELINE_DAYS: Final = 10
BASELINE_MIN_DAYS: Final = 5
LOOKBACK_DAYS: Final = 45
MIN_COVERAGE: Final = 0.8
MAX_DELIVERY_PAGE: Final = 200

J = fleet_event_jobs


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


async def event_status(
    db: Database, event_id: str, now: datetime, *, delivery: bool = False, offset: int = 0, limit: int = 50
) -> dict[str, Any] | None:
    async with db.engine.connect() as conn:
        event = (await conn.execute(select(fleet_events).where(fleet_events.c.event_id == event_id))).first()
        if event is None:
            return None
        # acknowledged: the Zap fetched the plan (polling) or said over its channel that it took it
        took = or_(J.c.acked_at.is_not(None), channel_sites.c.plan_version >= J.c.plan_version)
        counts = {
            str(s): (int(n), int(a or 0))
            for s, n, a in await conn.execute(
                select(J.c.state, func.count(), func.sum(case((took, 1), else_=0)))
                .select_from(J.outerjoin(channel_sites, channel_sites.c.site_id == J.c.site_id))
                .where(J.c.event_id == event_id)
                .group_by(J.c.state)
            )
        }
        solving = (
            await conn.execute(
                select(func.count()).where(J.c.event_id == event_id, J.c.state == "pending", J.c.lease_until >= now)
            )
        ).scalar()
    start, end = _utc(event.start), _utc(event.end)
    n = {s: c for s, (c, _) in counts.items()}
    total = sum(n.values())
    dispatched = n.get("dispatched", 0)
    acked = counts.get("dispatched", (0, 0))[1]
    status = event.status or "dispatched"  # an event from before migration 0007 was dispatched in its request
    if status == "dispatched" and dispatched and acked == dispatched:
        status = "acknowledged"
    out: dict[str, Any] = {
        "event_id": event_id,
        "client_key": event.client_key,
        "status": "planning" if status == "curves" else status,
        "start": format_ts(start),
        "end": format_ts(end),
        "requested_kw": float(event.reduction_kw),
        "created_at": format_ts(_utc(event.created_at)),
        "dispatched_at": None if event.dispatched_at is None else format_ts(_utc(event.dispatched_at)),
        "window": "before" if now < start else ("active" if now < end else "over"),
        "progress": {
            "sites": total,
            "pending": n.get("pending", 0),
            "solving": int(solving or 0),  # pending rows a worker holds the lease of right now
            "planned": n.get("curved", 0) + dispatched + n.get("unchosen", 0),
            "skipped": n.get("skipped", 0),
            "failed": n.get("failed", 0),
            "dispatched": dispatched,
            "acknowledged": acked,
        },
        "allocation": event.result,
    }
    if delivery and now >= start:
        out["delivery"] = await _delivery(db, event_id, start, end, now, offset, min(limit, MAX_DELIVERY_PAGE))
    return out


async def _delivery(
    db: Database, event_id: str, start: datetime, end: datetime, now: datetime, offset: int, limit: int
) -> dict[str, Any]:
    async with db.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(J.c.site_id, J.c.reduction_kw, J.c.prior_version, J.c.base_net_kw, J.c.acked_at)
                .where(J.c.event_id == event_id, J.c.state == "dispatched")
                .order_by(J.c.site_id)
                .offset(offset)
                .limit(limit)
            )
        ).all()
    sites = [
        await site_delivery(
            db, event_id, r.site_id, start, end, now, r.prior_version, r.base_net_kw, float(r.reduction_kw or 0.0)
        )
        for r in rows
    ]
    return {
        "baseline": f"{BASELINE_DAYS}-of-{BASELINE_DAYS} comparable days (see docs/cloud-planning.md)",
        "offset": offset,
        "sites": sites,
    }


def _mean_if_covered(values: np.ndarray[Any, Any]) -> float | None:
    if len(values) == 0:
        return None
    known = ~np.isnan(values)
    if known.sum() < MIN_COVERAGE * len(values):
        return None
    return float(np.mean(values[known]))


async def site_delivery(
    db: Database,
    event_id: str,
    site_id: str,
    start: datetime,
    end: datetime,
    now: datetime,
    prior_version: int | None,
    base_net_kw: float | None,
    promised_kw: float,
) -> dict[str, Any]:
    site = await db.get_site(site_id)
    try:
        assets = decode_assets(site.assets if site else None)
    except AssetsError:
        return {"site_id": site_id, "error": "site assets unreadable"}
    first = floor_slot(start)
    history_start = first - timedelta(days=LOOKBACK_DAYS)
    series = await load_series(
        db, site_id, history_start, end, STEP, has_battery=assets.battery is not None, has_ev=assets.ev is not None
    )
    slots = max(1, int((end - first) // STEP))
    i0 = int((first - history_start) // STEP)
    begun = min(slots, max(0, int((min(now, end) - first) // STEP)))
    measured = _mean_if_covered(series.grid_kw[i0 : i0 + begun])

    plan_kw, source = await _planned(db, site_id, prior_version, first, slots)
    if plan_kw is None and base_net_kw is not None:
        plan_kw, source = float(base_net_kw), "counterfactual"

    zone = assets.zone
    weekend = first.astimezone(zone).weekday() >= 5
    busy = await _other_event_windows(db, site_id, event_id)
    days: list[float] = []
    for d in range(1, LOOKBACK_DAYS + 1):
        s = first - timedelta(days=d)
        if (s.astimezone(zone).weekday() >= 5) != weekend:
            continue
        if any(bs < s + STEP * slots and s < be for bs, be in busy):
            continue
        k = i0 - d * 96
        if k < 0:
            break
        mean = _mean_if_covered(series.grid_kw[k : k + slots])
        if mean is not None:
            days.append(mean)
        if len(days) == BASELINE_DAYS:
            break
    standard = float(np.mean(days)) if len(days) >= BASELINE_MIN_DAYS else None

    def less(baseline: float | None) -> float | None:
        return None if baseline is None or measured is None else round(baseline - measured, 3)

    return {
        "site_id": site_id,
        "promised_reduction_kw": round(promised_kw, 3),
        "measured_import_kw": None if measured is None else round(measured, 3),
        "measured_slots": begun,
        "baseline_plan_kw": None if plan_kw is None else round(plan_kw, 3),
        "baseline_plan_source": source,
        "baseline_10of10_kw": None if standard is None else round(standard, 3),
        "baseline_days": len(days),
        "reduction_vs_plan_kw": less(plan_kw),
        "reduction_vs_10of10_kw": less(standard),
    }


async def _planned(
    db: Database, site_id: str, version: int | None, first: datetime, slots: int
) -> tuple[float | None, str | None]:
    if version is None:
        return None, None
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(
                select(plan_flows.c.start, plan_flows.c.step_s, plan_flows.c.flows).where(
                    plan_flows.c.site_id == site_id, plan_flows.c.version == version
                )
            )
        ).first()
    if row is None or row.step_s != STEP.total_seconds():
        return None, None
    k = int((first - _utc(row.start)) // STEP)
    imp, exp = row.flows.get("import_kw", []), row.flows.get("export_kw", [])
    if k < 0 or k + slots > min(len(imp), len(exp)):
        return None, None
    return float(np.mean(np.asarray(imp[k : k + slots]) - np.asarray(exp[k : k + slots]))), f"plan v{version}"


async def _other_event_windows(db: Database, site_id: str, event_id: str) -> list[tuple[datetime, datetime]]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            select(fleet_event_sites.c.start, fleet_event_sites.c.end).where(
                fleet_event_sites.c.site_id == site_id, fleet_event_sites.c.event_id != event_id
            )
        )
        return [(_utc(s), _utc(e)) for s, e in rows]


__all__ = ["BASELINE_DAYS", "event_status", "site_delivery"]
