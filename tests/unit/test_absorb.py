"""Setpoints that absorb forecast errors (Intent.grid_w + Intent.absorb): the edge rule and its safety.

Worked examples by hand: a plan slot discharging 2 kW to import 0.5 kW while the house was forecast at 2.5 kW.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.execution import Execution, absorb_for, plan_values, slot_intent, value_absorb
from cloud.optimizer import solve
from cloud.optimizer_io import Battery, Grid, Problem
from cloud_sync.wire import check_plan, decode_plan, encode_plan
from drivers.config_structs import BatteryLimits
from fallback.policy import resolve_battery_w
from zapd.controller import decide_batteries
from zapd.envelope import SiteLimits
from zapd.model import Absorb, Intent, IntentMode, Plan, PlanSlot
from zapd.state import BatteryView, Snapshot

T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)


def snap(house_w: float, battery_now_w: float = -2000.0, soc: float = 0.5) -> Snapshot:
    """The meter shows the house (load - PV) plus what the battery does now."""
    return Snapshot(T0, house_w + battery_now_w, None, None, {"b": BatteryView("b", soc, battery_now_w)})


SETPOINT = Intent(mode=IntentMode.SETPOINT, battery_w=-2000.0, grid_w=500.0)


@pytest.mark.parametrize(
    ("absorb", "house_w", "expected"),
    [
        (None, 3500.0, -2000.0),  # plain setpoint: 1 kW more demand goes to the grid
        (Absorb.BOTH, 3500.0, -3000.0),  # the battery covers it
        (Absorb.DOWN, 3500.0, -3000.0),
        (Absorb.UP, 3500.0, -2000.0),  # UP takes only surplus: the grid covers the extra demand
        (Absorb.BOTH, 1500.0, -1000.0),  # 1 kW less demand: discharge less, keep the energy
        (Absorb.UP, 1500.0, -1000.0),
        (Absorb.DOWN, 1500.0, -2000.0),  # DOWN takes only demand: the grid imports 1 kW less
        (Absorb.BOTH, 2500.0, -2000.0),  # the forecast was right: the setpoint stands
    ],
)
def test_error_goes_where_the_plan_says(absorb: Absorb | None, house_w: float, expected: float) -> None:
    intent = msgspec.structs.replace(SETPOINT, absorb=absorb)
    assert resolve_battery_w(intent, snap(house_w)) == pytest.approx(expected)


def test_without_grid_w_or_state_it_is_a_plain_setpoint() -> None:
    assert resolve_battery_w(Intent(battery_w=-2000.0, absorb=Absorb.BOTH), snap(3500.0)) == -2000.0
    unknown = Snapshot(T0, None, None, None, {"b": BatteryView("b", 0.5, -2000.0)})
    assert resolve_battery_w(msgspec.structs.replace(SETPOINT, absorb=Absorb.BOTH), unknown) == -2000.0
    nan = msgspec.structs.replace(SETPOINT, absorb=Absorb.BOTH, grid_w=math.nan)
    assert resolve_battery_w(nan, snap(3500.0)) == -2000.0


def test_absorb_follows_the_plans_own_choice() -> None:
    assert absorb_for(import_kw=0.5, export_kw=0.0, battery_kw=-2.0) is Absorb.BOTH  # discharging
    assert absorb_for(import_kw=3.0, export_kw=0.0, battery_kw=2.0) is Absorb.UP  # charging from the grid
    assert absorb_for(import_kw=0.0, export_kw=1.0, battery_kw=2.0) is Absorb.UP  # charging, surplus exported
    assert absorb_for(import_kw=1.0, export_kw=0.0, battery_kw=0.0) is None  # holding energy for later
    assert absorb_for(import_kw=0.0, export_kw=2.0, battery_kw=0.0) is None


def test_slot_intent_per_execution() -> None:
    legacy = slot_intent(0.5, 0.0, 0.0, 2.0, Execution.SETPOINT)
    assert legacy.mode is IntentMode.SETPOINT and legacy.absorb is None and legacy.grid_w is None
    target = slot_intent(0.5, 0.0, 0.0, 2.0, Execution.GRID_TARGET)
    assert target.absorb is Absorb.BOTH and target.grid_w == 500.0 and target.battery_w == -2000.0
    assert slot_intent(1.0, 0.0, 0.0, 0.0, Execution.DIRECTIONAL).absorb is None
    balance = slot_intent(0.0, 0.0, 0.0, 1.0, Execution.SETPOINT)  # no grid exchange planned
    assert balance.mode is IntentMode.SELF_CONSUMPTION
    # SETPOINT_VALUE: self-consumption where nothing is exchanged, the value's absorb where the plan trades
    assert slot_intent(0.0, 0.0, 0.0, 1.0, Execution.SETPOINT_VALUE, None).mode is IntentMode.SELF_CONSUMPTION
    held = slot_intent(1.0, 0.0, 0.0, 0.0, Execution.SETPOINT_VALUE, Absorb.UP)
    assert held.mode is IntentMode.SETPOINT and held.absorb is Absorb.UP and held.grid_w == 1000.0


class OldIntent(msgspec.Struct, frozen=True, kw_only=True):
    """What edges from before grid_w/absorb decode (their Intent had no such fields)."""

    mode: IntentMode = IntentMode.SETPOINT
    battery_w: float | None = None


class OldSlot(msgspec.Struct, frozen=True, kw_only=True):
    start: datetime
    end: datetime
    intent: OldIntent


class OldPlan(msgspec.Struct, frozen=True, kw_only=True):
    site_id: str
    version: int
    issued_at: datetime
    valid_until: datetime
    slots: tuple[OldSlot, ...] = ()


def test_wire_carries_the_new_fields_and_old_edges_ignore_them() -> None:
    slot = PlanSlot(
        start=T0, end=T0 + timedelta(minutes=15), intent=msgspec.structs.replace(SETPOINT, absorb=Absorb.UP)
    )
    plan = Plan(site_id="s", version=2, issued_at=T0, valid_until=T0 + timedelta(hours=1), slots=(slot,))
    body = encode_plan(plan)
    assert decode_plan(body).slots[0].intent.absorb is Absorb.UP

    old = msgspec.json.decode(body, type=OldPlan)
    assert old.slots[0].intent.battery_w == -2000.0  # it executes the setpoint it was always given


def test_wire_refuses_a_grid_w_no_site_can_act_on() -> None:
    bad = PlanSlot(start=T0, end=T0 + timedelta(minutes=15), intent=Intent(battery_w=0.0, grid_w=1e12))
    plan = Plan(site_id="s", version=2, issued_at=T0, valid_until=T0 + timedelta(hours=1), slots=(bad,))
    with pytest.raises(ValueError, match="grid_w"):
        check_plan(plan)


finite = st.floats(min_value=-50_000, max_value=50_000, allow_nan=False)


@settings(max_examples=400, deadline=None)
@given(
    battery_w=st.one_of(finite, st.just(math.nan), st.just(math.inf)),
    grid_w=st.one_of(finite, st.just(math.nan), st.just(-math.inf)),
    absorb=st.sampled_from([None, *Absorb]),
    house_w=finite,
    now_w=st.floats(min_value=-5000, max_value=5000),
    soc=st.floats(min_value=0.0, max_value=1.0),
)
def test_no_absorbing_intent_breaks_a_limit(
    battery_w: float, grid_w: float, absorb: Absorb | None, house_w: float, now_w: float, soc: float
) -> None:
    """Whatever the plan's numbers and the house do, the envelope's limits hold (reserve, max SoC, power, fuse)."""
    env = BatteryLimits(capacity_wh=10_000, max_charge_w=5000, max_discharge_w=5000, reserve_soc=0.1, max_soc=0.95)
    site = SiteLimits(fuse_limit_w=17_000, fuse_a=25, voltage_v=230, phases=3, max_export_w=10_000)
    intent = Intent(mode=IntentMode.SETPOINT, battery_w=battery_w, grid_w=grid_w, absorb=absorb)
    plan = Plan(
        site_id="s",
        version=1,
        issued_at=T0,
        valid_until=T0 + timedelta(hours=1),
        slots=(PlanSlot(start=T0, end=T0 + timedelta(hours=1), intent=intent),),
    )
    snapshot = Snapshot(T0, house_w + now_w, None, None, {"b": BatteryView("b", soc, now_w)})
    _, (sp,) = decide_batteries(T0 + timedelta(seconds=1), snapshot, plan, True, site, {"b": env}, 1800.0)
    hours = 0.5
    assert -5000 - 1e-6 <= sp.power_w <= 5000 + 1e-6
    assert soc + max(sp.power_w, 0) * hours / 10_000 <= max(0.95, soc) + 1e-9  # never charged past max SoC
    assert soc - max(-sp.power_w, 0) * hours / 10_000 >= min(0.1, soc) - 1e-9  # never below the reserve
    if sp.power_w > 0:
        assert house_w + sp.power_w <= 17_000 + 1e-6  # charging never pushes the site over its fuse


# Value-based execution (Execution.VALUE): hand-worked prices, 95 % each way, 0.02 EUR/kWh wear.
# Storing a kWh of surplus is worth value * 0.95 - 0.02; covering a kWh of demand from the battery costs
# value / 0.95 + 0.02. The grid's price for an error is the import price while the plan imports, the export
# price while it exports, and at zero exchange export for surplus and import for demand.
@pytest.mark.parametrize(
    ("grid_kw", "import_price", "export_price", "value", "expected"),
    [
        (0.0, 0.30, 0.05, 0.25, Absorb.BOTH),  # 0.2175 > 0.05 stores; 0.283 < 0.30 covers
        (1.0, 0.30, 0.05, 0.25, Absorb.DOWN),  # importing: less demand saves 0.30 on the grid > 0.2175
        (-1.0, 0.30, 0.05, 0.25, Absorb.UP),  # exporting: more demand only exports less (0.05 < 0.283)
        (1.0, 0.20, 0.05, 0.30, Absorb.UP),  # energy kept for later (0.336 > 0.20), surplus stored (0.265 > 0.20)
        (1.0, 0.30, 0.05, 0.30, None),  # 0.265 < 0.30 and 0.336 > 0.30: the grid takes it
        (-1.0, 0.30, 0.40, 0.30, Absorb.DOWN),  # exporting into a peak: more demand from the battery (0.336 < 0.40)
    ],
)
def test_value_absorb_worked_examples(
    grid_kw: float, import_price: float, export_price: float, value: float, expected: Absorb | None
) -> None:
    assert value_absorb(grid_kw, import_price, export_price, value, 0.95, 0.95, 0.02) is expected


def test_value_execution_carries_grid_w_and_keeps_the_plans_own_direction() -> None:
    # discharging 2 kW, importing 0.5 kW: the plan's own choice (BOTH) stands even where the value only says UP
    intent = slot_intent(0.5, 0.0, 0.0, 2.0, Execution.VALUE, Absorb.UP)
    assert intent.mode is IntentMode.SETPOINT and intent.absorb is Absorb.BOTH and intent.grid_w == 500.0
    held = slot_intent(1.0, 0.0, 0.0, 0.0, Execution.VALUE, None)  # holding, nothing worth absorbing
    assert held.absorb is None and held.grid_w is None and held.battery_w == 0.0
    assert slot_intent(1.0, 0.0, 0.0, 0.0, Execution.VALUE, Absorb.UP).absorb is Absorb.UP
    check_plan(
        Plan(
            site_id="s",
            version=1,
            issued_at=T0,
            valid_until=T0 + timedelta(hours=1),
            slots=(PlanSlot(start=T0, end=T0 + timedelta(hours=1), intent=intent),),
        )
    )


def test_plan_values_reads_the_solved_problems_own_prices_and_values() -> None:
    """Evening peak after a cheap night: the plan charges at 0.10 and discharges into 0.40. In the peak hour
    the battery covers a surprise (BOTH or DOWN); without energy values every slot falls back to None."""
    problem = Problem(
        start=T0,
        step_minutes=60.0,
        import_price=[0.10, 0.40, 0.40],
        export_price=[0.02, 0.02, 0.02],
        load_kw=[0.5, 2.0, 2.0],
        pv_kw=[0.0, 0.0, 0.0],
        battery=Battery(
            capacity_kwh=10.0,
            soc_initial=0.1,
            soc_min=0.1,
            soc_max=0.9,
            max_charge_kw=5.0,
            max_discharge_kw=5.0,
            charge_efficiency=0.95,
            discharge_efficiency=0.95,
            cycle_cost_per_kwh=0.02,
        ),
        grid=Grid(max_import_kw=17.0, max_export_kw=10.0),
    )
    s = solve(problem)
    values = plan_values(s, problem, 3)
    assert s.energy_value is not None and len(values) == 3
    assert values == [
        value_absorb(
            s.grid_import_kw[j] - s.grid_export_kw[j],
            problem.import_price[j],
            problem.export_price[j],
            s.energy_value[j],
            0.95,
            0.95,
            0.02,
        )
        for j in range(3)
    ]
    assert values[1] in (Absorb.BOTH, Absorb.DOWN)
    assert plan_values(msgspec.structs.replace(s, energy_value=None), problem, 3) == [None, None, None]


def test_surplus_charge_slot_charges_from_the_real_surplus_only() -> None:
    """Execution.SURPLUS, the Konstanz case by hand: the plan charges 2.9 kW from a forecast surplus of 3.1 kW
    (0.2 kW export) and the surplus comes in at 1.4 kW. A plain setpoint buys the 1.5 kW gap; the surplus
    intent charges 1.4 kW and imports nothing. A larger surplus than forecast is exported as planned."""
    intent = slot_intent(0.0, 0.2, 2.9, 0.0, Execution.SURPLUS)
    assert intent.mode is IntentMode.SETPOINT and intent.battery_w == 2900.0
    assert intent.grid_w == 0.0 and intent.absorb is Absorb.DOWN
    assert resolve_battery_w(intent, snap(-1400.0, battery_now_w=2900.0)) == pytest.approx(1400.0)
    assert resolve_battery_w(intent, snap(-3100.0, battery_now_w=2900.0)) == pytest.approx(2900.0)
    assert resolve_battery_w(intent, snap(-5000.0, battery_now_w=2900.0)) == pytest.approx(2900.0)
    plain = slot_intent(0.0, 0.2, 2.9, 0.0, Execution.SETPOINT)
    assert resolve_battery_w(plain, snap(-1400.0, battery_now_w=2900.0)) == 2900.0  # 1.5 kW bought
    # grid charging and discharge keep their setpoint; balancing slots stay self-consumption
    grid_charge = slot_intent(2.0, 0.0, 3.0, 0.0, Execution.SURPLUS)
    assert grid_charge.absorb is None and grid_charge.grid_w is None and grid_charge.battery_w == 3000.0
    discharge = slot_intent(0.0, 1.0, 0.0, 2.0, Execution.SURPLUS)
    assert discharge.absorb is None and discharge.battery_w == -2000.0
    assert slot_intent(0.0, 0.0, 1.0, 0.0, Execution.SURPLUS).mode is IntentMode.SELF_CONSUMPTION


def test_cover_discharge_slot_discharges_into_the_real_deficit_only() -> None:
    """Execution.COVER by hand: the plan discharges 2 kW into a forecast house of 2.5 kW and imports 0.5 kW.
    With the house at 1.5 kW a plain setpoint exports 0.5 kW of the stored energy; the cover intent discharges
    1.5 kW and keeps the rest. A house at 2.0 kW imports nothing; one at 3.5 kW imports the extra 1 kW as planned
    (the battery's energy was planned for this slot's deficit, not for more)."""
    intent = slot_intent(0.5, 0.0, 0.0, 2.0, Execution.COVER)
    assert intent.mode is IntentMode.SETPOINT and intent.battery_w == -2000.0
    assert intent.grid_w == 0.0 and intent.absorb is Absorb.UP
    assert resolve_battery_w(intent, snap(1500.0)) == pytest.approx(-1500.0)
    assert resolve_battery_w(intent, snap(2000.0)) == pytest.approx(-2000.0)
    assert resolve_battery_w(intent, snap(3500.0)) == pytest.approx(-2000.0)
    plain = slot_intent(0.5, 0.0, 0.0, 2.0, Execution.SURPLUS)
    assert plain.absorb is None and resolve_battery_w(plain, snap(1500.0)) == -2000.0  # 0.5 kW exported
    # discharge with planned export keeps its setpoint; surplus charging is capped as in SURPLUS
    export = slot_intent(0.0, 1.0, 0.0, 2.0, Execution.COVER)
    assert export.absorb is None and export.grid_w is None and export.battery_w == -2000.0
    surplus = slot_intent(0.0, 0.2, 2.9, 0.0, Execution.COVER)
    assert surplus.absorb is Absorb.DOWN and surplus.grid_w == 0.0
    assert slot_intent(0.0, 0.0, 0.0, 1.0, Execution.COVER).mode is IntentMode.SELF_CONSUMPTION
    held = slot_intent(1.0, 0.0, 0.0, 0.0, Execution.COVER)  # idle while importing: a plain setpoint
    assert held.absorb is None and held.battery_w == 0.0


@pytest.mark.parametrize(
    ("flows", "absorb", "battery_now_w", "house_w", "expected"),
    [
        # idle, importing 1 kW: 0.5 kW of surplus the forecast missed is stored, not exported at the export price
        ((1.0, 0.0, 0.0, 0.0), Absorb.UP, 0.0, -500.0, 500.0),
        ((1.0, 0.0, 0.0, 0.0), Absorb.UP, 0.0, 500.0, 0.0),  # less demand only imports less
        # idle, exporting 2 kW: 0.5 kW of demand past zero is covered from the battery, not bought
        ((0.0, 2.0, 0.0, 0.0), Absorb.DOWN, 0.0, 500.0, -500.0),
        ((0.0, 2.0, 0.0, 0.0), Absorb.DOWN, 0.0, -1000.0, 0.0),  # less surplus only exports less
        # discharging 2 kW, exporting 1 kW: a house at 3 kW takes 3 kW from the battery, none from the grid
        ((0.0, 1.0, 0.0, 2.0), Absorb.DOWN, -2000.0, 3000.0, -3000.0),
        # charging 3 kW, importing 2 kW: a surplus of 4 kW (forecast: 1 kW load) is charged, not exported
        ((2.0, 0.0, 3.0, 0.0), Absorb.UP, 3000.0, -4000.0, 4000.0),
    ],
)
def test_keep_sign_slot_never_crosses_zero_against_the_plan(
    flows: tuple[float, float, float, float], absorb: Absorb, battery_now_w: float, house_w: float, expected: float
) -> None:
    """Execution.KEEP_SIGN by hand: the grid takes an error up to zero, the battery the part past zero."""
    intent = slot_intent(*flows, Execution.KEEP_SIGN)
    assert intent.mode is IntentMode.SETPOINT and intent.grid_w == 0.0 and intent.absorb is absorb
    assert resolve_battery_w(intent, snap(house_w, battery_now_w=battery_now_w)) == pytest.approx(expected)
    plain = slot_intent(*flows, Execution.SETPOINT)
    assert resolve_battery_w(plain, snap(house_w, battery_now_w=battery_now_w)) == plain.battery_w


def test_keep_import_caps_importing_slots_only() -> None:
    """Execution.KEEP_IMPORT: every slot that plans an import is sent UP at grid 0 (idle, charging or
    discharging), surplus-charge slots as in SURPLUS, slots that export with the battery idle or discharging
    keep their plain setpoint, balancing slots stay self-consumption."""
    for flows in ((1.0, 0.0, 0.0, 0.0), (2.0, 0.0, 3.0, 0.0), (0.5, 0.0, 0.0, 2.0)):
        intent = slot_intent(*flows, Execution.KEEP_IMPORT)
        assert intent.grid_w == 0.0 and intent.absorb is Absorb.UP, flows
    assert slot_intent(0.0, 0.2, 2.9, 0.0, Execution.KEEP_IMPORT).absorb is Absorb.DOWN
    for flows in ((0.0, 2.0, 0.0, 0.0), (0.0, 1.0, 0.0, 2.0)):
        intent = slot_intent(*flows, Execution.KEEP_IMPORT)
        assert intent.absorb is None and intent.grid_w is None, flows
    assert slot_intent(0.0, 0.0, 0.0, 1.0, Execution.KEEP_IMPORT).mode is IntentMode.SELF_CONSUMPTION
    assert slot_intent(0.0, 0.0, 0.0, 1.0, Execution.KEEP_SIGN).mode is IntentMode.SELF_CONSUMPTION


def test_the_default_execution_keeps_the_sign_of_the_planned_exchange() -> None:
    """The planner and the backtest send KEEP_SIGN by default (measured on all six backtest years, see
    docs/cloud-planning.md "Fifth pass"): a discharge slot that imports is capped at the real deficit, an idle
    slot that exports covers an unplanned import from the battery."""
    from cloud.backtest_config import Config
    from cloud.planner import PlannerOptions

    assert Config().execution is Execution.KEEP_SIGN and PlannerOptions().execution is Execution.KEEP_SIGN
    intent = slot_intent(0.5, 0.0, 0.0, 2.0)
    assert intent.grid_w == 0.0 and intent.absorb is Absorb.UP
    assert resolve_battery_w(intent, snap(1500.0)) == pytest.approx(-1500.0)
    idle_export = slot_intent(0.0, 2.0, 0.0, 0.0)
    assert resolve_battery_w(idle_export, snap(500.0, battery_now_w=0.0)) == pytest.approx(-500.0)
