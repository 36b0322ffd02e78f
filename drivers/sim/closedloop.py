"""The real controller and envelope closing the loop over the simulated site, in simulated time.

No protocols and no sleeping: a discrete-event loop steps the physics (drivers/sim/physics.py),
feeds the meter's and the battery's readings into a real `SiteState` on their own schedules,
and runs `Controller.cycle()` when the daemon would (on every meter reading, and every tick).
Used by the closed-loop property test and by the bench (`make bench`) for overshoot and settling
figures; the integration test runs the same site over Modbus-TCP and P1 instead.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from drivers.config_structs import BatteryLimits
from drivers.sim.physics import (
    DSMR5_METER,
    HYBRID_INVERTER,
    ActuatorDynamics,
    BatteryModel,
    MeterDynamics,
    SimSite,
)
from zapd.clock import ManualClock
from zapd.controller import Controller
from zapd.envelope import SiteLimits
from zapd.model import (
    POWER_W,
    SOC,
    BatterySetpoint,
    Command,
    CommandResult,
    DerKind,
    Intent,
    Plan,
    PlanSlot,
    Reading,
)
from zapd.state import SiteState

BATTERY = "inverter.battery"
METER = "meter"
START = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Step:
    """At `at_s` into the run: the plan's battery total (None = no plan: self-consumption), the load or the PV."""

    at_s: float
    plan_w: float | str | None = "keep"
    load_offset_w: float | None = None
    pv_w: float | None = None


@dataclass(frozen=True, slots=True)
class LoopConfig:
    tick_s: float = 5.0
    battery_poll_s: float = 5.0
    meter_interval_s: float = 1.0
    physics_step_s: float = 0.25
    actuator: ActuatorDynamics = HYBRID_INVERTER
    meter: MeterDynamics = DSMR5_METER
    max_export_w: float | None = 3000.0
    fuse_limit_w: float = 3500.0
    deadband_w: float = 50.0
    refresh_s: float = 60.0
    duration_s: float = 1500.0
    soc: float = 0.5
    reserve_soc: float = 0.1
    capacity_wh: float = 10_000.0
    max_power_w: float = 5000.0
    base_load_w: float = 500.0
    pv_w: float = 7000.0
    plan_w: float | None = -2000.0
    steps: tuple[Step, ...] = ()
    seed: int = 1
    # The controller's configured [control] dead_time_s: what the installer says the inverter may take,
    # at least its real delay (the default 5 s, as on a real site; the simulated inverters take 0-3 s).
    dead_time_s: float = 5.0


@dataclass
class LoopTrace:
    """Ground truth every physics step, and every write the controller made."""

    t_s: list[float] = field(default_factory=list)
    grid_w: list[float] = field(default_factory=list)  # + import
    battery_w: list[float] = field(default_factory=list)
    soc: list[float] = field(default_factory=list)
    writes: list[tuple[float, float]] = field(default_factory=list)  # (t_s, W)
    disturbances: list[float] = field(default_factory=list)  # t_s of each step (and 0)


class _Store:
    """The command log is not the subject here; the controller's calls are accepted and dropped."""

    async def log_commands(self, ts: datetime, entries: Iterable[tuple[CommandResult, str]]) -> None:
        return None

    async def add_event(self, ts: datetime, kind: str, detail: str) -> None:
        return None


class _Inverter:
    """The battery's write path: the setpoint reaches the simulated inverter as a Modbus write would."""

    def __init__(self, site: SimSite, trace: LoopTrace, clock: ManualClock) -> None:
        self._site, self._trace, self._clock = site, trace, clock

    async def apply(self, command: Command) -> CommandResult:
        assert isinstance(command, BatterySetpoint)
        self._site.battery.command(command.power_w)
        self._trace.writes.append(((self._clock.now() - START).total_seconds(), command.power_w))
        return CommandResult(command=command, ok=True)

    async def safe_mode(self) -> None:
        self._site.battery.command(0.0)


def build_site(cfg: LoopConfig) -> SimSite:
    battery = BatteryModel(
        capacity_wh=cfg.capacity_wh,
        soc=cfg.soc,
        max_charge_w=cfg.max_power_w,
        max_discharge_w=cfg.max_power_w,
        dynamics=cfg.actuator,
        seed=cfg.seed,
    )
    # load_scale 0: the load is base_load_w + offset, not the day's shape, so a scenario says what it means.
    return SimSite(
        battery=battery,
        load_scale=0.0,
        load_offset_w=cfg.base_load_w,
        pv_override_w=cfg.pv_w,
        meter=cfg.meter,
        seed=cfg.seed + 1,
    )


def _plan(version: int, battery_w: float) -> Plan:
    return Plan(
        site_id="sim",
        version=version,
        issued_at=START,
        valid_until=START + timedelta(days=1),
        slots=(PlanSlot(start=START, end=START + timedelta(days=1), intent=Intent(battery_w=battery_w)),),
    )


def run_loop(cfg: LoopConfig) -> LoopTrace:
    """Run the scenario to its end; deterministic for a given config (the noise is seeded)."""
    return asyncio.run(_run(cfg))


async def _run(cfg: LoopConfig) -> LoopTrace:
    clock = ManualClock(START)
    site = build_site(cfg)
    trace = LoopTrace(disturbances=[0.0])
    state = SiteState()
    state.register(METER, DerKind.METER, cfg.meter_interval_s)
    state.register(BATTERY, DerKind.BATTERY, cfg.battery_poll_s)
    plan: list[Plan | None] = [None if cfg.plan_w is None else _plan(1, cfg.plan_w)]
    limits = {
        BATTERY: BatteryLimits(
            capacity_wh=cfg.capacity_wh,
            max_charge_w=cfg.max_power_w,
            max_discharge_w=cfg.max_power_w,
            reserve_soc=cfg.reserve_soc,
        )
    }
    controller = Controller(
        clock=clock,
        state=state,
        store=_Store(),  # type: ignore[arg-type]
        batteries=lambda: limits,
        actuators={BATTERY: _Inverter(site, trace, clock)},
        site=SiteLimits(
            fuse_limit_w=cfg.fuse_limit_w,
            fuse_a=cfg.fuse_limit_w / (230.0 * 3),
            voltage_v=230.0,
            phases=3,
            max_export_w=cfg.max_export_w,
        ),
        tick_s=cfg.tick_s,
        refresh_s=cfg.refresh_s,
        deadband_w=cfg.deadband_w,
        plan_source=lambda: plan[0],
        plan_fresh=lambda: True,
        dead_time_s=cfg.dead_time_s,
    )
    steps = sorted(cfg.steps, key=lambda s: s.at_s)
    # Integer microsecond schedule: float sums drift and would reorder simultaneous events.
    us = 1_000_000
    dt = round(cfg.physics_step_s * us)
    meter_every, poll_every, tick_every = (
        round(x * us) for x in (cfg.meter_interval_s, cfg.battery_poll_s, cfg.tick_s)
    )
    end = round(cfg.duration_s * us)
    t = 0
    next_meter, next_poll, next_cycle = meter_every // 2, poll_every // 3, 0
    site.step(START)
    version = 1
    while t <= end:
        now = START + timedelta(microseconds=t)
        clock.set(now)
        t_s = t / us
        while steps and steps[0].at_s <= t_s:
            s = steps.pop(0)
            trace.disturbances.append(t_s)
            if s.plan_w != "keep":
                version += 1
                plan[0] = None if s.plan_w is None else _plan(version, float(s.plan_w))
            if s.load_offset_w is not None:
                site.load_offset_w = s.load_offset_w
            if s.pv_w is not None:
                site.pv_override_w = s.pv_w
        site.step(now)
        trace.t_s.append(t_s)
        trace.grid_w.append(site.grid_w)
        trace.battery_w.append(site.battery.power_w)
        trace.soc.append(site.battery.soc)
        woken = False
        if t >= next_poll:
            values = {POWER_W: site.battery.measured_power_w(), SOC: site.battery.soc}
            state.update(Reading(der_id=BATTERY, kind=DerKind.BATTERY, ts=now, values=values), now=now)
            next_poll += poll_every
        if t >= next_meter:
            values = {POWER_W: site.metered_grid_w(now)}
            state.update(Reading(der_id=METER, kind=DerKind.METER, ts=now, values=values), now=now)
            next_meter += meter_every
            woken = True  # the daemon wakes the controller on every meter reading
        if woken or t >= next_cycle:
            await controller.cycle()
            next_cycle = t + tick_every
        t += dt
    return trace


def tolerance_w(limit_w: float) -> float:
    """The stated tolerance over a grid limit: 5 % of it, at least 100 W (meter rounding, noise, lag)."""
    return max(0.05 * limit_w, 100.0)


def control_period_s(cfg: LoopConfig) -> float:
    """How long the controller needs for fresh data of both devices and a decision on it."""
    return max(cfg.tick_s, cfg.battery_poll_s, cfg.meter_interval_s)


def response_s(cfg: LoopConfig) -> float:
    """How long until the controller may take a setpoint as followed: the inverter's dead time and full swing,
    and at least the dead time it is configured with.

    Before the configured `dead_time_s` a reading that shows the newest setpoint is no proof (the inverter
    may not have started on it, or on an older one: zapd/estimate.py `_done`), so the controller's next
    correction waits for it even on an inverter that follows at once; it knows the inverter's timing only
    as the installer configured it.
    """
    swing_s = 0.0 if math.isinf(cfg.actuator.ramp_w_per_s) else 2 * cfg.max_power_w / cfg.actuator.ramp_w_per_s
    return max(cfg.actuator.delay_s + swing_s, cfg.dead_time_s)


def meter_lag_s(cfg: LoopConfig) -> float:
    """How far back a meter value reaches, as the controller can know it: the meter's window and delay, and at
    least what the controller assumes of any meter (its interval + 1 s: zapd/controller.py `_meter_window_s`).

    A reading that proves the battery moved is paired with the meter only once the assumed window lies after
    it, so the next correction waits for that even on a meter that is faster than the controller assumes.
    """
    return max(cfg.meter.window_s + cfg.meter.delay_s, cfg.meter_interval_s + 1.0)


def loop_delay_s(cfg: LoopConfig) -> float:
    """One trip round the loop: a control period, the battery's response (`response_s`), the meter's lateness
    (`meter_lag_s`)."""
    return control_period_s(cfg) + response_s(cfg) + meter_lag_s(cfg)


def grace_s(cfg: LoopConfig) -> float:
    """After a step: one more control period to see it, one trip round the loop to act, the meter's next telegram."""
    return control_period_s(cfg) + loop_delay_s(cfg) + cfg.meter_interval_s + cfg.physics_step_s


def issue_10_case(tick_s: float = 5.0, poll_s: float = 5.0, meter_s: float = 1.0, **over: object) -> LoopConfig:
    """Issue 10's site, 25 minutes: PV surplus, max_export_w = 3000, a 3.5 kW fuse, a -2000 W discharge plan
    that changes every 4 minutes, load and PV steps, a hybrid inverter and a DSMR meter sending every
    `meter_s` (the average of that interval)."""
    plans = [-2000.0, -3000.0, 1000.0, -2000.0, -5000.0]
    cfg = LoopConfig(
        tick_s=tick_s,
        battery_poll_s=poll_s,
        meter_interval_s=meter_s,
        meter=MeterDynamics(window_s=meter_s, delay_s=0.5, step_w=1.0, noise_w=5.0),
        max_export_w=3000.0,
        fuse_limit_w=3500.0,
        duration_s=1500.0,
        base_load_w=500.0,
        pv_w=6000.0,
        plan_w=-2000.0,
        steps=(
            *(Step(240.0 * (i + 1), plan_w=p) for i, p in enumerate(plans)),
            Step(700.0, load_offset_w=4000.0),
            Step(1000.0, load_offset_w=500.0, pv_w=200.0),
            # The load first, the plan 10 s later: the controller cannot know of a load step before the meter does.
            Step(1290.0, load_offset_w=3000.0),
            Step(1300.0, plan_w=3000.0),  # charging from the grid into the fuse limit
        ),
    )
    return replace(cfg, **over)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class LoopFigures:
    """What the bench reports and the property test bounds."""

    worst_export_over_w: float  # the largest export above the limit, any time (W)
    worst_import_over_w: float  # the largest import above the fuse limit, any time (W)
    late_export_over_w: float  # ... outside the grace window after each step
    late_import_over_w: float
    settling_s: float  # the longest time from a step until the setpoint stays near where it ends up
    recovery_s: float  # the longest time from a step until export and import stay within limit + tolerance
    reversals: int  # setpoint direction changes, all run
    late_reversals: int  # ... once settled (a limit cycle shows here)
    writes: int


def _windowed(t_s: list[float], w: list[float], window_s: float) -> list[float]:
    """The 1 s average a meter (and a fuse) sees, not the physics step's instant."""
    out: list[float] = []
    acc, lo = 0.0, 0
    for i, v in enumerate(w):
        acc += v
        while t_s[i] - t_s[lo] >= window_s:
            acc -= w[lo]
            lo += 1
        out.append(acc / (i - lo + 1))
    return out


def _late_turns(writes: list[tuple[float, float]], lo: float, hi: float, deadband_w: float, grace_s: float) -> int:
    """The setpoint's reversals in one step's span [lo, hi) once its grace is over: a limit cycle shows here.

    A limit cycle is the setpoint swinging while the site stays as it is, so the span is counted on its own: its
    moves start from the setpoint in force when the step came, and its first move is the answer to the step,
    whichever way it goes (compared with the move that answered the step before, a load step after a PV step
    was a "reversal": hunt seed 202, docs/decisions.md). A move is a write more than the deadband from the
    last counted one, so writes that each move less (refresh writes of an estimate drifting under noise) add
    up, and a slow oscillation made of them still shows.
    """
    in_force = [w for t, w in writes if t < lo]
    ref = in_force[-1] if in_force else None
    direction = turns = 0
    for t, w in writes:
        if not lo <= t < hi:
            continue
        if ref is None:
            ref = w
        elif abs(w - ref) > deadband_w:
            d = 1 if w > ref else -1
            if direction and d != direction and t - lo >= grace_s:
                turns += 1
            direction, ref = d, w
    return turns


def figures(cfg: LoopConfig, trace: LoopTrace, grace_s: float, settled_band_w: float = 100.0) -> LoopFigures:
    """Overshoot, settling and reversals of one run; `grace_s` after each step is the allowed transient.

    Settled: the setpoint stays within `settled_band_w` of where it ends up (the controller's
    estimate tolerance, 50 W, either way: a move inside it is a correction for noise, not a swing).
    """
    grid = _windowed(trace.t_s, trace.grid_w, 1.0)
    starts = sorted(trace.disturbances)

    def in_grace(t: float) -> bool:
        last = max((d for d in starts if d <= t), default=0.0)
        return t - last < grace_s

    export_limit = math.inf if cfg.max_export_w is None else cfg.max_export_w
    worst_exp = worst_imp = late_exp = late_imp = 0.0
    for t, g in zip(trace.t_s, grid, strict=True):
        exp_over = max(0.0, -g - export_limit)
        imp_over = max(0.0, g - cfg.fuse_limit_w)
        worst_exp, worst_imp = max(worst_exp, exp_over), max(worst_imp, imp_over)
        if not in_grace(t):
            late_exp, late_imp = max(late_exp, exp_over), max(late_imp, imp_over)
    # Setpoint history as it moved (refresh writes that moved it by no more than the deadband are not moves).
    moves: list[tuple[float, float]] = []
    for t, w in trace.writes:
        if not moves or abs(w - moves[-1][1]) > cfg.deadband_w:
            moves.append((t, w))
    reversals = 0
    direction = 0
    for (_t0, w0), (_t1, w1) in itertools.pairwise(moves):
        d = 1 if w1 > w0 else -1
        if direction and d != direction:
            reversals += 1
        direction = d
    spans = list(itertools.pairwise([*starts, math.inf]))
    late_reversals = sum(_late_turns(trace.writes, lo, hi, cfg.deadband_w, grace_s) for lo, hi in spans)
    settling = 0.0
    bounds = [*starts, cfg.duration_s]
    for lo, hi in itertools.pairwise(bounds):
        in_span = [(t, w) for t, w in moves if lo <= t < hi]
        if not in_span:
            continue
        final = in_span[-1][1]
        # Settled from the first write after which every write stays near the final value (from the
        # step itself when the setpoint in force then was already near it).
        before = [w for t, w in moves if t < lo]
        settled_at: float | None = lo if before and abs(before[-1] - final) <= settled_band_w else None
        for t, w in in_span:
            if abs(w - final) > settled_band_w:
                settled_at = None
            elif settled_at is None:
                settled_at = t
        assert settled_at is not None  # the final write is near itself
        settling = max(settling, settled_at - lo)
    # Recovery: from each step to the last moment in its span that the site was over a limit + tolerance.
    recovery = 0.0
    export_tol = tolerance_w(0.0 if cfg.max_export_w is None else cfg.max_export_w)
    import_tol = tolerance_w(cfg.fuse_limit_w)
    span = 0
    for t, g in zip(trace.t_s, grid, strict=True):
        while span + 1 < len(starts) and starts[span + 1] <= t:
            span += 1
        exp_over, imp_over = max(0.0, -g - export_limit), max(0.0, g - cfg.fuse_limit_w)
        if exp_over > export_tol or imp_over > import_tol:
            recovery = max(recovery, t - starts[span])
    return LoopFigures(
        recovery_s=recovery,
        worst_export_over_w=worst_exp,
        worst_import_over_w=worst_imp,
        late_export_over_w=late_exp,
        late_import_over_w=late_imp,
        settling_s=settling,
        reversals=reversals,
        late_reversals=late_reversals,
        writes=len(trace.writes),
    )
