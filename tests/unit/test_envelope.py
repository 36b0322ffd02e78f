"""The safety envelope as a property: whatever is asked, no command breaks a limit."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from hypothesis import example, given, settings
from hypothesis import strategies as st

from drivers.config_structs import BatteryLimits
from tests import garbage
from tests.garbage import maybe_bad, ok
from zapd.envelope import SiteLimits, clamp_batteries
from zapd.state import BatteryView, Snapshot

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
TICK_S = 10.0
EPS = 1e-6

power = st.floats(min_value=-50_000, max_value=50_000, allow_nan=False)
soc = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@st.composite
def battery_cases(draw: st.DrawFn, index: int) -> tuple[str, BatteryLimits, BatteryView]:
    reserve = draw(st.floats(min_value=0.0, max_value=0.5))
    der_id = f"b{index}"
    env = BatteryLimits(
        capacity_wh=draw(st.floats(min_value=1_000, max_value=100_000)),
        max_charge_w=draw(st.floats(min_value=0, max_value=20_000)),
        max_discharge_w=draw(st.floats(min_value=0, max_value=20_000)),
        reserve_soc=reserve,
        max_soc=draw(st.floats(min_value=reserve + 0.05, max_value=1.0)),
    )
    known = draw(st.booleans()) or draw(st.booleans())
    assert env.max_discharge_w is not None and env.max_charge_w is not None
    view = BatteryView(
        der_id,
        draw(soc) if known else None,
        draw(st.floats(min_value=-env.max_discharge_w, max_value=env.max_charge_w)) if known else None,
    )
    return der_id, env, view


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[float, Snapshot, dict[str, BatteryLimits], SiteLimits]:
    n = draw(st.integers(min_value=1, max_value=3))
    cases = [draw(battery_cases(i)) for i in range(n)]
    fuse_a = draw(st.floats(min_value=6, max_value=80))
    phases = draw(st.sampled_from([1, 3]))
    site = SiteLimits(
        fuse_limit_w=fuse_a * 230 * phases,
        fuse_a=fuse_a,
        voltage_v=230,
        phases=phases,
        max_export_w=draw(st.none() | st.floats(min_value=0, max_value=30_000)),
    )
    grid = draw(st.none() | power)
    phase_currents = None
    if grid is not None and draw(st.booleans()):
        phase_currents = tuple(draw(st.floats(min_value=-100, max_value=100)) for _ in range(phases))
    snapshot = Snapshot(NOW, grid, phase_currents, None, {k: v for k, _, v in cases})
    return draw(power), snapshot, {k: e for k, e, _ in cases}, site


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_no_setpoint_breaks_a_limit(case: tuple[float, Snapshot, dict[str, BatteryLimits], SiteLimits]) -> None:
    requested, snapshot, batteries, site = case
    setpoints = {s.der_id: s for s in clamp_batteries(requested, snapshot, batteries, site, TICK_S)}
    assert set(setpoints) == set(batteries)
    hours = TICK_S / 3600
    battery_now = sum(v.power_w or 0.0 for v in snapshot.batteries.values())
    for der_id, b in batteries.items():
        p = setpoints[der_id].power_w
        view = snapshot.batteries[der_id]
        # Device limits.
        assert -b.max_discharge_w - EPS <= p <= b.max_charge_w + EPS
        if view.soc is None or view.power_w is None:
            assert p == 0.0  # unknown battery: hold, never the last setpoint
            continue
        # Reserve: the energy one tick removes never takes the battery below the reserve.
        if p < 0:
            assert view.soc - (-p) * hours / b.capacity_wh >= b.reserve_soc - EPS
        if p > 0:
            assert view.soc + p * hours / b.capacity_wh <= b.max_soc + EPS
    total = sum(s.power_w for s in setpoints.values())
    if snapshot.grid_w is None:
        assert total <= EPS  # no charging on an unknown meter
    elif total > EPS:
        # Charging never pushes the site over its fuse, in total or on the worst phase.
        base = snapshot.grid_w - battery_now
        assert base + total <= site.fuse_limit_w + 1e-3
        if snapshot.phase_currents_a:
            worst = max(snapshot.phase_currents_a) - battery_now / (site.voltage_v * site.phases)
            assert worst + total / (site.voltage_v * site.phases) <= site.fuse_a + 1e-6


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_request_inside_limits_passes_unchanged(
    case: tuple[float, Snapshot, dict[str, BatteryLimits], SiteLimits],
) -> None:
    _, snapshot, batteries, site = case
    site = SiteLimits(1e9, 1e9, 230, 3, None)  # no site limit binds
    known = all(v.soc is not None and v.power_w is not None for v in snapshot.batteries.values())
    setpoints = clamp_batteries(0.0, snapshot, batteries, site, TICK_S)
    assert all(s.power_w == 0.0 for s in setpoints)
    if known and snapshot.grid_w is not None:
        assert all(s.clamped_reason == "" for s in setpoints)


def test_fuse_overload_forces_discharge_within_reserve() -> None:
    b = BatteryLimits(capacity_wh=10_000, max_charge_w=5_000, max_discharge_w=5_000, reserve_soc=0.1)
    snap = Snapshot(NOW, 20_000.0, None, None, {"b0": BatteryView("b0", 0.5, 0.0)})
    site = SiteLimits(fuse_limit_w=17_250, fuse_a=25, voltage_v=230, phases=3, max_export_w=None)
    (sp,) = clamp_batteries(3_000, snap, {"b0": b}, site, TICK_S)
    assert sp.power_w == -2_750  # discharge so the site is back at the fuse limit
    assert "fuse" in sp.clamped_reason


def test_split_by_headroom() -> None:
    big = BatteryLimits(capacity_wh=20_000, max_charge_w=6_000, max_discharge_w=6_000, reserve_soc=0.1)
    small = BatteryLimits(capacity_wh=5_000, max_charge_w=2_000, max_discharge_w=2_000, reserve_soc=0.1)
    snap = Snapshot(
        NOW, 0.0, None, None, {"big": BatteryView("big", 0.5, 0.0), "small": BatteryView("small", 0.5, 0.0)}
    )
    site = SiteLimits(1e9, 1e9, 230, 3, None)
    out = {s.der_id: s.power_w for s in clamp_batteries(4_000, snap, {"big": big, "small": small}, site, TICK_S)}
    assert out["big"] == 3_000 and out["small"] == 1_000


def test_plan_grid_limits_only_tighten() -> None:
    from zapd.controller import limits_for
    from zapd.model import Intent

    site = SiteLimits(fuse_limit_w=17_250, fuse_a=25, voltage_v=230, phases=3, max_export_w=10_000)
    tight = limits_for(site, Intent(battery_w=0.0, grid_import_limit_w=3_000, grid_export_limit_w=2_000))
    assert tight.fuse_limit_w == 3_000 and tight.max_export_w == 2_000
    loose = limits_for(site, Intent(battery_w=0.0, grid_import_limit_w=99_000, grid_export_limit_w=50_000))
    assert loose == site
    # An import cap from a demand-response slot makes the battery cover load above it.
    b = BatteryLimits(capacity_wh=10_000, max_charge_w=5_000, max_discharge_w=5_000, reserve_soc=0.1)
    snap = Snapshot(NOW, 4_000.0, None, None, {"b0": BatteryView("b0", 0.5, 0.0)})
    (sp,) = clamp_batteries(0.0, snap, {"b0": b}, tight, TICK_S)
    assert sp.power_w == -1_000


# --- any input may be garbage: NaN, ±Inf, absurd magnitudes (issue 10 item 2) ---------------------


@st.composite
def garbage_scenarios(draw: st.DrawFn) -> tuple[float, Snapshot, dict[str, BatteryLimits], SiteLimits, float]:
    n = draw(st.integers(min_value=1, max_value=3))
    batteries, views = {}, {}
    for i in range(n):
        reserve = draw(maybe_bad(st.floats(min_value=0.0, max_value=0.5)))
        # A struct is not checked when built in code: what a nameplate or a bug could hand the envelope.
        der_id = f"b{i}"
        env = BatteryLimits(
            capacity_wh=draw(maybe_bad(st.floats(min_value=1_000, max_value=100_000))),
            max_charge_w=draw(maybe_bad(st.floats(min_value=0, max_value=20_000))),
            max_discharge_w=draw(maybe_bad(st.floats(min_value=0, max_value=20_000))),
            reserve_soc=reserve,
            max_soc=draw(maybe_bad(st.floats(min_value=0.55, max_value=1.0))),
        )
        batteries[der_id] = env
        views[der_id] = BatteryView(der_id, draw(st.none() | maybe_bad(soc)), draw(st.none() | maybe_bad(power)))
    fuse_a = draw(maybe_bad(st.floats(min_value=6, max_value=80)))
    phases = draw(st.sampled_from([1, 3]))
    site = SiteLimits(
        fuse_limit_w=draw(maybe_bad(st.just(fuse_a * 230 * phases))),
        fuse_a=fuse_a,
        voltage_v=draw(maybe_bad(st.just(230.0))),
        phases=phases,
        max_export_w=draw(st.none() | maybe_bad(st.floats(min_value=0, max_value=30_000))),
    )
    grid = draw(st.none() | maybe_bad(power))
    phase_currents = None
    if draw(st.booleans()):
        phase_currents = tuple(draw(maybe_bad(st.floats(min_value=-100, max_value=100))) for _ in range(phases))
    snapshot = Snapshot(NOW, grid, phase_currents, None, views)
    tick = draw(maybe_bad(st.just(TICK_S)))
    return draw(maybe_bad(power)), snapshot, batteries, site, tick


@settings(max_examples=600, deadline=None)
@given(garbage_scenarios())
@example(  # a request of +Inf on a site 1 W over its fuse: the battery discharges that watt (found by this test)
    (
        math.inf,
        Snapshot(NOW, 1_381.0, None, None, {"b0": BatteryView("b0", 1.0, 0.0)}),
        {"b0": BatteryLimits(capacity_wh=1_000.0, max_charge_w=0.0, max_discharge_w=1.0, reserve_soc=0.0)},
        SiteLimits(fuse_limit_w=1_380.0, fuse_a=6.0, voltage_v=230.0, phases=1, max_export_w=None),
        10.0,
    )
)
def test_non_finite_input_is_unknown_and_safe(
    case: tuple[float, Snapshot, dict[str, BatteryLimits], SiteLimits, float],
) -> None:
    requested, snapshot, batteries, site, tick = case
    setpoints = {s.der_id: s for s in clamp_batteries(requested, snapshot, batteries, site, tick)}
    assert set(setpoints) == set(batteries)
    assert all(math.isfinite(s.power_w) for s in setpoints.values())
    counted = []  # batteries the envelope may move: every number about them is plausible
    for der_id, b in batteries.items():
        p = setpoints[der_id].power_w
        view = snapshot.batteries[der_id]
        sane = (
            ok(view.soc, 0, 1)
            and ok(view.power_w, -1e7, 1e7)
            and ok(b.capacity_wh, 0, math.inf)
            and ok(b.max_charge_w, 0, 1e7)
            and ok(b.max_discharge_w, 0, 1e7)
            and ok(b.reserve_soc, 0, 1)
            and ok(b.max_soc, 0, 1)
        )
        if not sane or not math.isfinite(tick):
            assert p == 0.0, (b, view, requested, tick)  # unknown: hold, never a full charge or discharge
            continue
        # A request that is not a number asks for nothing (`asked` below is 0): the battery holds, except
        # where the site's own limits need it (over the fuse: discharge; over the export limit: charge),
        # which the assertions below bound as for any request.
        counted.append(der_id)
        assert -b.max_discharge_w - EPS <= p <= b.max_charge_w + EPS
        assert view.soc is not None
        hours = max(tick, 1.0) / 3600
        if p < 0:
            assert view.soc - (-p) * hours / b.capacity_wh >= b.reserve_soc - EPS
        if p > 0:
            assert view.soc + p * hours / b.capacity_wh <= b.max_soc + EPS
    total = sum(s.power_w for s in setpoints.values())
    phases = snapshot.phase_currents_a
    meter_known = garbage.meter_known(snapshot, site)
    asked = requested if math.isfinite(requested) else 0.0
    if not meter_known:
        # No charging on a meter that is not a number, and never more discharge than asked.
        assert min(asked, 0.0) - EPS <= total <= EPS
        return
    assert snapshot.grid_w is not None
    battery_now = sum(snapshot.batteries[k].power_w or 0.0 for k in counted)
    base = snapshot.grid_w - battery_now
    per_phase = site.voltage_v * site.phases
    if total > EPS:
        assert base + total <= site.fuse_limit_w + 1e-3
        if phases:
            worst = max(phases) - battery_now / per_phase
            assert worst + total / per_phase <= site.fuse_a + 1e-6
    if total < -EPS and total < asked - EPS:
        # Discharge beyond the request only to bring an overloaded site back under its fuse.
        over_phase = phases is not None and (max(phases) - battery_now / per_phase) > site.fuse_a
        assert base > site.fuse_limit_w or over_phase
    export = site.max_export_w
    if export is not None and total < -EPS:
        limit = export if ok(export, 0, math.inf) else 0.0  # not a number: the strictest limit
        fuse_forced = base > site.fuse_limit_w or (
            phases is not None and (max(phases) - battery_now / per_phase) > site.fuse_a
        )
        assert base + total >= -limit - 1e-3 or fuse_forced


def test_inf_grid_reading_commands_nothing() -> None:
    """The attack of issue 10: a grid W of +Inf commanded a full discharge labelled "fuse limit"."""
    b = BatteryLimits(capacity_wh=10_000, max_charge_w=5_000, max_discharge_w=5_000, reserve_soc=0.1)
    site = SiteLimits(fuse_limit_w=17_250, fuse_a=25, voltage_v=230, phases=3, max_export_w=3_000)
    for grid, currents in ((math.inf, None), (-math.inf, None), (math.nan, None), (200.0, (math.inf, 1.0, 1.0))):
        snap = Snapshot(NOW, grid, currents, None, {"b0": BatteryView("b0", 0.5, 0.0)})
        for requested in (0.0, 2_000.0):
            (sp,) = clamp_batteries(requested, snap, {"b0": b}, site, TICK_S)
            assert sp.power_w == 0.0, (grid, currents, requested, sp)
            assert "fuse" not in sp.clamped_reason


def test_nan_request_holds() -> None:
    b = BatteryLimits(capacity_wh=10_000, max_charge_w=5_000, max_discharge_w=5_000, reserve_soc=0.1)
    snap = Snapshot(NOW, 200.0, None, None, {"b0": BatteryView("b0", 0.5, 0.0)})
    site = SiteLimits(fuse_limit_w=17_250, fuse_a=25, voltage_v=230, phases=3, max_export_w=3_000)
    for requested in (math.nan, math.inf, -math.inf):
        (sp,) = clamp_batteries(requested, snap, {"b0": b}, site, TICK_S)
        assert sp.power_w == 0.0 and "not a number" in sp.clamped_reason
