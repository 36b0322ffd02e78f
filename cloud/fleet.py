"""Fleet aggregation: what the fleet plans to draw, what its batteries could shift, and demand response.

Flexibility (`flexibility`) is read from the stored plans' flows (no solving): per 15-minute slot, the
fleet's planned import and export, and how much the batteries could move the fleet's grid power in that
slot if asked, staying within their power and energy limits given the SoC the plan expects at the slot's
start ("up" = consume more: charge more or discharge less; "down" = consume less). It is per-slot
flexibility: using it in one slot changes what is left for the next ones.

Demand response (`dispatch_event`): the fleet must lower its net import in a window by `reduction_kw` (the
mean over the window). Each site is re-solved with an incentive λ per kWh of net import avoided inside
the window (added to its import and export prices there) for a ladder of λ; that traces each site's
reduction-versus-extra-cost curve at its real prices, and its lower convex hull gives the marginal cost of
each further kW. Sites are then allocated greedily, cheapest marginal kW first, until the target is met
(a convex-hull greedy is optimal for this separable problem up to the ladder's granularity). The chosen
sites get their λ stored with the event, so every later re-plan keeps it inside the window, and a new plan
is published right away.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import msgspec
import numpy as np
import numpy.typing as npt
import structlog
from nacl.signing import SigningKey

from cloud import store
from cloud.assets import AssetsError, decode_assets
from cloud.forecast import FloatArray
from cloud.optimizer import solve
from cloud.optimizer_io import Solution
from cloud.planner import STEP, PlanError, PlannerOptions, Prepared, floor_slot, prepare, publish, true_cost
from cloud.server.db import Database
from cloud_sync.wire import format_ts

log = structlog.get_logger("zapcloud.fleet")

INCENTIVE_LADDER: Final = (0.03, 0.06, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0, 1.6, 2.5)
MAX_EVENT_HOURS: Final = 12.0


class EventError(ValueError):
    """A demand-response request that cannot be served as asked (422)."""


# A claim on a client key whose worker gave no answer for this long is taken over (the request limit is 30 s).
STALE_CLAIM: Final = timedelta(minutes=2)
_CLIENT_KEY = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class EventRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    start: datetime
    end: datetime
    reduction_kw: float
    # The caller's idempotency key: a retry with the same key gets the first answer, never a second dispatch.
    client_key: str | None = None


class EventInProgressError(Exception):
    """Another request with this client key is being dispatched right now (409, retry later)."""


@dataclass(frozen=True, slots=True)
class EventAnswer:
    result: dict[str, Any]
    replayed: bool  # True: the stored answer of an earlier request with the same client key


async def submit_event(
    db: Database,
    signing_key: SigningKey,
    request: EventRequest,
    now: datetime,
    *,
    options: PlannerOptions | None = None,
) -> EventAnswer:
    """`dispatch_event` at most once per client key (see store.reserve_event); without a key, every time."""
    key = request.client_key
    if key is None:
        return EventAnswer(await dispatch_event(db, signing_key, request, now, options=options), replayed=False)
    if not _CLIENT_KEY.fullmatch(key):
        raise EventError("client_key must be 1..64 characters of A-Z a-z 0-9 . _ : -")
    event_id = uuid.uuid4().hex
    known = await store.reserve_event(
        db, event_id, key, request.start, request.end, request.reduction_kw, now, stale_after=STALE_CLAIM
    )
    if known is not None:
        if (known.start, known.end, known.reduction_kw) != (request.start, request.end, request.reduction_kw):
            raise EventError(f"client_key {key!r} already names event {known.event_id} with other parameters")
        if known.result is None:
            raise EventInProgressError(f"event {known.event_id} with this client_key is being dispatched")
        log.info("fleet_event_replayed", event_id=known.event_id, client_key=key)
        return EventAnswer(known.result, replayed=True)
    try:
        result = await dispatch_event(db, signing_key, request, now, options=options, event_id=event_id)
    except BaseException:
        # Shielded: a cancelled request (the 30 s limit) still frees its key for the retry.
        await asyncio.shield(store.release_event(db, event_id))
        raise
    return EventAnswer(result, replayed=False)


# --- flexibility ----------------------------------------------------------------------------


async def flexibility(db: Database, now: datetime, slots: int = 96) -> dict[str, Any]:
    start = floor_slot(now)
    n = max(1, min(slots, 192))
    imp = np.zeros(n)
    exp = np.zeros(n)
    up = np.zeros(n)
    down = np.zeros(n)
    covered = np.zeros(n, dtype=int)
    sites_used: list[str] = []
    for pf in await store.current_flows(db, now):
        site = await db.get_site(pf.site_id)
        if site is None or pf.step != STEP:
            continue
        try:
            assets = decode_assets(site.assets)
        except AssetsError:
            continue
        sites_used.append(pf.site_id)
        f = pf.flows
        offset = int((start - pf.start) // STEP)
        dt = STEP.total_seconds() / 3600
        for i in range(n):
            k = offset + i
            if k < 0 or k >= len(f.get("import_kw", [])) or pf.start + STEP * k >= pf.valid_until:
                continue
            covered[i] += 1
            imp[i] += f["import_kw"][k]
            exp[i] += f["export_kw"][k]
            b = assets.battery
            if b is None:
                continue
            batt = f["battery_kw"][k]
            soc = f["soc"][k]
            charge_room = min(
                b.max_charge_kw, max(0.0, (b.soc_max - soc) * b.capacity_kwh / (b.charge_efficiency * dt))
            )
            discharge_room = min(
                b.max_discharge_kw, max(0.0, (soc - b.soc_min) * b.capacity_kwh * b.discharge_efficiency / dt)
            )
            up[i] += max(0.0, charge_room - batt)
            down[i] += max(0.0, batt + discharge_room)
    return {
        "start": format_ts(start),
        "step_minutes": 15,
        "sites": len(sites_used),
        "slots": [
            {
                "start": format_ts(start + STEP * i),
                "import_kw": round(float(imp[i]), 3),
                "export_kw": round(float(exp[i]), 3),
                "net_import_kw": round(float(imp[i] - exp[i]), 3),
                "up_kw": round(float(up[i]), 3),
                "down_kw": round(float(down[i]), 3),
                "sites": int(covered[i]),
            }
            for i in range(n)
        ],
    }


# --- demand response ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
    """One point of a site's reduction/cost curve."""

    incentive: float
    reduction_kw: float
    extra_cost: float
    prepared: Prepared
    solution: Solution


@dataclass(frozen=True, slots=True)
class SiteCurve:
    site_id: str
    options: list[Option]  # lower convex hull, reduction increasing, starting after (0, 0)


def _window_mask(prepared: Prepared, start: datetime, end: datetime) -> npt.NDArray[np.bool_]:
    return np.array([start <= s < end for s in prepared.starts], dtype=bool)


def _net(solution: Solution) -> FloatArray:
    return np.asarray(solution.grid_import_kw, dtype=np.float64) - np.asarray(solution.grid_export_kw, dtype=np.float64)


def _with_incentive(prepared: Prepared, mask: npt.NDArray[np.bool_], per_kwh: float) -> Prepared:
    incentive = prepared.incentive + np.where(mask, per_kwh, 0.0)
    p = prepared.problem
    problem = msgspec.structs.replace(
        p,
        import_price=[x + (per_kwh if m else 0.0) for x, m in zip(p.import_price, mask, strict=True)],
        export_price=[x + (per_kwh if m else 0.0) for x, m in zip(p.export_price, mask, strict=True)],
    )
    return dataclasses.replace(prepared, problem=problem, incentive=incentive)


def _site_curve(site_id: str, base: Prepared, start: datetime, end: datetime, window_slots: int) -> SiteCurve:
    """Solve the site at each incentive of the ladder (blocking: run it in a thread)."""
    mask = _window_mask(base, start, end)
    base_solution = solve(base.problem)
    if not base_solution.grid_import_kw:
        return SiteCurve(site_id, [])
    base_cost = true_cost(base, base_solution)
    base_net = _net(base_solution)
    points: list[Option] = []
    for lam in INCENTIVE_LADDER:
        variant = _with_incentive(base, mask, lam)
        sol = solve(variant.problem)
        if not sol.grid_import_kw:
            continue
        # mean over the whole window; slots past this site's horizon contribute nothing
        reduction = float(np.sum((base_net - _net(sol))[mask])) / window_slots
        points.append(Option(lam, reduction, true_cost(variant, sol) - base_cost, variant, sol))
    return SiteCurve(site_id, _lower_hull(points))


def _lower_hull(points: list[Option]) -> list[Option]:
    """Points on the lower convex hull from (0, 0), reduction strictly increasing."""
    hull: list[Option] = []
    last_r, last_c = 0.0, 0.0
    candidates = sorted((p for p in points if p.reduction_kw > 1e-6), key=lambda p: (p.reduction_kw, p.extra_cost))
    while candidates:
        best = min(candidates, key=lambda p: max(p.extra_cost - last_c, 0.0) / (p.reduction_kw - last_r))
        hull.append(best)
        last_r, last_c = best.reduction_kw, best.extra_cost
        candidates = [p for p in candidates if p.reduction_kw > last_r + 1e-6]
    return hull


def allocate(curves: list[SiteCurve], target_kw: float) -> dict[str, Option]:
    """Greedy by marginal cost per kW over the sites' convex curves, until the target is met."""
    level = {c.site_id: -1 for c in curves}
    chosen: dict[str, Option] = {}
    met = 0.0
    by_id = {c.site_id: c for c in curves}
    while met < target_kw - 1e-9:
        best: tuple[float, str] | None = None
        for sid, i in level.items():
            opts = by_id[sid].options
            if i + 1 >= len(opts):
                continue
            prev_r = opts[i].reduction_kw if i >= 0 else 0.0
            prev_c = opts[i].extra_cost if i >= 0 else 0.0
            nxt = opts[i + 1]
            marginal = max(nxt.extra_cost - prev_c, 0.0) / (nxt.reduction_kw - prev_r)
            if best is None or marginal < best[0]:
                best = (marginal, sid)
        if best is None:
            break
        sid = best[1]
        level[sid] += 1
        option = by_id[sid].options[level[sid]]
        met += option.reduction_kw - (chosen[sid].reduction_kw if sid in chosen else 0.0)
        chosen[sid] = option
    return chosen


async def dispatch_event(
    db: Database,
    signing_key: SigningKey,
    request: EventRequest,
    now: datetime,
    *,
    options: PlannerOptions | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    options = options or PlannerOptions()
    start, end = request.start, request.end
    if start.tzinfo is None or end.tzinfo is None:
        raise EventError("start and end need a UTC offset")
    if end <= start or request.reduction_kw <= 0:
        raise EventError("need start < end and reduction_kw > 0")
    if end - start > timedelta(hours=MAX_EVENT_HOURS) or end <= now:
        raise EventError(f"the window must end in the future and last at most {MAX_EVENT_HOURS:g} h")
    window_slots = max(1, int((end - start) // STEP))
    curves: list[SiteCurve] = []
    skipped: list[dict[str, str]] = []
    for site_id in await store.planned_sites(db):
        try:
            base = await prepare(db, site_id, now, options)
        except PlanError as exc:
            skipped.append({"site_id": site_id, "reason": str(exc)})
            continue
        if not _window_mask(base, start, end).any():
            skipped.append({"site_id": site_id, "reason": "window outside the site's planning horizon"})
            continue
        curves.append(await asyncio.to_thread(_site_curve, site_id, base, start, end, window_slots))
    chosen = allocate(curves, request.reduction_kw)
    event_id = event_id or uuid.uuid4().hex
    sites_out: list[dict[str, Any]] = []
    for site_id, option in sorted(chosen.items()):
        version = await publish(db, signing_key, option.prepared, option.solution, options)
        sites_out.append(
            {
                "site_id": site_id,
                "reduction_kw": round(option.reduction_kw, 3),
                "extra_cost": round(option.extra_cost, 4),
                "incentive_per_kwh": option.incentive,
                "plan_version": version,
            }
        )
    met = sum(o.reduction_kw for o in chosen.values())
    result: dict[str, Any] = {
        "event_id": event_id,
        "client_key": request.client_key,
        "start": format_ts(start),
        "end": format_ts(end),
        "requested_kw": request.reduction_kw,
        "met_kw": round(met, 3),
        "fully_met": met >= request.reduction_kw - 1e-6,
        "extra_cost": round(sum(o.extra_cost for o in chosen.values()), 4),
        "sites": sites_out,
        "skipped": skipped,
    }
    await store.save_event(
        db,
        event_id,
        start,
        end,
        request.reduction_kw,
        now,
        result,
        {sid: o.incentive for sid, o in chosen.items()},
    )
    log.info("fleet_event", event_id=event_id, requested_kw=request.reduction_kw, met_kw=round(met, 3))
    return result


def decode_event(body: bytes) -> EventRequest:
    try:
        return msgspec.json.decode(body, type=EventRequest)
    except msgspec.DecodeError as exc:
        raise EventError(f"malformed event: {exc}") from None


__all__ = [
    "INCENTIVE_LADDER",
    "EventAnswer",
    "EventError",
    "EventInProgressError",
    "EventRequest",
    "allocate",
    "decode_event",
    "dispatch_event",
    "flexibility",
    "submit_event",
]
