"""Latest reading per DER, and the snapshot the controller acts on.

Stale is unknown (evcc dsmr meter, Home Assistant dsmr): a reading older than three poll
periods of its device is absent from the snapshot, so no decision is taken on an old value.
A bad reading (a value the drivers' guard refused: NaN, ±Inf, out of zapd/bounds.py) is unknown too,
and it replaces the previous good one: the DER is unknown from that moment, not three polls later.

One grid meter: grid power and phase currents come from the site's grid meter alone. Other
meters (PV, EV or sub-circuit meters) are stored and shown but never added in: a sum would
double what the fuse and export checks act on, and a fresh sub-meter would hide a dead grid
meter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from zapd.bounds import bad_values
from zapd.model import (
    CHARGING,
    CONNECTED,
    EXPORT_WH,
    IMPORT_WH,
    PHASE_CURRENT_A,
    POWER_W,
    SOC,
    DerKind,
    Quality,
    Reading,
)

STALE_AFTER_POLLS = 3


def _trusted_values(reading: Reading | None) -> dict[str, float]:
    """The values the controller may act on: none of a BAD reading (the DER is unknown, as if stale),
    and only the plausible ones of any other (a driver that skipped the guard still cannot pass NaN)."""
    if reading is None or reading.quality is Quality.BAD:
        return {}
    bad = bad_values(reading.values)
    if bad:
        return {}
    return reading.values


@dataclass(frozen=True, slots=True)
class BatteryView:
    der_id: str
    soc: float | None
    power_w: float | None


@dataclass(frozen=True, slots=True)
class EvView:
    """An EV charger as the EV envelope needs it: is a car there, and what does it draw."""

    der_id: str
    power_w: float | None
    connected: bool | None
    charging: bool | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What is known *now*. None = unknown (missing or stale)."""

    ts: datetime
    grid_w: float | None
    phase_currents_a: tuple[float, ...] | None
    pv_w: float | None
    batteries: dict[str, BatteryView] = field(default_factory=dict)
    ev_w: dict[str, float | None] = field(default_factory=dict)
    evs: dict[str, EvView] = field(default_factory=dict)
    grid_import_wh: float | None = None  # the grid meter's registers (other meters measure inside the site)
    grid_export_wh: float | None = None

    def battery_soc(self, capacities_wh: Mapping[str, float]) -> float | None:
        """The site's SoC (0..1), weighted by capacity when every battery reports one; None if any SoC
        is unknown."""
        socs = [b.soc for b in self.batteries.values()]
        if not socs or any(s is None for s in socs):
            return None
        weights = [capacities_wh.get(b, 0.0) for b in self.batteries]
        if not all(w > 0 for w in weights):
            weights = [1.0] * len(socs)
        return sum(w * (s or 0.0) for w, s in zip(weights, socs, strict=True)) / sum(weights)

    def ev_total_w(self) -> float | None:
        """Sum of the chargers' power, None if any is unknown (or there is none)."""
        if not self.ev_w or any(v is None for v in self.ev_w.values()):
            return None
        return sum(v or 0.0 for v in self.ev_w.values())

    def battery_total_w(self) -> float | None:
        """Sum of the batteries' actual power, None if any is unknown."""
        total = 0.0
        for b in self.batteries.values():
            if b.power_w is None:
                return None
            total += b.power_w
        return total


class SiteState:
    """Holds the newest reading of each DER; the daemon's one place for "what is the site doing"."""

    def __init__(self, grid_meter: str | None = None) -> None:
        """`grid_meter`: the DER id the config names (role `grid`). Not given: the one meter DER there
        is; with several and none named the grid is unknown (safe hold), never their sum."""
        self._latest: dict[str, Reading] = {}
        self._poll_s: dict[str, float] = {}
        self._kinds: dict[str, DerKind] = {}
        self._grid_meter = grid_meter

    @property
    def grid_meter(self) -> str | None:
        if self._grid_meter is not None:
            return self._grid_meter
        meters = [der_id for der_id, kind in self._kinds.items() if kind is DerKind.METER]
        return meters[0] if len(meters) == 1 else None

    def register(self, der_id: str, kind: DerKind, poll_s: float) -> None:
        """Declare a DER so it shows up (as unknown) before its first reading."""
        self._poll_s[der_id] = poll_s
        self._kinds[der_id] = kind

    def update(self, reading: Reading, now: datetime | None = None) -> None:
        """`now` (the daemon clock's) tells a late message from a clock stepped back.

        A previous reading stamped further in the future than the staleness window means the clock
        went back: it is no longer the newer one, and refusing what comes now would hold the site
        for as long as the step.
        """
        prev = self._latest.get(reading.der_id)
        if prev is not None and reading.ts < prev.ts:
            clock_went_back = now is not None and (prev.ts - now).total_seconds() > self._limit(reading.der_id)
            if not clock_went_back:
                return  # out of order: keep the newer one
        self._latest[reading.der_id] = reading
        self._kinds.setdefault(reading.der_id, reading.kind)

    def latest(self) -> dict[str, Reading]:
        return dict(self._latest)

    def age_s(self, der_id: str, now: datetime) -> float | None:
        r = self._latest.get(der_id)
        return None if r is None else (now - r.ts).total_seconds()

    def _limit(self, der_id: str) -> float:
        return STALE_AFTER_POLLS * self._poll_s.get(der_id, 10.0)

    def is_fresh(self, der_id: str, now: datetime) -> bool:
        r = self._latest.get(der_id)
        if r is None:
            return False
        limit = self._limit(der_id)
        age = (now - r.ts).total_seconds()
        return -limit <= age <= limit

    def fresh(self, der_id: str, now: datetime) -> Reading | None:
        return self._latest.get(der_id) if self.is_fresh(der_id, now) else None

    def snapshot(self, now: datetime) -> Snapshot:
        grid_w: float | None = None
        phases: tuple[float, ...] | None = None
        pv_w: float | None = None
        batteries: dict[str, BatteryView] = {}
        evs: dict[str, float | None] = {}
        ev_views: dict[str, EvView] = {}
        import_wh: float | None = None
        export_wh: float | None = None
        grid_meter = self.grid_meter
        for der_id, kind in self._kinds.items():
            r = self.fresh(der_id, now)
            vals = _trusted_values(r)
            if kind is DerKind.METER:
                if der_id == grid_meter and POWER_W in vals:
                    grid_w = vals[POWER_W]
                    phases = tuple(vals[k] for k in PHASE_CURRENT_A if k in vals) or None
                if der_id == grid_meter:
                    import_wh, export_wh = vals.get(IMPORT_WH), vals.get(EXPORT_WH)
            elif kind is DerKind.PV:
                if POWER_W in vals:
                    pv_w = (pv_w or 0.0) + vals[POWER_W]
            elif kind is DerKind.BATTERY:
                batteries[der_id] = BatteryView(der_id, vals.get(SOC), vals.get(POWER_W))
            elif kind is DerKind.EV_CHARGER:
                evs[der_id] = vals.get(POWER_W)
                plugged, charging = vals.get(CONNECTED), vals.get(CHARGING)
                ev_views[der_id] = EvView(
                    der_id,
                    vals.get(POWER_W),
                    None if plugged is None else plugged >= 0.5,
                    None if charging is None else charging >= 0.5,
                )
        return Snapshot(now, grid_w, phases, pv_w, batteries, evs, ev_views, import_wh, export_wh)
