"""The closed loop as a property: the real controller and envelope on the simulator's physics, in simulated time.

Issue 10: with an inverter that takes seconds to follow and a meter that reports late, the
controller trusted a battery reading from before the inverter applied its write, and the
setpoint banged between its limits (export 9 kW against a 3 kW limit, import 6 kW against a
3.5 kW fuse, 120+ reversals in 25 minutes). Here hypothesis draws the timing (tick, battery poll,
meter interval), the hardware (dead time, ramp, rounding, noise, meter window and delay), the
site (PV, load, limits) and a run of steps (plan changes every few minutes, load and PV steps)
and checks the loop's promise (docs/decisions.md, "Closed loop"):

- outside a grace window after each step (two control periods plus the hardware's own response, at
  least the dead time the controller is configured with: it cannot trust a reading sooner)
  export and import stay within their limit + the tolerance (5 % of the limit, at least 100 W);
- inside it, never worse than the step itself made it (+ the tolerance): the loop does not amplify;
- the setpoint settles: no reversal once settled, and within three trips round the loop it stays
  within 100 W (twice the estimate tolerance) of where it ends up. An averaging meter (DSMR 4:
  the mean of 10 s) shows a step only in part at first, so the loop needs more than one trip.

Every scenario is feasible (the battery can always bring the site within its limits, its SoC stays
clear of the bounds), so any excess is the controller's.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from drivers.sim.closedloop import (
    LoopConfig,
    LoopTrace,
    Step,
    figures,
    grace_s,
    issue_10_case,
    loop_delay_s,
    run_loop,
    tolerance_w,
)
from drivers.sim.physics import ActuatorDynamics, MeterDynamics

MAX_W = 5000.0  # the battery's power either way


@st.composite
def loops(draw: st.DrawFn) -> LoopConfig:
    meter_interval = draw(st.sampled_from([1.0, 1.0, 2.0, 5.0, 10.0]))  # DSMR 5 sends every 1 s, DSMR 4 every 10 s
    actuator = ActuatorDynamics(
        delay_s=draw(st.floats(0.0, 3.0)),
        ramp_w_per_s=draw(st.sampled_from([math.inf, 20_000.0]) | st.floats(500.0, 10_000.0)),
        setpoint_step_w=draw(st.sampled_from([0.0, 1.0, 10.0, 100.0])),
        reading_step_w=draw(st.sampled_from([0.0, 1.0, 10.0])),
        noise_w=draw(st.floats(0.0, 15.0)),
    )
    meter = MeterDynamics(
        window_s=draw(st.sampled_from([0.0, meter_interval])),
        delay_s=draw(st.floats(0.0, 1.0)),
        step_w=1.0,
        noise_w=draw(st.floats(0.0, 10.0)),
    )
    max_export = draw(st.none() | st.floats(0.0, 5000.0))
    fuse = draw(st.floats(3000.0, 17_000.0))
    # Feasible sites: the battery can always absorb the surplus above the export limit and cover
    # the import above the fuse, with a margin for the tolerance.
    export_room = (math.inf if max_export is None else max_export) + MAX_W - 300.0

    import_room = fuse + MAX_W - 300.0

    def load_for(pv: float) -> float:
        return draw(st.floats(max(200.0, pv - export_room), min(9000.0, pv + import_room)))

    def pv_for(load: float) -> float:
        return draw(st.floats(max(0.0, load - import_room), min(9000.0, load + export_room)))

    pv = draw(st.floats(0.0, 9000.0))
    load = load_for(pv)
    first_pv, first_load = pv, load
    plan = st.none() | st.floats(-MAX_W, MAX_W)
    steps = []
    t = 0.0
    for _ in range(draw(st.integers(1, 5))):
        t += draw(st.floats(90.0, 300.0))  # "a plan that changes every few minutes", and the site with it
        kind = draw(st.sampled_from(["plan", "plan", "load", "pv", "both"]))
        if kind == "plan":
            steps.append(Step(t, plan_w=draw(plan)))
        elif kind == "load":  # every state stays feasible with what is in force
            load = load_for(pv)
            steps.append(Step(t, load_offset_w=load))
        elif kind == "pv":
            pv = pv_for(load)
            steps.append(Step(t, pv_w=pv))
        else:
            pv = draw(st.floats(0.0, 9000.0))
            load = load_for(pv)
            steps.append(Step(t, load_offset_w=load, pv_w=pv))
    return LoopConfig(
        tick_s=draw(st.sampled_from([1.0, 2.0, 5.0, 10.0, 15.0])),
        battery_poll_s=draw(st.sampled_from([1.0, 2.0, 5.0, 10.0])),
        meter_interval_s=meter_interval,
        actuator=actuator,
        meter=meter,
        max_export_w=max_export,
        fuse_limit_w=fuse,
        duration_s=t + draw(st.floats(90.0, 300.0)),
        soc=draw(st.floats(0.35, 0.65)),
        reserve_soc=0.1,
        capacity_wh=20_000.0,  # 25 min at 5 kW moves 10 % of it: the SoC bounds stay out of play
        max_power_w=MAX_W,
        base_load_w=first_load,
        pv_w=first_pv,
        plan_w=draw(plan),
        steps=tuple(steps),
        seed=draw(st.integers(0, 2**16)),
    )


def excess(cfg: LoopConfig, grid_w: float) -> tuple[float, float]:
    """(export over its limit, import over the fuse limit), W."""
    export_limit = math.inf if cfg.max_export_w is None else cfg.max_export_w
    return max(0.0, -grid_w - export_limit), max(0.0, grid_w - cfg.fuse_limit_w)


def check_loop(cfg: LoopConfig, trace: LoopTrace) -> None:
    grace = grace_s(cfg)
    export_tol = tolerance_w(cfg.max_export_w or 0.0)
    import_tol = tolerance_w(cfg.fuse_limit_w)
    # Site (load - PV) in force after each step, to know what the step did with the battery frozen.
    load, pv = cfg.base_load_w, cfg.pv_w
    frozen: list[tuple[float, float, float]] = []  # (t, export excess, import excess) a step caused by itself
    steps = sorted(cfg.steps, key=lambda s: s.at_s)
    for s in [Step(0.0), *steps]:
        load = s.load_offset_w if s.load_offset_w is not None else load
        pv = s.pv_w if s.pv_w is not None else pv
        i = min(range(len(trace.t_s)), key=lambda k: abs(trace.t_s[k] - s.at_s))
        frozen.append((s.at_s, *excess(cfg, load - pv + trace.battery_w[i])))
    grid = [
        sum(trace.grid_w[max(0, i - 3) : i + 1]) / len(trace.grid_w[max(0, i - 3) : i + 1])
        for i in range(len(trace.grid_w))
    ]
    for t, g in zip(trace.t_s, grid, strict=True):
        since, step_exp, step_imp = max((f for f in frozen if f[0] <= t), key=lambda f: f[0])
        exp_over, imp_over = excess(cfg, g)
        if t - since >= grace:
            assert exp_over <= export_tol, (
                f"export {exp_over:.0f} W over the limit at t={t:.1f}s, {t - since:.0f}s after a step"
            )
            assert imp_over <= import_tol, (
                f"import {imp_over:.0f} W over the fuse at t={t:.1f}s, {t - since:.0f}s after a step"
            )
        else:
            assert exp_over <= step_exp + export_tol, (
                f"export {exp_over:.0f} W over at t={t:.1f}s: worse than the step made it ({step_exp:.0f})"
            )
            assert imp_over <= step_imp + import_tol, (
                f"import {imp_over:.0f} W over at t={t:.1f}s: worse than the step made it ({step_imp:.0f})"
            )
    f = figures(cfg, trace, grace)
    assert f.late_reversals == 0, f"{f.late_reversals} setpoint reversals after settling (a limit cycle)"
    bound = 3 * loop_delay_s(cfg)
    assert f.settling_s <= bound, f"the setpoint took {f.settling_s:.0f} s to settle (3 loop delays: {bound:.0f} s)"


def _regression(delay_s: float, *, max_export_w: float | None, base_load_w: float) -> LoopConfig:
    """The shape of the cases hypothesis found: tick = poll = 1 s, a DSMR 4 meter (10 s mean), a step inverter."""
    return LoopConfig(
        tick_s=1.0,
        battery_poll_s=1.0,
        meter_interval_s=10.0,
        actuator=ActuatorDynamics(delay_s=delay_s, ramp_w_per_s=math.inf),
        meter=MeterDynamics(window_s=10.0, delay_s=0.0, step_w=1.0, noise_w=0.0),
        max_export_w=max_export_w,
        fuse_limit_w=3000.0,
        duration_s=180.0,
        soc=0.5,
        reserve_soc=0.1,
        capacity_wh=20_000.0,
        max_power_w=MAX_W,
        base_load_w=base_load_w,
        pv_w=0.0,
        plan_w=None,
        steps=(Step(90.0),),
        seed=0,
    )


def _instant(
    *, max_export_w: float | None, base_load_w: float, load_w: float, at_s: float, pv_w: float | None = None
) -> LoopConfig:
    """Seed 302's shape: an ideal inverter (no delay, no ramp), a 1 s meter, tick = poll = 1 s."""
    return replace(
        _regression(0.0, max_export_w=max_export_w, base_load_w=base_load_w),
        meter_interval_s=1.0,
        meter=MeterDynamics(window_s=1.0, delay_s=0.0, step_w=1.0, noise_w=0.0),
        steps=(Step(at_s, load_offset_w=load_w, pv_w=pv_w),),
        duration_s=at_s + 90.0,
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(loops())
# Found by hypothesis (a reading that matched the newest setpoint inside its dead time was taken as
# "reached", while an older setpoint was still to act: the range closed too early, export overshoot
# and a late reversal on a 10 s averaging meter with a 2.7-3 s dead time).
@example(_regression(2.6584619004039816, max_export_w=0.0, base_load_w=752.0))
@example(_regression(3.0, max_export_w=0.0, base_load_w=514.0))
@example(_regression(3.0, max_export_w=None, base_load_w=514.0))
# Found by hypothesis (seed 302): an inverter that follows at once, with the controller's 5 s dead time.
# A reading that shows the newest setpoint is proof only after the configured dead time, so the second
# correction after a load step waits for it: export 101 W over a 0 W limit at 4.2 s, settling in 7.5 s,
# both inside what the controller promises for its configured timing (grace_s, loop_delay_s).
@example(_instant(max_export_w=0.0, base_load_w=535.0, load_w=200.0, at_s=90.0))
@example(_instant(max_export_w=None, base_load_w=200.0, load_w=400.0, at_s=181.0))
# Found by hypothesis (seed 302): the same shape, a PV step 0 -> 735 W. The second correction waited out
# the 5 s dead time although the polls showed the first one applied (a value the battery could not
# show before it), so the site exported 251 W for 7 s, 100 W on average at the end of the grace.
@example(_instant(max_export_w=0.0, base_load_w=200.0, load_w=200.0, at_s=90.0, pv_w=735.0))
# Found by hypothesis after that fix: a load step 841 -> 200 W on the instant inverter, the 1 s meter 0.49 s late.
# Two partial corrections (-405 W, then -350 W: 55 W, less than two reading tolerances, so no poll can show it
# apart) and the third after the dead time: 150 W export until 9.5 s, 100.0 W on average at the end of a
# grace that counted the meter's real 1.49 s instead of the 2 s the controller assumes of a 1 s meter.
@example(
    replace(
        _instant(max_export_w=0.0, base_load_w=841.0, load_w=200.0, at_s=180.25),
        meter=MeterDynamics(window_s=1.0, delay_s=0.4921875, step_w=1.0, noise_w=0.0),
        steps=(Step(90.25, plan_w=None), Step(180.25, load_offset_w=200.0)),
        duration_s=270.25,
    )
)
# Found by hypothesis: an inverter acting in 100 W steps on a zero-export site. The controller held its command at
# the edge of its 50 W estimate tolerance (1049.6 W for a 1107 W surplus: the export limit tightened by that
# margin was clamped at 0) and the inverter rounded it to 1000 W: 107 W export for as long as the surplus lasted.
# A zero-export site now keeps the margin as import (an export limit below zero is a floor on the import).
@example(
    LoopConfig(
        tick_s=1.0,
        battery_poll_s=1.0,
        meter_interval_s=1.0,
        physics_step_s=0.25,
        actuator=ActuatorDynamics(
            delay_s=0.0, ramp_w_per_s=math.inf, setpoint_step_w=100.0, reading_step_w=0.0, noise_w=9.0
        ),
        meter=MeterDynamics(window_s=0.0, delay_s=0.0, step_w=1.0, noise_w=0.0),
        max_export_w=0.0,
        fuse_limit_w=3000.0,
        deadband_w=50.0,
        refresh_s=60.0,
        duration_s=180.0,
        soc=0.5,
        reserve_soc=0.1,
        capacity_wh=20000.0,
        max_power_w=5000.0,
        base_load_w=848.0,
        pv_w=0.0,
        plan_w=None,
        steps=(Step(at_s=90.0, plan_w="keep", load_offset_w=None, pv_w=1955.0),),
        seed=0,
        dead_time_s=5.0,
    )
)
# Found by a random local run: zero export, a 10 s averaging meter 0.88 s late, 5 s battery polls, 2.3 s dead time, a
# 6.3 kW load and PV 0 -> 4.7 kW. Each meter window mixed the last two setpoints, and the nearest end of what was
# certain (-1727 W for -1523 W needed) left the site exporting 154 W until 51 s after the step (grace 46.25 s).
# A command over a grid limit now moves to within 150 W of what keeps the limit at every plausible state.
@example(
    LoopConfig(
        tick_s=1.0,
        battery_poll_s=5.0,
        meter_interval_s=10.0,
        physics_step_s=0.25,
        actuator=ActuatorDynamics(
            delay_s=2.3208651297556964, ramp_w_per_s=math.inf, setpoint_step_w=0.0, reading_step_w=0.0, noise_w=0.0
        ),
        meter=MeterDynamics(window_s=10.0, delay_s=0.8843671502620298, step_w=1.0, noise_w=0.0),
        max_export_w=0.0,
        fuse_limit_w=3000.0,
        deadband_w=50.0,
        refresh_s=60.0,
        duration_s=627.1881333821707,
        soc=0.35,
        reserve_soc=0.1,
        capacity_wh=20000.0,
        max_power_w=5000.0,
        base_load_w=6297.208685375907,
        pv_w=0.0,
        plan_w=None,
        steps=(
            Step(at_s=267.18813338217063, plan_w="keep", load_offset_w=None, pv_w=4724.196952536394),
            Step(at_s=357.18813338217063),
            Step(at_s=447.18813338217063),
            Step(at_s=537.1881333821707),
        ),
        seed=0,
        dead_time_s=5.0,
    )
)
# Found by a random local run after that fix (seed 7): the same cause on a self-consumption site with a 50 W export
# limit, load 2174 -> 200 W, polls every 2 s: the request is the export floor itself (the limit less the margin), so
# no limit "cut" it, yet the nearest end of each mixed window left 177 W over the limit 46 s after the step.
@example(
    LoopConfig(
        tick_s=1.0,
        battery_poll_s=2.0,
        meter_interval_s=10.0,
        physics_step_s=0.25,
        actuator=ActuatorDynamics(
            delay_s=1.0271700118787814,
            ramp_w_per_s=20000.0,
            setpoint_step_w=0.0,
            reading_step_w=0.0,
            noise_w=7.9571256661264895,
        ),
        meter=MeterDynamics(window_s=10.0, delay_s=0.5304281621702708, step_w=1.0, noise_w=1.2344265046715532),
        max_export_w=50.0,
        fuse_limit_w=11069.388576951107,
        deadband_w=50.0,
        refresh_s=60.0,
        duration_s=767.2191474498713,
        soc=0.35,
        reserve_soc=0.1,
        capacity_wh=20000.0,
        max_power_w=5000.0,
        base_load_w=2174.0258915351046,
        pv_w=0.05,
        plan_w=None,
        steps=(
            Step(at_s=299.99999999999994, plan_w="keep", load_offset_w=200.0, pv_w=None),
            Step(at_s=393.8597656849561, plan_w=-4219.806086721694, load_offset_w=None, pv_w=None),
            Step(at_s=677.2191474498713, plan_w="keep", load_offset_w=200.0, pv_w=None),
        ),
        seed=1,
        dead_time_s=5.0,
    )
)
# Found by the hunt on a first version of that fix (seed 7 again; it fails on the old rule too: 130 W export 26 s after
# the step): a discharge plan on a zero-export site with a 17 kW fuse, load 5 kW -> 483 W. A guard that took the
# battery's charge limit for the fuse held the move back until late, and its return came after the grace.
@example(
    LoopConfig(
        tick_s=1.0,
        battery_poll_s=2.0,
        meter_interval_s=5.0,
        physics_step_s=0.25,
        actuator=ActuatorDynamics(
            delay_s=1.9963545981285749,
            ramp_w_per_s=math.inf,
            setpoint_step_w=10.0,
            reading_step_w=0.0,
            noise_w=7.2001949255182245,
        ),
        meter=MeterDynamics(window_s=5.0, delay_s=0.3856715892077772, step_w=1.0, noise_w=6.9573370727355845),
        max_export_w=0.02,
        fuse_limit_w=17000.0,
        deadband_w=50.0,
        refresh_s=60.0,
        duration_s=624.6376604357667,
        soc=0.4016502276006052,
        reserve_soc=0.1,
        capacity_wh=20000.0,
        max_power_w=5000.0,
        base_load_w=4998.967411325081,
        pv_w=4152.875647172311,
        plan_w=-4497.317089579693,
        steps=(
            Step(at_s=246.82706631206477, plan_w=-4999.0, load_offset_w=None, pv_w=None),
            Step(at_s=419.32005089542895, plan_w="keep", load_offset_w=482.8300579940548, pv_w=None),
        ),
        seed=15709,
        dead_time_s=5.0,
    )
)
# Found by the hunt with the move 100 W short of the export floor (seed 14; the old rule passes it): tick = poll = meter
# = 5 s, an inverter acting in 100 W steps, a 151 W export limit, PV 0 -> 5.6 kW. The move went 114 W past the answer
# and came back 57 W 27.6 s after the step (grace 26.25 s), a reversal after settling; 150 W short it is not past it.
@example(
    LoopConfig(
        tick_s=5.0,
        battery_poll_s=5.0,
        meter_interval_s=5.0,
        physics_step_s=0.25,
        actuator=ActuatorDynamics(
            delay_s=2.4600587700897645,
            ramp_w_per_s=math.inf,
            setpoint_step_w=100.0,
            reading_step_w=0.0,
            noise_w=12.668843402088243,
        ),
        meter=MeterDynamics(window_s=5.0, delay_s=0.23432640680406763, step_w=1.0, noise_w=7.52129589786612),
        max_export_w=151.0392799997171,
        fuse_limit_w=8038.806548780921,
        deadband_w=50.0,
        refresh_s=60.0,
        duration_s=978.2444542079993,
        soc=0.5160170785150695,
        reserve_soc=0.1,
        capacity_wh=20000.0,
        max_power_w=5000.0,
        base_load_w=1911.9207856943044,
        pv_w=2.063202325885224e-70,
        plan_w=None,
        steps=(
            Step(at_s=240.0, plan_w="keep", load_offset_w=None, pv_w=6434.1286738708295),
            Step(at_s=498.42817325995145, plan_w=151.0392799997171, load_offset_w=None, pv_w=None),
            Step(at_s=702.9867384599665, plan_w="keep", load_offset_w=None, pv_w=5e-324),
            Step(at_s=869.8831551771857, plan_w="keep", load_offset_w=None, pv_w=5616.518157251309),
        ),
        seed=4,
        dead_time_s=5.0,
    )
)
# Found by the hunt on that code (seed 30; the rule before the move passes it): self-consumption, a 20 W export limit,
# a 3.9 kW/s inverter, 5 s polls, a 2 s meter, load 4464 -> 230 W. The move over the limit went to +101 W (about 70 W
# past the answer); its way back, 25 W outside the closed interval, sat under the slack and the deadband until a
# noisy reading pushed it 51 W at 20.45 s, after the 20.25 s grace. The way back now lands the tolerance inside the
# interval, at 6.45 s, and stays.
@example(
    LoopConfig(
        tick_s=1.0,
        battery_poll_s=5.0,
        meter_interval_s=2.0,
        physics_step_s=0.25,
        actuator=ActuatorDynamics(
            delay_s=0.4472451547529869,
            ramp_w_per_s=3862.1125993550163,
            setpoint_step_w=0.0,
            reading_step_w=0.0,
            noise_w=9.966540948836947,
        ),
        meter=MeterDynamics(window_s=2.0, delay_s=7.705080447521602e-307, step_w=1.0, noise_w=8.264368917863953),
        max_export_w=20.0,
        fuse_limit_w=10000.0,
        deadband_w=50.0,
        refresh_s=60.0,
        duration_s=1361.8903658990964,
        soc=0.5517379076310938,
        reserve_soc=0.1,
        capacity_wh=20000.0,
        max_power_w=5000.0,
        base_load_w=550.6090367008171,
        pv_w=2251.0814673894197,
        plan_w=2769.625949971066,
        steps=(
            Step(at_s=200.0, plan_w="keep", load_offset_w=7000.0, pv_w=425.95004206092756),
            Step(at_s=500.0, plan_w=None, load_offset_w=None, pv_w=None),
            Step(at_s=626.2737480221149, plan_w="keep", load_offset_w=4463.508967799989, pv_w=588.155471042891),
            Step(at_s=920.554862639609, plan_w="keep", load_offset_w=230.0, pv_w=225.42078880642418),
            Step(at_s=1128.5374838492964, plan_w="keep", load_offset_w=None, pv_w=2308.092719588398),
        ),
        seed=1793,
        dead_time_s=5.0,
    )
)
# The same on another shape (hunt seed 42 on the code before): self-consumption with a 2 W export limit, tick 2 s,
# 1 s polls and meter, PV 2842 -> 4778 W under a 4685 W load: moved to 239 W, and the 50 W way back came 25.5 s
# after the step (grace 12.25 s); now at 4.5 s.
@example(
    LoopConfig(
        tick_s=2.0,
        battery_poll_s=1.0,
        meter_interval_s=1.0,
        physics_step_s=0.25,
        actuator=ActuatorDynamics(
            delay_s=0.5840755904123527,
            ramp_w_per_s=20000.0,
            setpoint_step_w=0.0,
            reading_step_w=0.0,
            noise_w=1.2164779265703787,
        ),
        meter=MeterDynamics(window_s=1.0, delay_s=0.3463094016323998, step_w=1.0, noise_w=1.0629587686561706),
        max_export_w=2.00001,
        fuse_limit_w=11707.19914407713,
        deadband_w=50.0,
        refresh_s=60.0,
        duration_s=1099.8178689255446,
        soc=0.37598400550458116,
        reserve_soc=0.1,
        capacity_wh=20000.0,
        max_power_w=5000.0,
        base_load_w=4685.374407409533,
        pv_w=2842.1167556424502,
        plan_w=None,
        steps=(
            Step(at_s=230.0, plan_w="keep", load_offset_w=None, pv_w=4778.373438418088),
            Step(at_s=394.436952386036, plan_w=4733.585267488546, load_offset_w=None, pv_w=None),
            Step(at_s=656.9966614338309, plan_w=None, load_offset_w=None, pv_w=None),
            Step(at_s=790.949822575542, plan_w="keep", load_offset_w=8981.144685520754, pv_w=9000.0),
            Step(at_s=989.4863757490573, plan_w="keep", load_offset_w=5664.6201875852, pv_w=None),
        ),
        seed=65536,
        dead_time_s=5.0,
    )
)
# Found by the hunt on a first version of that rule (seed 68; the code before passes it): export limit 3191 W, load
# 5086 -> 438 W under 5905 W of PV, 10 s polls. The move landed at 2349 W, inside every closed interval after it,
# until a minute later noise put the high end 6 W under it and the way back went 56 W down, after the grace. A clean
# reading that holds the command ends the move's way back.
@example(
    LoopConfig(
        tick_s=2.0,
        battery_poll_s=10.0,
        meter_interval_s=1.0,
        physics_step_s=0.25,
        actuator=ActuatorDynamics(
            delay_s=2.140610970914186,
            ramp_w_per_s=20000.0,
            setpoint_step_w=1.0,
            reading_step_w=0.0,
            noise_w=12.782335088608116,
        ),
        meter=MeterDynamics(window_s=1.0, delay_s=0.8328789412608848, step_w=1.0, noise_w=3.801801745798156),
        max_export_w=3191.1551630975137,
        fuse_limit_w=11671.369665519294,
        deadband_w=50.0,
        refresh_s=60.0,
        duration_s=1245.3272507031797,
        soc=0.5653261716374791,
        reserve_soc=0.1,
        capacity_wh=20000.0,
        max_power_w=5000.0,
        base_load_w=5086.173436899798,
        pv_w=5905.371886694356,
        plan_w=608.349909355713,
        steps=(
            Step(at_s=299.0, plan_w="keep", load_offset_w=438.12875646473094, pv_w=None),
            Step(at_s=536.1615079692833, plan_w="keep", load_offset_w=200.0, pv_w=None),
            Step(at_s=767.2117391897018, plan_w="keep", load_offset_w=None, pv_w=1884.448309477365),
            Step(at_s=1040.1112343029172, plan_w=None, load_offset_w=None, pv_w=None),
        ),
        seed=54394,
        dead_time_s=5.0,
    )
)
# Found by the final hunt (seeds 200, 203, 206; the code before fails them the same way): tick = poll = 1 s and a 10 s
# averaging meter. The controller kept its battery's last 16 readings, and 16 s of 1 s polls did not reach back past
# the meter's window by the time its next value came: the state before a write fell out of the range, which then did
# not hold the answer. Seed 200: zero export, PV 5533 -> 0 W under a -2815 W plan; the writes swung -1219, 2821,
# 361 W and the site exported 279 W 25 s after a step that made it import. Readings are now kept by age.
@example(
    LoopConfig(
        tick_s=1.0,
        battery_poll_s=1.0,
        meter_interval_s=10.0,
        physics_step_s=0.25,
        actuator=ActuatorDynamics(
            delay_s=0.35868746779976435,
            ramp_w_per_s=1454.4556251725508,
            setpoint_step_w=0.0,
            reading_step_w=0.0,
            noise_w=0.8721739687112908,
        ),
        meter=MeterDynamics(window_s=10.0, delay_s=0.8137675437656715, step_w=1.0, noise_w=7.881809987581274e-210),
        max_export_w=0.0,
        fuse_limit_w=12189.705133619036,
        deadband_w=50.0,
        refresh_s=60.0,
        duration_s=726.2266868055692,
        soc=0.3717406102165361,
        reserve_soc=0.1,
        capacity_wh=20000.0,
        max_power_w=5000.0,
        base_load_w=832.784707103553,
        pv_w=5532.784707103553,
        plan_w=-2815.1617859435314,
        steps=(
            Step(at_s=169.83389562555504, plan_w="keep", load_offset_w=None, pv_w=5e-324),
            Step(at_s=456.703208762776, plan_w="keep", load_offset_w=987.1264243246859, pv_w=4441.812236574157),
        ),
        seed=2,
        dead_time_s=5.0,
    )
)
# Seed 203: no export limit, load 240 -> 2721 W under 2544 W of PV: 729 W, then -597 W when the 2240 W reading left the
# range, and back to -252 W 46.75 s after the step (grace 46.25 s).
@example(
    LoopConfig(
        tick_s=1.0,
        battery_poll_s=1.0,
        meter_interval_s=10.0,
        physics_step_s=0.25,
        actuator=ActuatorDynamics(
            delay_s=2.5233487854027086,
            ramp_w_per_s=20000.0,
            setpoint_step_w=10.0,
            reading_step_w=0.0,
            noise_w=12.904141848262467,
        ),
        meter=MeterDynamics(window_s=10.0, delay_s=0.7, step_w=1.0, noise_w=4.239718037744348),
        max_export_w=None,
        fuse_limit_w=4835.236707818758,
        deadband_w=50.0,
        refresh_s=60.0,
        duration_s=1042.4282540287836,
        soc=0.557232423922334,
        reserve_soc=0.1,
        capacity_wh=20000.0,
        max_power_w=5000.0,
        base_load_w=240.0,
        pv_w=2544.209414733464,
        plan_w=None,
        steps=(
            Step(at_s=159.204020569278, plan_w=None, load_offset_w=None, pv_w=None),
            Step(at_s=398.25220507398546, plan_w="keep", load_offset_w=2720.610358348541, pv_w=None),
            Step(at_s=631.5996586074217, plan_w="keep", load_offset_w=3282.8496397522163, pv_w=None),
            Step(at_s=731.5996586074217, plan_w="keep", load_offset_w=200.0, pv_w=240.0),
            Step(at_s=832.8122216438574, plan_w=None, load_offset_w=None, pv_w=None),
        ),
        seed=0,
        dead_time_s=5.0,
    )
)
# Found by the lead (hunt seed 202; the code before fails it the same way): an instant inverter in 100 W steps, a
# 5 s meter, self-consumption, load 3500 -> 3676 W at 200 s. The answer to the step went down in refresh writes
# each under the deadband (2535, 2483, 2464, 2451 W); the measure compared its third with the start-up move up
# (2521 W) and counted a "reversal". A step's span is now counted on its own (figures, `_late_turns`).
@example(
    LoopConfig(
        tick_s=1.0,
        battery_poll_s=5.0,
        meter_interval_s=5.0,
        physics_step_s=0.25,
        actuator=ActuatorDynamics(
            delay_s=6.64612333541439e-222,
            ramp_w_per_s=20000.0,
            setpoint_step_w=100.0,
            reading_step_w=0.0,
            noise_w=13.442170839186034,
        ),
        meter=MeterDynamics(window_s=0.0, delay_s=0.03094513275645939, step_w=1.0, noise_w=4.635683012960029),
        max_export_w=185.86419308461947,
        fuse_limit_w=14652.703969456468,
        deadband_w=50.0,
        refresh_s=60.0,
        duration_s=806.0591768610215,
        soc=0.5858459379200672,
        reserve_soc=0.1,
        capacity_wh=20000.0,
        max_power_w=5000.0,
        base_load_w=3500.0,
        pv_w=6077.4597745620995,
        plan_w=None,
        steps=(
            Step(at_s=200.0, plan_w="keep", load_offset_w=3676.2041682094696, pv_w=None),
            Step(at_s=419.7845990845491, plan_w="keep", load_offset_w=5021.542978862906, pv_w=None),
            Step(at_s=716.0591768610215, plan_w="keep", load_offset_w=2407.3061672579624, pv_w=None),
        ),
        seed=38523,
        dead_time_s=5.0,
    )
)
def test_closed_loop_keeps_the_limits_and_settles(cfg: LoopConfig) -> None:
    check_loop(cfg, run_loop(cfg))


@pytest.mark.parametrize(
    ("tick_s", "poll_s", "meter_s"),
    [(5.0, 5.0, 1.0), (5.0, 5.0, 10.0), (10.0, 5.0, 1.0)],
    ids=["tick=poll=5,P1 1s", "tick=poll=5,P1 10s", "example config: tick 10,poll 5,P1 1s"],
)
def test_issue_10_export_limit_with_a_discharge_plan_does_not_oscillate(
    tick_s: float, poll_s: float, meter_s: float
) -> None:
    """The issue's case: PV surplus, max_export_w = 3000, a -2000 W discharge plan that changes every few
    minutes, a hybrid inverter (1.5 s dead time, 3 kW/s) and a DSMR meter; 25 minutes."""
    cfg = issue_10_case(tick_s, poll_s, meter_s)
    trace = run_loop(cfg)
    check_loop(cfg, trace)
    f = figures(cfg, trace, grace_s(cfg))
    assert f.reversals <= 2 * len(cfg.steps), f"{f.reversals} setpoint reversals in 25 minutes"


def _refresh_trace(writes: list[tuple[float, float]], steps: list[float]) -> LoopTrace:
    """A run's writes and steps alone: what `figures` counts reversals on."""
    return LoopTrace(writes=writes, disturbances=[0.0, *steps])


def test_the_first_move_after_a_step_is_its_answer_not_a_reversal() -> None:
    # Hunt seed 202's writes: up to 2521 W at start-up, then a load step at 200 s answered down in refresh writes
    # each under the 50 W deadband; the third is 57 W below the start-up move, 62.5 s after the step.
    cfg = LoopConfig(deadband_w=50.0, duration_s=400.0)
    writes = [(0.0, 0.0), (2.5, 2521.0), (62.5, 2535.0), (202.5, 2483.0), (262.5, 2464.0), (322.5, 2451.0)]
    f = figures(cfg, _refresh_trace(writes, [200.0]), grace_s=26.25)
    assert f.late_reversals == 0
    # The same writes with no step between them are the setpoint turning back on a site that did not change.
    f = figures(cfg, _refresh_trace(writes, []), grace_s=26.25)
    assert f.late_reversals == 1


def test_a_slow_oscillation_made_of_writes_under_the_deadband_is_still_counted() -> None:
    # One 30 W refresh write a minute, down 90 W and back up, three times: no write moves more than the deadband,
    # yet the setpoint swings 90 W either way on a site that does not change.
    cfg = LoopConfig(deadband_w=50.0, duration_s=1200.0)
    path = [2500.0, 2470.0, 2440.0, 2410.0, 2440.0, 2470.0, 2500.0, 2470.0, 2440.0, 2410.0]
    writes = [(0.0, 0.0), *((60.0 * (i + 1), w) for i, w in enumerate(path))]
    f = figures(cfg, _refresh_trace(writes, []), grace_s=26.25)
    assert f.late_reversals == 3  # down at 180 s (60 W under the last move, 2500 W), up at 420 s, down at 540 s
