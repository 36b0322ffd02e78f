"""Fleet aggregation: what the fleet plans to draw, what its batteries could shift, and demand response.

Flexibility (`flexibility`) is read from the stored plans' flows (no solving): per 15-minute slot, the
fleet's planned import and export, and how much the batteries could move the fleet's grid power in that
slot if asked, staying within their power and energy limits given the SoC the plan expects at the slot's
start ("up" = consume more: charge more or discharge less; "down" = consume less). It is per-slot
flexibility: using it in one slot changes what is left for the next ones.

Demand response (the curves and the allocation here; cloud/fleet_work.py runs them as claimed work): the
fleet must lower its net import in a window by `reduction_kw` (the mean over the window). Each site is
re-solved with an incentive λ per kWh of net import avoided inside the window (added to its import and
export prices there) for a ladder of λ; that traces each site's reduction-versus-extra-cost curve at its
real prices, and its lower convex hull gives the marginal cost of each further kW. Sites are then
allocated greedily, cheapest marginal kW first, until the target is met (a convex-hull greedy is optimal
for this separable problem up to the ladder's granularity). The chosen sites get their λ stored with the
event, so every later re-plan keeps it inside the window, and the plan solved at that λ is published in
the same transaction.

The curve's points do not depend on which optimal vertex the solver lands on (the LPs are degenerate: a
warm start and a cold solve may hand different, equally cheap schedules). With exact optima the reduction
never falls as λ rises, and two rungs with the same reduction have the same cost (each plan is optimal at
the other's λ too), so the rule is: walking up the ladder, a rung that does not reduce more than the last
kept one by SAME_KW (1 mW) is that point again, and the smallest λ reaching a reduction is kept. That makes
the warm start exact, and lets the ladder stop at the first rung that reaches `reduction_ceiling` (every
higher rung would be that point again). Ties in the hull and the allocation go the same stated way: the
nearer point on a slope tie, the smaller site id on equal marginal costs.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import msgspec
import numpy as np
import numpy.typing as npt
import structlog

from cloud.assets import AssetsError, decode_assets
from cloud.db import Database
from cloud.db import planning as store
from cloud.forecast import FloatArray
from cloud.optimizer import WarmStart, solve
from cloud.optimizer_io import Solution
from cloud.optimizer_model import site_data
from cloud.planner import STEP, PlanError, PlannerOptions, Prepared, floor_slot, plan_flows, to_plan, true_cost
from cloud_sync.wire import format_ts

log = structlog.get_logger("zapcloud.fleet")

INCENTIVE_LADDER: Final = (0.03, 0.06, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0, 1.6, 2.5)
MAX_EVENT_HOURS: Final = 12.0


class EventError(ValueError):
    """A demand-response request that cannot be served as asked (422)."""


_CLIENT_KEY = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class EventRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    start: datetime
    end: datetime
    reduction_kw: float
    # The caller's idempotency key: a retry with the same key gets the first event, never a second dispatch.
    client_key: str | None = None


def check_event(request: EventRequest, now: datetime) -> None:
    """What makes an event servable at all (bounds.check_event checks the numbers' ranges)."""
    start, end = request.start, request.end
    if start.tzinfo is None or end.tzinfo is None:
        raise EventError("start and end need a UTC offset")
    if end <= start or request.reduction_kw <= 0:
        raise EventError("need start < end and reduction_kw > 0")
    if end - start > timedelta(hours=MAX_EVENT_HOURS) or end <= now:
        raise EventError(f"the window must end in the future and last at most {MAX_EVENT_HOURS:g} h")
    if request.client_key is not None and not _CLIENT_KEY.fullmatch(request.client_key):
        raise EventError("client_key must be 1..64 characters of A-Z a-z 0-9 . _ : -")


def window_slots(start: datetime, end: datetime) -> int:
    return max(1, int((end - start) // STEP))


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
    """One point of a site's reduction/cost curve; `index` names its candidate plan (SolvedCurve)."""

    incentive: float
    reduction_kw: float
    extra_cost: float
    index: int = -1


@dataclass(frozen=True, slots=True)
class SiteCurve:
    site_id: str
    options: list[Option]  # lower convex hull, reduction increasing, starting after (0, 0)


@dataclass(frozen=True, slots=True)
class SolvedCurve:
    """A site's curve with, per hull point, the plan (unsigned, version 0) and flows to publish if chosen."""

    curve: SiteCurve
    base_net_kw: float  # the plan without the event: mean net import over the window
    candidates: list[dict[str, Any]]


def _window_mask(prepared: Prepared, start: datetime, end: datetime) -> npt.NDArray[np.bool_]:
    return np.array([start <= s < end for s in prepared.starts], dtype=bool)


def in_horizon(prepared: Prepared, start: datetime, end: datetime) -> bool:
    return bool(_window_mask(prepared, start, end).any())


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


# Two ladder points whose reductions differ by at most this (kW, mean over the window) are the same point:
# the LP solver's tolerance is ~1e-7 kW per slot, so equal reductions of two rungs differ by noise only.
SAME_KW: Final = 1e-6
SLOPE_TIE: Final = 1e-9  # relative, EUR per kW


def reduction_ceiling(base: Prepared, base_net: FloatArray, mask: npt.NDArray[np.bool_], n_window: int) -> float:
    """An upper bound on the reduction (kW, mean over the window) any plan of the site can give.

    Per window slot the net import is at least the export limit's floor, and at least load - PV minus what
    the battery gives (at most its discharge power); what the battery gives over the window is at most its
    usable energy (the widest stored-energy band over the horizon) plus the PV surplus the export limit
    would curtail, charged and discharged again. EV charging and charging from the grid only raise the net
    import. A rung that reaches this bound cannot be beaten by a higher one (module doc), so the ladder
    stops there.
    """
    p = base.problem
    d = site_data(p)
    dt = p.dt_hours
    a = (d.load - d.pv)[mask]
    floor = np.maximum(-d.max_export, a)  # the net import without any battery
    room = np.minimum(d.max_discharge, floor + d.max_export)  # how far the battery can push each slot down
    surplus = float(np.sum(np.maximum(0.0, -d.max_export - a)))
    usable = d.eff_discharge * (
        max(0.0, float(np.max(d.energy_ub)) - float(np.min(d.energy_lb))) + d.eff_charge * dt * surplus
    )
    lowest = float(np.sum(floor)) - min(float(np.sum(room)), usable / dt)
    return (float(np.sum(base_net[mask])) - lowest) / n_window


def solve_curve(
    base: Prepared, start: datetime, end: datetime, options: PlannerOptions, *, exhaustive: bool = False
) -> SolvedCurve:
    """Solve the site at each incentive of the ladder (blocking: run it in a thread).

    The rungs' LPs differ from the base problem only in their costs, so they are solved warm (one HiGHS
    instance, `WarmStart`, from the last rung's basis), and the ladder stops at the first rung that reaches
    `reduction_ceiling`. Both are exact because of the tie-break that makes the points independent of which
    optimal vertex the solver lands on: walking up the ladder, a rung whose reduction does not exceed the
    last kept one's by more than SAME_KW is the same point, and the smallest incentive reaching a reduction
    is kept (with exact optima the reduction never falls as λ rises, and an equal reduction at a higher λ
    has an equal cost, so nothing is lost). `exhaustive=True` solves every rung cold: the reference the
    tests compare against.

    The hull points keep their plan, built now from this solve, so publishing a chosen site needs no
    second solve: the dispatch is a database transaction (cloud/fleet_work.py).
    """
    n_window = window_slots(start, end)
    mask = _window_mask(base, start, end)
    warm = None if exhaustive else WarmStart()
    base_solution = solve(base.problem, time_limit_s=options.solve_time_limit_s, warm=warm)
    if not base_solution.grid_import_kw:
        raise PlanError(f"optimizer {base_solution.status}: {base_solution.message}")
    base_cost = true_cost(base, base_solution)
    base_net = _net(base_solution)
    ceiling = math.inf if exhaustive else reduction_ceiling(base, base_net, mask, n_window)
    points: list[tuple[Option, Prepared, Solution]] = []
    kept = 0.0  # the reduction of the last point kept: a point must reduce by more than noise
    for lam in INCENTIVE_LADDER:
        if kept >= ceiling - SAME_KW:
            break  # no rung can reduce more (none at all when the plan without the event is already there)
        variant = _with_incentive(base, mask, lam)
        sol = solve(variant.problem, time_limit_s=options.solve_time_limit_s, warm=warm)
        if not sol.grid_import_kw:
            continue
        # mean over the whole window; slots past this site's horizon contribute nothing
        reduction = float(np.sum((base_net - _net(sol))[mask])) / n_window
        if reduction <= kept + SAME_KW:
            continue  # the same point as a smaller incentive's (or none): the smaller incentive stays
        kept = reduction
        points.append((Option(lam, reduction, true_cost(variant, sol) - base_cost, len(points)), variant, sol))
    hull = _lower_hull([o for o, _, _ in points])
    candidates: list[dict[str, Any]] = []
    out: list[Option] = []
    for i, option in enumerate(hull):
        _, variant, sol = points[option.index]
        plan = to_plan(variant, sol, 0, options)
        # flows rounded as stored here, in parallel work, not in the one publishing transaction
        candidates.append({"plan": msgspec.to_builtins(plan), "flows": store.stored_flows(plan_flows(variant, sol))})
        out.append(dataclasses.replace(option, index=i))
    return SolvedCurve(SiteCurve(base.site_id, out), float(np.sum(base_net[mask])) / n_window, candidates)


def _lower_hull(points: list[Option]) -> list[Option]:
    """Points on the lower convex hull from (0, 0), reduction strictly increasing.

    Slopes equal to within SLOPE_TIE (collinear points: a rung at a breakpoint of the site's curve) count as
    equal, and the nearer point is taken, so solver noise in the last digits cannot pick another point.
    """
    hull: list[Option] = []
    last_r, last_c = 0.0, 0.0
    candidates = sorted((p for p in points if p.reduction_kw > SAME_KW), key=lambda p: (p.reduction_kw, p.extra_cost))
    while candidates:
        slopes = [max(p.extra_cost - last_c, 0.0) / (p.reduction_kw - last_r) for p in candidates]
        least = min(slopes)
        best = next(p for p, s in zip(candidates, slopes, strict=True) if s <= least + SLOPE_TIE * max(1.0, least))
        hull.append(best)
        last_r, last_c = best.reduction_kw, best.extra_cost
        candidates = [p for p in candidates if p.reduction_kw > last_r + SAME_KW]
    return hull


def _marginal_key(per_kw: float) -> float:
    """A marginal cost to 9 significant digits: two equal sites' curves differ by float noise (~1e-15)."""
    return float(f"{per_kw:.9g}")


def allocate(curves: list[SiteCurve], target_kw: float) -> dict[str, Option]:
    """Greedy by marginal cost per kW over the sites' convex curves, until the target is met.

    Each site's next step waits in a heap keyed by its marginal cost (to 9 significant digits) and then the
    site id, so equal sites are taken in id order, whatever order the curves come in or noise they carry;
    O(steps log sites), where scanning every site per step took 1.2 s for 1,000 sites in the publish.
    """
    by_id = {c.site_id: c for c in curves}
    heap: list[tuple[float, str, int]] = []

    def push(sid: str, level: int) -> None:  # the step after `level` (-1: nothing taken yet)
        opts = by_id[sid].options
        if level + 1 >= len(opts):
            return
        prev_r = opts[level].reduction_kw if level >= 0 else 0.0
        prev_c = opts[level].extra_cost if level >= 0 else 0.0
        nxt = opts[level + 1]
        marginal = max(nxt.extra_cost - prev_c, 0.0) / (nxt.reduction_kw - prev_r)
        heapq.heappush(heap, (_marginal_key(marginal), sid, level + 1))

    for sid in by_id:
        push(sid, -1)
    chosen: dict[str, Option] = {}
    met = 0.0
    while met < target_kw - 1e-9 and heap:
        _, sid, level = heapq.heappop(heap)
        option = by_id[sid].options[level]
        met += option.reduction_kw - (chosen[sid].reduction_kw if sid in chosen else 0.0)
        chosen[sid] = option
        push(sid, level)
    return chosen


def decode_event(body: bytes) -> EventRequest:
    try:
        return msgspec.json.decode(body, type=EventRequest)
    except msgspec.DecodeError as exc:
        raise EventError(f"malformed event: {exc}") from None


__all__ = [
    "INCENTIVE_LADDER",
    "SAME_KW",
    "SLOPE_TIE",
    "EventError",
    "EventRequest",
    "Option",
    "SiteCurve",
    "SolvedCurve",
    "allocate",
    "check_event",
    "decode_event",
    "flexibility",
    "in_horizon",
    "reduction_ceiling",
    "solve_curve",
    "window_slots",
]
