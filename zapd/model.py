"""The domain model shared by drivers, controller, store and the wire.

Plain msgspec structs so that the same objects are validated, stored and sent without a
second representation. Units follow ARCHITECTURE.md: W, Wh, SoC as a fraction 0..1, UTC.
Sign conventions: grid + = import, battery + = charging, PV >= 0, EV charger >= 0 charging.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

import msgspec


class DerKind(StrEnum):
    METER = "meter"
    PV = "pv"
    BATTERY = "battery"
    EV_CHARGER = "ev_charger"
    LOAD = "load"


class Quality(StrEnum):
    GOOD = "good"
    # The driver produced the value but something about it is doubtful (e.g. out of plausible range).
    SUSPECT = "suspect"
    # The driver's guard refused a value (not a number, or outside zapd/bounds.py): the reading carries only
    # the plausible values, and the DER is unknown in the snapshot until a good reading comes.
    BAD = "bad"


# Well-known keys of Reading.values. Drivers may add more; these are the ones the controller reads.
POWER_W = "power_w"  # meter: net grid power (+ import); battery: + charging; pv: >= 0; ev: >= 0
SOC = "soc"  # battery or EV state of charge, 0..1
IMPORT_WH = "import_wh"  # meter: cumulative imported energy
EXPORT_WH = "export_wh"  # meter: cumulative exported energy
PHASE_CURRENT_A = ("l1_a", "l2_a", "l3_a")  # meter: per-phase current, + import
SESSION_WH = "session_wh"  # EV charger: energy of the current session
CONNECTED = "connected"  # EV charger: 1.0 when a car is plugged in
CHARGING = "charging"  # EV charger: 1.0 when current flows


class Reading(msgspec.Struct, frozen=True, kw_only=True):
    """One measurement of one DER at one instant."""

    der_id: str
    kind: DerKind
    ts: datetime
    values: dict[str, float]
    quality: Quality = Quality.GOOD


class DerCapabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What a device showed it can do at probe time, and its hard limits."""

    der_id: str
    kind: DerKind
    controllable: bool = False
    model: str = ""
    max_charge_w: float = 0.0
    max_discharge_w: float = 0.0
    capacity_wh: float = 0.0
    max_power_w: float = 0.0  # PV or meter nominal
    min_current_a: float = 0.0  # EV chargers: IEC 61851 minimum is 6 A
    max_current_a: float = 0.0
    phases: int = 1
    voltage_v: float = 230.0
    # A device that drops a command not written again within this long (an EMS setpoint's validity
    # time) says so here; the controller, the only writer, then re-writes it sooner. 0 = it keeps it.
    keepalive_s: float = 0.0
    # Meters: the config's role, so the cloud plans on the grid meter's data ("" = not a meter, or an older Zap).
    role: Literal["", "grid", "pv", "ev", "submeter"] = ""


class BatterySetpoint(msgspec.Struct, frozen=True, kw_only=True, tag="battery_setpoint"):
    """Ask a battery to charge (+) or discharge (-) at power_w."""

    der_id: str
    power_w: float


class EvCurrent(msgspec.Struct, frozen=True, kw_only=True, tag="ev_current"):
    """Ask an EV charger to offer current_a per phase (0 = pause)."""

    der_id: str
    current_a: float
    phases: int = 3


Command = BatterySetpoint | EvCurrent


class CommandResult(msgspec.Struct, frozen=True, kw_only=True):
    command: Command
    ok: bool
    detail: str = ""


class IntentMode(StrEnum):
    SETPOINT = "setpoint"  # follow battery_w / ev_w as given
    SELF_CONSUMPTION = "self_consumption"  # local rules decide the battery power
    HOLD = "hold"  # battery idle, EV at minimum: the safe choice when state is unknown


class Absorb(StrEnum):
    """Which forecast errors the battery takes in a SETPOINT slot that carries a planned grid power.

    The error is the live grid power the setpoint would give minus the planned one. BOTH keeps the grid at the
    plan (the battery takes every error), UP lets the battery take surplus the plan did not expect (more PV,
    less load: charge more or discharge less), DOWN lets it cover demand the plan did not expect (discharge more
    or charge less). The cloud picks the direction in which a kWh moved through the battery is worth more than
    the same kWh moved through the grid at this slot's price.
    """

    BOTH = "both"
    UP = "up"
    DOWN = "down"


class Intent(msgspec.Struct, frozen=True, kw_only=True):
    """What the site should do in one slot. None means "no opinion".

    `grid_w` and `absorb` were added after the first edges shipped: an older edge ignores them (msgspec skips
    unknown fields) and executes `battery_w` as a plain setpoint, which is the plan it was always given.
    """

    mode: IntentMode = IntentMode.SETPOINT
    battery_w: float | None = None  # site total, + charging
    ev_w: float | None = None
    grid_import_limit_w: float | None = None
    grid_export_limit_w: float | None = None
    target_soc: float | None = None
    grid_w: float | None = None  # planned net grid power for the slot, + import (with `absorb`)
    absorb: Absorb | None = None  # None: the grid takes every forecast error (a plain setpoint)


class PlanSlot(msgspec.Struct, frozen=True, kw_only=True):
    start: datetime
    end: datetime
    intent: Intent


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """A versioned schedule of intents for one site."""

    site_id: str
    version: int
    issued_at: datetime
    valid_until: datetime
    slots: tuple[PlanSlot, ...] = ()

    def slot_at(self, now: datetime) -> PlanSlot | None:
        for slot in self.slots:
            if slot.start <= now < slot.end:
                return slot
        return None

    def horizon_end(self) -> datetime | None:
        return max((s.end for s in self.slots), default=None)
