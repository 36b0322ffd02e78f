"""The simulated site's physics: a battery, a PV array, a household load and the grid meter.

Pure state + integrate(); the protocol servers in this package read it and write setpoints
into it. Ground-truth energy counters make the demo's summary independent of the daemon.

Hardware is not instant and not exact, and a controller tested against an ideal plant learns
nothing about the real one (issue 10: a loop that is stable on an instant battery oscillates on
one that takes seconds). So the battery has a dead time before a written setpoint acts, a ramp
rate, device-side rounding of setpoints and readings and measurement noise; the meter reports an
average over its last interval, late. The dataclass defaults are *ideal* (instant, exact: what
the protocol tests want); `HYBRID_INVERTER` and `DSMR5_METER` are realistic presets that the
simulator process and the demo use by default.
"""

from __future__ import annotations

import math
import random
from collections import deque
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


def _quantize(value: float, step: float) -> float:
    """What a device that counts in `step` units reports (0 = exact)."""
    return value if step <= 0 else round(value / step) * step


@dataclass(frozen=True, slots=True)
class ActuatorDynamics:
    """How a battery inverter follows a setpoint, and how exactly it reports.

    delay_s: dead time between a write and the inverter starting to move (firmware cycle, BMS
    handshake). ramp_w_per_s: how fast the power then moves (math.inf = a step). The steps are
    the device's resolution for accepted setpoints and for reported power; noise_w is the standard
    deviation of the power reading's noise.
    """

    delay_s: float = 0.0
    ramp_w_per_s: float = math.inf
    setpoint_step_w: float = 0.0
    reading_step_w: float = 0.0
    noise_w: float = 0.0

    def __post_init__(self) -> None:
        for name in ("delay_s", "ramp_w_per_s", "setpoint_step_w", "reading_step_w", "noise_w"):
            value = getattr(self, name)
            if math.isnan(value) or value < 0 or (math.isinf(value) and name != "ramp_w_per_s"):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if self.ramp_w_per_s <= 0:
            raise ValueError("ramp_w_per_s must be > 0")


@dataclass(frozen=True, slots=True)
class MeterDynamics:
    """How the grid meter reports: the average over `window_s`, `delay_s` late, in `step_w` units.

    A DSMR 5 meter sends a telegram every second; the power in it is the meter's own measurement
    of the second before (an average, not an instant), printed in whole watts.
    """

    window_s: float = 0.0
    delay_s: float = 0.0
    step_w: float = 0.0
    noise_w: float = 0.0

    def __post_init__(self) -> None:
        for name in ("window_s", "delay_s", "step_w", "noise_w"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {value}")


IDEAL_ACTUATOR = ActuatorDynamics()
IDEAL_METER = MeterDynamics()
# A hybrid inverter on Modbus: about 1.5 s before a new setpoint acts, then ~3 kW/s (SunSpec
# inverters ramp in WGra %/s of their rating; hybrid inverters' battery loops answer in 1-3 s),
# setpoints accepted in 10 W steps, power reported in 10 W steps with some noise.
HYBRID_INVERTER = ActuatorDynamics(
    delay_s=1.5, ramp_w_per_s=3_000.0, setpoint_step_w=10.0, reading_step_w=10.0, noise_w=10.0
)
# A DSMR 5 meter: a telegram every 1 s with the average of the second before, in W (kW x 3 decimals).
DSMR5_METER = MeterDynamics(window_s=1.0, delay_s=0.5, step_w=1.0, noise_w=5.0)


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
    dynamics: ActuatorDynamics = IDEAL_ACTUATOR
    seed: int | None = None
    # The inverter's own time line (s since its first step) and the setpoints it has heard of but
    # not yet acted on, each with the time it will start acting.
    _t: float = 0.0
    _pending: deque[tuple[float, float]] = field(default_factory=deque)
    _heard_w: float = 0.0  # the last setpoint_w seen, to notice a plain assignment
    _target_w: float = 0.0  # the setpoint the inverter acts on now (after the dead time)
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._heard_w = self._target_w = self.setpoint_w

    def command(self, setpoint_w: float) -> None:
        """A setpoint written over the wire. The register keeps what was written (a read-back matches);
        the inverter acts on it in its own resolution, after its dead time.

        The dead time counts from the physics step before the write, so the simulated delay is
        `dynamics.delay_s` to within one physics step.
        """
        self.setpoint_w = setpoint_w

    def measured_power_w(self) -> float:
        """What the inverter reports: its power, with its noise, in its resolution."""
        noise = self._rng.gauss(0.0, self.dynamics.noise_w) if self.dynamics.noise_w > 0 else 0.0
        return _quantize(self.power_w + noise, self.dynamics.reading_step_w)

    def _advance_target(self, dt_s: float) -> float:
        """Step the inverter's time; returns the power it heads for, after dead time and ramp."""
        if self.setpoint_w != self._heard_w:  # written since the last step: counted from that step
            self._heard_w = self.setpoint_w
            acted_on = _quantize(self.setpoint_w, self.dynamics.setpoint_step_w)
            self._pending.append((self._t + self.dynamics.delay_s, acted_on))
        # A setpoint acts from the step that begins at (or just after) its time; 1 us absorbs float sums.
        while self._pending and self._pending[0][0] <= self._t + 1e-6:
            self._target_w = self._pending.popleft()[1]
        self._t += max(0.0, dt_s)
        if math.isinf(self.dynamics.ramp_w_per_s):
            return self._target_w
        room = self.dynamics.ramp_w_per_s * max(0.0, dt_s)
        return self.power_w + max(-room, min(room, self._target_w - self.power_w))

    def actual_power(self, dt_s: float, wanted_w: float | None = None) -> float:
        """Power the battery can really deliver for dt_s given its limits and SoC."""
        wanted = self.setpoint_w if wanted_w is None else wanted_w
        p = max(-self.max_discharge_w, min(self.max_charge_w, wanted))
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
        p = self.actual_power(dt_s, self._advance_target(dt_s))
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
    meter: MeterDynamics = IDEAL_METER
    load_offset_w: float = 0.0  # a step on top of the load shape (a kettle, a heat pump starting)
    pv_override_w: float | None = None  # a fixed PV power instead of the clear-sky bell
    seed: int | None = None
    # (site time, grid W) over the meter's window + delay, to report what a real meter would.
    _grid_history: deque[tuple[datetime, float]] = field(default_factory=deque)
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def metered_grid_w(self, now: datetime | None = None) -> float:
        """The grid power a real meter reports at `now`: the average over its window, late and rounded."""
        m = self.meter
        at = now or self.last
        if (m.window_s <= 0 and m.delay_s <= 0) or at is None or not self._grid_history:
            value = self.grid_w
        else:
            value = self._window_average(at.timestamp() - m.delay_s, m.window_s)
        if m.noise_w > 0:
            value += self._rng.gauss(0.0, m.noise_w)
        return _quantize(value, m.step_w)

    def _window_average(self, end_s: float, window_s: float) -> float:
        """Time-weighted average of the grid power (a step function of the history) over [end - window, end]."""
        start_s = end_s - window_s
        hist = [(ts.timestamp(), w) for ts, w in self._grid_history]

        # The value in force at time t is the last sample at or before t (the first one before that).
        def at(t: float) -> float:
            value = hist[0][1]
            for ts, w in hist:
                if ts > t:
                    break
                value = w
            return value

        if window_s <= 0:
            return at(end_s)
        total, t = 0.0, start_s
        for ts, _w in hist:
            if ts <= t:
                continue
            if ts >= end_s:
                break
            total += at(t) * (ts - t)
            t = ts
        total += at(t) * (end_s - t)
        return total / window_s

    def step(self, now: datetime, import_price: float = 0.0, export_price: float = 0.0) -> None:
        dt_s = 0.0 if self.last is None else max(0.0, (now - self.last).total_seconds())
        self.last = now
        pv = pv_power_w(now, self.pv_peak_w, self.cloudiness) if self.pv_override_w is None else self.pv_override_w
        self.pv_w = pv
        self.load_w = max(0.0, load_power_w(now, self.load_scale) + self.load_offset_w)
        batt = self.battery.step(dt_s)
        ev_w = self.ev.step(dt_s) if self.ev is not None else 0.0
        self.grid_w = self.load_w - self.pv_w + batt + ev_w
        if self.meter.window_s > 0 or self.meter.delay_s > 0:
            self._grid_history.append((now, self.grid_w))
            keep_s = self.meter.window_s + self.meter.delay_s + 1.0
            while len(self._grid_history) > 2 and (now - self._grid_history[1][0]).total_seconds() > keep_s:
                self._grid_history.popleft()
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


def realistic(
    site: SimSite, actuator: ActuatorDynamics = HYBRID_INVERTER, meter: MeterDynamics = DSMR5_METER
) -> SimSite:
    """The same site with hardware-like lag, rounding and noise (the simulator's and the demo's default)."""
    site.battery.dynamics = actuator
    site.meter = meter
    return site
