"""The EV part of the safety envelope: a site EV intent in W → a safe current per charger.

Runs after the batteries' envelope, so the EV chargers get the fuse headroom that is left once
the batteries' new setpoints are counted. IEC 61851 forbids offering a car less than 6 A (it
would stop or fault), so a charger gets either 0 A (pause) or min..max A: when the budget
cannot give every connected charger its minimum, chargers are dropped (smallest first) rather
than all of them starved. Only connected chargers get current; one whose state is unknown is
paused. When the meter is unknown nothing can be checked against the fuse: every charger pauses.
Numbers that are not numbers are unknown (zapd/envelope.py `trusted_inputs`): a NaN or infinite
EV request is a hold (minimum current), a charger whose limits are not numbers pauses, and a
meter, phase current or battery setpoint that is not a number pauses every charger.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from drivers.config_structs import EvLimits
from zapd.bounds import MAX_CURRENT_A, known
from zapd.envelope import SiteLimits, trusted_inputs
from zapd.model import Intent, IntentMode
from zapd.state import Snapshot

_STEP_A = 0.1  # chargers take tenths of an amp at best; rounding down keeps the sum under the budget


@dataclass(frozen=True, slots=True)
class EvSetpoint:
    der_id: str
    current_a: float  # per phase; 0 = pause
    phases: int
    power_w: float
    clamped_reason: str  # "" when the request passed unchanged


@dataclass(frozen=True, slots=True)
class _Budget:
    power_w: float  # total EV power the fuse allows (site total)
    phase_a: float  # per-phase current the worst phase allows, summed over chargers (conservative)


def _ev_budget(
    snapshot: Snapshot, chargers: Mapping[str, EvLimits], site: SiteLimits, battery_now_w: float, battery_new_w: float
) -> _Budget | None:
    """Headroom the chargers may use once the batteries' new setpoints are in; None if the meter is unknown."""
    if snapshot.grid_w is None:
        return None
    ev_now = {der_id: _ev_now_w(snapshot, der_id) for der_id in chargers}
    base_w = snapshot.grid_w - battery_now_w - sum(ev_now.values())  # the site with batteries and EVs idle
    power_w = site.fuse_limit_w - base_w - battery_new_w
    phase_a = math.inf
    if snapshot.phase_currents_a:
        # Three-phase chargers load every phase evenly, so their current can come off the worst phase.
        # A one-phase charger may sit on any phase: its current stays counted (double at worst = safe).
        three_phase_now_a = sum(ev_now[k] / c.w_per_a for k, c in chargers.items() if c.phases == 3)
        battery_a = battery_now_w / (site.voltage_v * site.phases)
        worst_base_a = max(snapshot.phase_currents_a) - battery_a - three_phase_now_a
        phase_a = site.fuse_a - worst_base_a - battery_new_w / (site.voltage_v * site.phases)
    return _Budget(max(0.0, power_w), max(0.0, phase_a))


def _limits_known(c: EvLimits) -> bool:
    return (
        known(c.max_current_a, 0.0, MAX_CURRENT_A) is not None
        and known(c.min_current_a, 0.0, MAX_CURRENT_A) is not None
        and known(c.voltage_v, 1.0, 1e5) is not None
        and c.phases in (1, 2, 3)
    )


def _ev_now_w(snapshot: Snapshot, der_id: str) -> float:
    view = snapshot.evs.get(der_id)
    return max(0.0, view.power_w) if view is not None and view.power_w is not None else 0.0


def _floor(a: float) -> float:
    return math.floor(a / _STEP_A + 1e-9) * _STEP_A


def _fit(wanted: Mapping[str, float], chargers: Mapping[str, EvLimits], budget: _Budget) -> dict[str, float]:
    """Scale the wanted currents into the budget; drop chargers that would fall under their minimum."""
    active = {k: v for k, v in wanted.items() if v > 0}
    while active:
        power = sum(a * chargers[k].w_per_a for k, a in active.items())
        amps = sum(active.values())
        scale = min(1.0, budget.power_w / power if power > 0 else 1.0, budget.phase_a / amps if amps > 0 else 1.0)
        scaled = {k: _floor(a * scale) for k, a in active.items()}
        short = [k for k, a in scaled.items() if a < chargers[k].min_current_a]
        if not short:
            return {k: scaled.get(k, 0.0) for k in wanted}
        # The smallest charger gives way, so the others keep charging at a useful current.
        drop = min(short, key=lambda k: (chargers[k].max_current_a * chargers[k].w_per_a, k))
        del active[drop]
    return dict.fromkeys(wanted, 0.0)


def clamp_evs(
    intent: Intent,
    snapshot: Snapshot,
    chargers: Mapping[str, EvLimits],
    site: SiteLimits,
    battery_new_w: float,
) -> list[EvSetpoint]:
    """Turn the intent's EV request into per-charger currents that are safe to send.

    `battery_new_w` is the total of the batteries' clamped setpoints for this cycle. An intent
    with no EV opinion (ev_w None) lets connected cars charge as fast as the fuse allows.
    """
    snapshot, site = trusted_inputs(snapshot, site)
    reasons: dict[str, str] = {}
    connected: dict[str, EvLimits] = {}
    for der_id, c in chargers.items():
        view = snapshot.evs.get(der_id)
        if not _limits_known(c):
            reasons[der_id] = "charger limits not numbers: pause"
        elif c.min_current_a > c.max_current_a:
            # No current is both at least the minimum and at most the maximum: any command would break one
            # (a hold would send the minimum, over the maximum), so the charger pauses.
            reasons[der_id] = "charger minimum above its maximum: pause"
        elif view is None or view.connected is None:
            reasons[der_id] = "charger state unknown: pause"
        elif not view.connected:
            reasons[der_id] = "no car connected"
        else:
            connected[der_id] = c

    battery_now_w = snapshot.battery_total_w() or 0.0
    known_chargers = {k: c for k, c in chargers.items() if _limits_known(c)}
    budget = None
    if math.isfinite(battery_new_w):
        budget = _ev_budget(snapshot, known_chargers, site, battery_now_w, max(0.0, battery_new_w))
    wanted: dict[str, float] = {}
    asked = False  # the intent asks a number of W for the chargers (not a hold, not "as fast as the fuse allows")
    hold = intent.mode is IntentMode.HOLD
    if not hold and intent.ev_w is not None and not math.isfinite(intent.ev_w):
        hold = True  # a request that is not a number asks for nothing more than the safe hold
        for der_id in connected:
            reasons[der_id] = "request not a number: hold"
    if hold:
        wanted = {k: c.min_current_a for k, c in connected.items()}
        request_w = sum(c.min_current_a * c.w_per_a for c in connected.values())
    elif intent.ev_w is None:
        # No opinion (also what SELF_CONSUMPTION carries): as fast as the fuse allows.
        wanted = {k: c.max_current_a for k, c in connected.items()}
        request_w = math.inf
    else:
        asked = True
        request_w = max(0.0, intent.ev_w)
        room_w = sum(c.max_current_a * c.w_per_a for c in connected.values())
        share = min(1.0, request_w / room_w) if room_w > 0 else 0.0
        # Split by each charger's headroom (its max power), like the batteries' split.
        wanted = {k: c.max_current_a * share for k, c in connected.items()}
        # A share under the minimum for everyone: give the request to as few chargers as it can feed.
        wanted = _concentrate(wanted, chargers, request_w)

    if budget is None:
        for der_id in connected:
            reasons[der_id] = (
                "meter unknown: pause" if math.isfinite(battery_new_w) else "battery setpoint unknown: pause"
            )
        got = dict.fromkeys(wanted, 0.0)
    else:
        got = _fit(wanted, chargers, budget)

    out = []
    for der_id, c in chargers.items():
        a = got.get(der_id, 0.0)
        why = reasons.get(der_id, "")
        if not why and wanted.get(der_id) == 0.0 and asked:
            # The plan asked for less than this charger's minimum (6 A; IEC 61851 offers nothing less),
            # or for nothing at all (0 W or less): a pause the plan chose, said so a technician can tell.
            why = "request below minimum current: pause" if request_w > 0 else "no EV power requested: pause"
        elif not why and a < wanted.get(der_id, 0.0) - 1e-6:
            why = "fuse limit"
        out.append(EvSetpoint(der_id, a, c.phases, a * c.w_per_a if a > 0 else 0.0, why))
    return out


def _concentrate(wanted: dict[str, float], chargers: Mapping[str, EvLimits], request_w: float) -> dict[str, float]:
    """When the even share leaves someone under 6 A: minimums first to as many cars as the request
    feeds (the largest chargers first), then the rest shared by each one's room above its minimum."""
    if all(a >= chargers[k].min_current_a for k, a in wanted.items()):
        return wanted
    chosen: list[str] = []
    left = request_w
    for k in sorted(wanted, key=lambda k: (-chargers[k].max_current_a * chargers[k].w_per_a, k)):
        c = chargers[k]
        if left >= c.min_current_a * c.w_per_a:
            chosen.append(k)
            left -= c.min_current_a * c.w_per_a
    room = {k: (chargers[k].max_current_a - chargers[k].min_current_a) * chargers[k].w_per_a for k in chosen}
    share = min(1.0, left / sum(room.values())) if sum(room.values()) > 0 else 0.0
    out = dict.fromkeys(wanted, 0.0)
    for k in chosen:
        c = chargers[k]
        out[k] = c.min_current_a + share * room[k] / c.w_per_a
    return out
