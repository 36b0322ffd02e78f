"""The safety envelope: the last word before any command leaves the daemon.

Whatever the plan or the rules asked for, the setpoints that come out of `clamp_batteries`
respect, in this order: an unknown battery holds (0 W); device power limits; the reserve
and maximum SoC (including the energy one tick can move); the site's fuse limit computed
from the live meter reading. A request the envelope cannot honour is cut down and the
reason is recorded, so the command log and the cloud see what was changed and why.

Any input that is not a finite, plausible number (zapd/bounds.py) is unknown, and unknown is
safe: a NaN or infinite request holds (0 W), a battery whose SoC, power or limits are not numbers
holds, a meter reading (or phase current, or site limit) that is not a number is an unknown
meter (no charging), an export limit that is not a number is the strictest one (0 W).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from drivers.config_structs import BatteryLimits
from zapd.bounds import MAX_CURRENT_A, MAX_POWER_W, known
from zapd.state import BatteryView, Snapshot


@dataclass(frozen=True, slots=True)
class SiteLimits:
    fuse_limit_w: float  # already multiplied by the safety margin
    fuse_a: float  # per phase, already multiplied by the margin
    voltage_v: float
    phases: int
    max_export_w: float | None


@dataclass(frozen=True, slots=True)
class Setpoint:
    der_id: str
    power_w: float
    clamped_reason: str  # "" when the request passed unchanged


def trusted_inputs(snapshot: Snapshot, site: SiteLimits) -> tuple[Snapshot, SiteLimits]:
    """The snapshot and limits with every value that is not a plausible number made unknown.

    The meter is unknown as a whole when its power, any phase current or a site limit it is
    checked against is not a number: half a meter cannot be checked against the fuse.
    """
    grid_w = known(snapshot.grid_w)
    phases = snapshot.phase_currents_a
    if phases is not None and any(known(a, -MAX_CURRENT_A, MAX_CURRENT_A) is None for a in phases):
        grid_w = None
    # Limits come from the config: any finite value is taken as meant (a test may lift them to 1e9).
    site_ok = (
        math.isfinite(site.fuse_limit_w)
        and math.isfinite(site.fuse_a)
        and site.fuse_a >= 0
        and math.isfinite(site.voltage_v)
        and site.voltage_v >= 1.0
        and site.phases in (1, 2, 3)
    )
    if grid_w is None or not site_ok:
        grid_w, phases = None, None
    export_w = site.max_export_w
    # Below zero is a floor on the import (the controller's margin on a zero-export site, `_inside`).
    if export_w is not None and not math.isfinite(export_w):
        export_w = 0.0  # a limit that is not a number is the strictest one
    batteries = {
        k: BatteryView(b.der_id, known(b.soc, 0.0, 1.0), known(b.power_w)) for k, b in snapshot.batteries.items()
    }
    evs = {k: replace(v, power_w=known(v.power_w)) for k, v in snapshot.evs.items()}
    clean = replace(snapshot, grid_w=grid_w, phase_currents_a=phases, batteries=batteries, evs=evs)
    return clean, replace(site, max_export_w=export_w) if export_w != site.max_export_w else site


def _unset_is_zero(x: float | None) -> float:
    """A power or capacity nobody set (neither config nor nameplate): the battery cannot move."""
    return 0.0 if x is None else x


def _limits_known(b: BatteryLimits) -> bool:
    return (
        known(_unset_is_zero(b.capacity_wh), 0.0, math.inf) is not None
        and known(_unset_is_zero(b.max_charge_w), 0.0, MAX_POWER_W) is not None
        and known(_unset_is_zero(b.max_discharge_w), 0.0, MAX_POWER_W) is not None
        and known(b.reserve_soc, 0.0, 1.0) is not None
        and known(b.max_soc, 0.0, 1.0) is not None
    )


def _fuse_headroom_w(snapshot: Snapshot, site: SiteLimits, battery_now_w: float) -> float | None:
    """Extra import the batteries may add on top of the site *without* them; None if the meter is unknown."""
    if snapshot.grid_w is None:
        return None
    base_w = snapshot.grid_w - battery_now_w  # the site as if the batteries were idle
    headroom = site.fuse_limit_w - base_w
    if snapshot.phase_currents_a:
        # Batteries are assumed to spread evenly over the site's phases; the worst phase decides.
        battery_per_phase_a = battery_now_w / (site.voltage_v * site.phases)
        worst_base_a = max(snapshot.phase_currents_a) - battery_per_phase_a
        headroom = min(headroom, (site.fuse_a - worst_base_a) * site.voltage_v * site.phases)
    return headroom


def _export_floor_w(snapshot: Snapshot, site: SiteLimits, battery_now_w: float) -> float | None:
    """Lowest battery total that keeps export within the limit; None if no limit or meter unknown."""
    if site.max_export_w is None or snapshot.grid_w is None:
        return None
    base_w = snapshot.grid_w - battery_now_w
    return -site.max_export_w - base_w


def _split(total_w: float, rooms: Mapping[str, float]) -> dict[str, float]:
    """Share a total across batteries in proportion to each one's room in that direction."""
    room_sum = sum(rooms.values())
    if room_sum <= 0:
        return dict.fromkeys(rooms, 0.0)
    share = min(1.0, abs(total_w) / room_sum)
    sign = 1.0 if total_w >= 0 else -1.0
    return {k: sign * share * v for k, v in rooms.items()}


def grid_band_w(snapshot: Snapshot, site: SiteLimits) -> float:
    """The band between the export floor and the fuse headroom (W), the lowest and the highest battery total the
    grid limits allow: the same at every battery state, as both are computed from the same base (grid - battery).
    Infinite without an export limit; 0 with the meter unknown (nothing is known to be allowed)."""
    snapshot, site = trusted_inputs(snapshot, site)
    headroom = _fuse_headroom_w(snapshot, site, 0.0)
    if headroom is None:
        return 0.0
    floor = _export_floor_w(snapshot, site, 0.0)
    return math.inf if floor is None else headroom - floor


def clamp_batteries(
    requested_total_w: float,
    snapshot: Snapshot,
    batteries: Mapping[str, BatteryLimits],
    site: SiteLimits,
    tick_s: float,
) -> list[Setpoint]:
    """Turn a site-level battery request into per-battery setpoints that are safe to send.

    `batteries`: per battery DER id, the limits it is held to (config within nameplate)."""
    snapshot, site = trusted_inputs(snapshot, site)
    # A tick that is not a number: as if it were endless, so no battery may move off its SoC bounds.
    hours = max(tick_s, 1.0) / 3600 if math.isfinite(tick_s) else math.inf
    charge_room: dict[str, float] = {}
    discharge_room: dict[str, float] = {}
    reasons: dict[str, list[str]] = {der_id: [] for der_id in batteries}
    battery_now_w = 0.0
    for der_id, b in batteries.items():
        view = snapshot.batteries.get(der_id)
        if view is None or view.soc is None or view.power_w is None:
            charge_room[der_id] = discharge_room[der_id] = 0.0
            reasons[der_id].append("battery state unknown: hold")
            continue
        if not _limits_known(b):
            charge_room[der_id] = discharge_room[der_id] = 0.0
            reasons[der_id].append("battery limits not numbers: hold")
            continue
        battery_now_w += view.power_w
        soc = view.soc
        capacity_wh = _unset_is_zero(b.capacity_wh)
        # Energy that may still move before the next decision without crossing the SoC bounds.
        up_w = max(0.0, (b.max_soc - soc) * capacity_wh / hours)
        down_w = max(0.0, (soc - b.reserve_soc) * capacity_wh / hours)
        charge_room[der_id] = min(_unset_is_zero(b.max_charge_w), up_w)
        discharge_room[der_id] = min(_unset_is_zero(b.max_discharge_w), down_w)

    total = requested_total_w
    if not math.isfinite(total):
        total = 0.0  # a request that is not a number asks for nothing: hold
        for why in reasons.values():
            why.append("request not a number: hold")
    max_total = sum(charge_room.values())
    min_total = -sum(discharge_room.values())
    site_reason = ""
    if total > max_total:
        total, site_reason = max_total, "device limit or max SoC"
    elif total < min_total:
        total, site_reason = min_total, "device limit or reserve SoC"

    floor = _export_floor_w(snapshot, site, battery_now_w)
    if floor is not None and total < floor:
        total, site_reason = min(floor, max_total), "export limit"
    headroom = _fuse_headroom_w(snapshot, site, battery_now_w)
    if headroom is None:
        if total > 0:
            total, site_reason = 0.0, "meter unknown: no charging"
    elif total > headroom:
        # A negative headroom means the site alone is over the fuse: discharge to help, within the reserve.
        total, site_reason = max(min_total, headroom), "fuse limit"

    per = _split(total, charge_room if total >= 0 else discharge_room)
    out = []
    for der_id in batteries:
        why = list(reasons[der_id])
        if site_reason and not abs(total - requested_total_w) <= 1e-6:
            why.append(site_reason)
        out.append(Setpoint(der_id, per[der_id], "; ".join(why)))
    return out
