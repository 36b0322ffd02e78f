"""The simulated site's physics: a battery, a PV array, a household load and the grid meter.

Pure state + integrate(); the protocol servers in this package read it and write setpoints
into it. Ground-truth energy counters make the demo's summary independent of the daemon.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

# A typical Dutch household's load shape, W by hour of day (ca. 3,500 kWh/year).
_LOAD_SHAPE_W = [
    250,
    220,
    200,
    200,
    210,
    260,
    420,
    620,
    520,
    380,
    330,
    320,
    360,
    340,
    320,
    360,
    480,
    820,
    980,
    860,
    700,
    560,
    420,
    310,
]


@dataclass
class BatteryModel:
    capacity_wh: float = 10_000.0
    soc: float = 0.5
    max_charge_w: float = 5_000.0
    max_discharge_w: float = 5_000.0
    charge_efficiency: float = 0.95
    discharge_efficiency: float = 0.95
    setpoint_w: float = 0.0  # what the inverter was told, + charging
    power_w: float = 0.0  # what it actually does after its own limits
    # The inverter's own protection: it never goes below/above these no matter what it is told.
    hard_min_soc: float = 0.02
    hard_max_soc: float = 1.0

    def actual_power(self, dt_s: float) -> float:
        """Power the battery can really deliver for dt_s given its limits and SoC."""
        p = max(-self.max_discharge_w, min(self.max_charge_w, self.setpoint_w))
        if dt_s <= 0:
            return p
        if p > 0:
            room_wh = (self.hard_max_soc - self.soc) * self.capacity_wh
            p = min(p, max(0.0, room_wh) / (self.charge_efficiency * dt_s / 3600))
        elif p < 0:
            avail_wh = (self.soc - self.hard_min_soc) * self.capacity_wh
            p = max(p, -max(0.0, avail_wh) * self.discharge_efficiency / (dt_s / 3600))
        return p

    def step(self, dt_s: float) -> float:
        p = self.actual_power(dt_s)
        h = dt_s / 3600
        if p >= 0:
            self.soc += p * self.charge_efficiency * h / self.capacity_wh
        else:
            self.soc += p / self.discharge_efficiency * h / self.capacity_wh
        self.soc = min(1.0, max(0.0, self.soc))
        self.power_w = p
        return p


@dataclass
class EvModel:
    """A car behind a charger: charges at the offered current x phases x voltage while plugged in.

    The charger side (offered current, phases, its meter) lives here too, so a simulated charger
    protocol server has one object to mirror. Below the IEC 61851 minimum (6 A) the car draws nothing.
    """

    capacity_wh: float = 60_000.0
    soc: float = 0.3
    connected: bool = True
    car_max_current_a: float = 32.0  # the car's on-board charger limit
    phases: int = 3
    voltage_v: float = 230.0
    setpoint_a: float = 0.0  # what the charger offers (0 = pause)
    safe_current_a: float = 6.0  # what the charger falls back to when the EMS goes silent
    efficiency: float = 0.9
    min_current_a: float = 6.0
    energy_wh: float = 0.0  # the charger meter's lifetime total
    power_w: float = 0.0

    @property
    def current_a(self) -> float:
        """Per-phase current the car draws now."""
        if not self.connected or self.setpoint_a < self.min_current_a or self.soc >= 1.0:
            return 0.0
        return min(self.setpoint_a, self.car_max_current_a)

    @property
    def state(self) -> str:
        """IEC 61851 Mode 3 state: A unplugged, B2 plugged and ready, C2 charging."""
        if not self.connected:
            return "A"
        return "C2" if self.current_a > 0 else "B2"

    def step(self, dt_s: float) -> float:
        self.power_w = self.current_a * self.phases * self.voltage_v
        h = max(0.0, dt_s) / 3600
        self.energy_wh += self.power_w * h
        self.soc = min(1.0, self.soc + self.power_w * h * self.efficiency / self.capacity_wh)
        return self.power_w


def pv_power_w(ts: datetime, peak_w: float, cloudiness: float = 0.0) -> float:
    """A smooth clear-sky-like bell between 06:00 and 20:00 local (UTC here), dimmed by clouds."""
    hour = ts.hour + ts.minute / 60 + ts.second / 3600
    sunrise, sunset = 6.0, 20.0
    if not sunrise < hour < sunset:
        return 0.0
    x = (hour - sunrise) / (sunset - sunrise)
    return float(peak_w * math.sin(math.pi * x) ** 1.5 * (1.0 - 0.7 * cloudiness))


def load_power_w(ts: datetime, scale: float = 1.0) -> float:
    """Household load interpolated between the hourly shape points."""
    hour = ts.hour + ts.minute / 60 + ts.second / 3600
    i = int(hour) % 24
    frac = hour - int(hour)
    return scale * (_LOAD_SHAPE_W[i] * (1 - frac) + _LOAD_SHAPE_W[(i + 1) % 24] * frac)


@dataclass
class EnergyCounters:
    """Ground truth, Wh. Balance: pv + import + discharge = load + charge + export."""

    import_wh: float = 0.0
    export_wh: float = 0.0
    pv_wh: float = 0.0
    load_wh: float = 0.0
    charge_wh: float = 0.0
    discharge_wh: float = 0.0
    baseline_import_wh: float = 0.0  # the same site without the battery
    baseline_export_wh: float = 0.0
    cost: float = 0.0
    baseline_cost: float = 0.0
    ev_wh: float = 0.0


@dataclass
class SimSite:
    """One site. Call step(now) regularly; read the *_w fields for the current instant."""

    battery: BatteryModel = field(default_factory=BatteryModel)
    pv_peak_w: float = 6_000.0
    load_scale: float = 1.0
    cloudiness: float = 0.0
    pv_w: float = 0.0
    load_w: float = 0.0
    grid_w: float = 0.0  # + import
    counters: EnergyCounters = field(default_factory=EnergyCounters)
    last: datetime | None = None
    ev: EvModel | None = None  # an EV charger with a car, on the same meter

    def step(self, now: datetime, import_price: float = 0.0, export_price: float = 0.0) -> None:
        dt_s = 0.0 if self.last is None else max(0.0, (now - self.last).total_seconds())
        self.last = now
        self.pv_w = pv_power_w(now, self.pv_peak_w, self.cloudiness)
        self.load_w = load_power_w(now, self.load_scale)
        batt = self.battery.step(dt_s)
        ev_w = self.ev.step(dt_s) if self.ev is not None else 0.0
        self.grid_w = self.load_w - self.pv_w + batt + ev_w
        h = dt_s / 3600
        c = self.counters
        c.pv_wh += self.pv_w * h
        c.load_wh += self.load_w * h
        c.charge_wh += max(0.0, batt) * h
        c.discharge_wh += max(0.0, -batt) * h
        c.import_wh += max(0.0, self.grid_w) * h
        c.export_wh += max(0.0, -self.grid_w) * h
        c.ev_wh += ev_w * h
        base = self.load_w - self.pv_w + ev_w  # the EV charges without the battery too
        c.baseline_import_wh += max(0.0, base) * h
        c.baseline_export_wh += max(0.0, -base) * h
        c.cost += (max(0.0, self.grid_w) * import_price - max(0.0, -self.grid_w) * export_price) * h / 1000
        c.baseline_cost += (max(0.0, base) * import_price - max(0.0, -base) * export_price) * h / 1000
