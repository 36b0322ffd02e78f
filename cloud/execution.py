"""How a plan slot is executed at the edge: the intent the cloud sends for one optimizer slot.

Kept apart from cloud/planner.py (which needs the database and web stack) so that the backtest and its CLI can
build exactly the intents the planner sends without importing the server.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from cloud.optimizer_io import Problem, Solution
from zapd.model import Absorb, Intent, IntentMode


class Execution(StrEnum):
    """How a plan's slots tell the edge to treat forecast errors (measured by `zapcloud backtest`).

    SETPOINT: self-consumption where the plan exchanges nothing with the grid, else a battery setpoint (the
    grid takes every error). GRID_TARGET: the battery keeps the grid at the plan in every slot (takes every
    error). DIRECTIONAL: the battery takes an error only in the direction the plan's own choice in that slot
    says is worth it (`absorb_for`); the rest goes to the grid. VALUE: every slot carries the planned grid power
    and the battery takes an error in each direction where the plan's marginal value of stored energy says a
    kWh through the battery beats the same kWh through the grid at this slot's prices (`value_absorb`).
    KEEP_SIGN (the default): the grid takes an error up to zero exchange, the battery the part that would turn
    a planned import into export or a planned export into import (`keep_sign_absorb`); COVER and KEEP_IMPORT
    are its measured halves (docs/cloud-planning.md, fifth pass).
    """

    SETPOINT = "setpoint"
    GRID_TARGET = "grid_target"
    DIRECTIONAL = "directional"
    VALUE = "value"
    SETPOINT_VALUE = "setpoint_value"  # SETPOINT's self-consumption slots, VALUE's absorb in the others
    SURPLUS = "surplus"  # SETPOINT, but a slot charging from PV surplus only charges from the real surplus
    COVER = "cover"  # SURPLUS, and a slot discharging while it imports discharges into the real deficit only
    KEEP_IMPORT = "keep_import"  # SURPLUS, and no error makes a slot that plans an import export (UP at grid 0)
    KEEP_SIGN = "keep_sign"  # no error turns a planned import into export or a planned export into import


DEFAULT_EXECUTION: Final = Execution.KEEP_SIGN


# A slot whose planned grid exchange is below this only balances the house with the battery.
SELF_CONSUMPTION_MAX_GRID_KW: Final = 0.05


def slot_mode(import_kw: float, export_kw: float) -> IntentMode:
    """How the edge should execute a slot.

    Where the plan only balances the house (no planned grid exchange), the slot is SELF_CONSUMPTION: the
    edge's own rule then covers the real load and PV, so forecast errors are absorbed by the battery instead
    of the grid. Where the plan trades with the grid on purpose (charging at cheap hours, holding energy for
    a dearer one, exporting into a price peak) the slot is a SETPOINT. In the backtest this raised the
    capture ratio from about 0.6 (setpoints everywhere) to about 0.9.
    """
    if import_kw + export_kw < SELF_CONSUMPTION_MAX_GRID_KW:
        return IntentMode.SELF_CONSUMPTION
    return IntentMode.SETPOINT


# Below this (kW) the battery counts as idle in a plan slot.
IDLE_BATTERY_KW: Final = 0.05


def absorb_for(import_kw: float, export_kw: float, battery_kw: float) -> Absorb | None:
    """Which errors the battery should take in a slot, read from what the plan does there.

    * discharging: the plan values energy in the battery below this slot's price, so more demand is also
      covered from it, and less demand leaves the energy in it for later (BOTH);
    * charging while importing: energy is cheap now, so extra demand is bought (not taken from the charge),
      while surplus the plan did not expect is stored on top (UP);
    * charging while exporting (the surplus is larger than the charge): UP as well: more surplus goes into the
      battery, less surplus first lowers the export (the plan charges because it needs the energy later; the
      export was only what the forecast said would not fit);
    * idle while importing or exporting: the plan keeps the stored energy for a dearer slot (or the battery is
      at a limit), so the grid takes the error (None: a plain setpoint).
    """
    if battery_kw < -IDLE_BATTERY_KW:
        return Absorb.BOTH
    if battery_kw > IDLE_BATTERY_KW:
        return Absorb.UP
    return None


# Where the plan charges or discharges at a partial rate its value equals the slot's price: a tie, taken as worth it.
VALUE_TIE_EUR: Final = 1e-4
# Below this (kW) a slot's planned grid exchange counts as none.
GRID_IDLE_KW: Final = 0.01


def either(a: Absorb | None, b: Absorb | None) -> Absorb | None:
    """The errors taken by a or b."""
    if a is None or a is b:
        return b
    if b is None:
        return a
    return Absorb.BOTH


def value_absorb(
    grid_kw: float,
    import_price: float,
    export_price: float,
    stored_value: float,
    charge_efficiency: float,
    discharge_efficiency: float,
    cycle_cost: float,
) -> Absorb | None:
    """Which errors the battery should take in a slot, from the plan's value of stored energy (EUR/kWh).

    A kWh of error left to the grid is worth the grid's marginal price at the planned operating point: the
    import price while the plan imports (less demand imports less, more demand imports more), the export
    price while it exports, and at zero exchange the export price for surplus and the import price for
    demand. Surplus is stored when a kWh in the battery (after charging losses and wear) is worth more than
    that; demand is covered from the battery when the kWh taken out (its value grossed up by the discharge
    loss, plus wear) costs less. Both: BOTH; neither: None, the grid takes the error.
    """
    planned_import = grid_kw > GRID_IDLE_KW
    planned_export = grid_kw < -GRID_IDLE_KW
    surplus_price = import_price if planned_import else export_price
    demand_price = export_price if planned_export else import_price
    store = stored_value * charge_efficiency - cycle_cost > surplus_price - VALUE_TIE_EUR
    cover = stored_value / discharge_efficiency + cycle_cost < demand_price + VALUE_TIE_EUR
    if store and cover:
        return Absorb.BOTH
    if store:
        return Absorb.UP
    if cover:
        return Absorb.DOWN
    return None


def plan_values(solution: Solution, problem: Problem, n: int) -> list[Absorb | None]:
    """`value_absorb` for the first `n` slots of a solved problem (its own prices, battery and values); all
    None when the solution carries no energy values (then VALUE execution falls back to the plan's direction)."""
    values = solution.energy_value
    if values is None:
        return [None] * n
    bat = problem.battery
    found = [
        value_absorb(
            solution.grid_import_kw[j] - solution.grid_export_kw[j],
            problem.import_price[j],
            problem.export_price[j],
            values[j],
            bat.charge_efficiency,
            bat.discharge_efficiency,
            bat.cycle_cost_per_kwh,
        )
        for j in range(min(n, len(values)))
    ]
    return found + [None] * (n - len(found))


def surplus_charge(import_kw: float, charge_kw: float) -> bool:
    """True where the plan charges the battery from forecast PV surplus alone (it plans no import).

    Executed as a fixed setpoint, such a slot buys from the grid whatever surplus the forecast promised and
    the sky did not deliver (the Konstanz diagnosis in docs/cloud-planning.md: ~2.9 kW planned from 3.1 kW
    forecast, 1.4 kW real). Execution.SURPLUS sends it as the planned charge with grid_w = 0 and Absorb.DOWN:
    the edge lowers the charge as soon as the site would import (`fallback.policy.absorbed_w`), while a
    surplus above the forecast is still exported as planned. Existing Intent fields only: no edge change.
    """
    return charge_kw > IDLE_BATTERY_KW and import_kw < GRID_IDLE_KW


def deficit_discharge(import_kw: float, export_kw: float, discharge_kw: float) -> bool:
    """True where the plan discharges to cover part of the forecast demand and imports the rest (no export).

    The mirror of `surplus_charge`. Executed as a fixed setpoint, such a slot exports the planned discharge
    whenever the house needs less than the forecast, although the plan meant that energy for the house (an
    export the plan did not choose, at the export price, of energy it valued at least at the import price).
    Execution.COVER sends it as the planned discharge with grid_w = 0 and Absorb.UP: the edge lowers the
    discharge as soon as the site would export (`fallback.policy.absorbed_w`) and leaves the rest in the
    battery, while a demand above the forecast is imported as planned.
    """
    return discharge_kw > IDLE_BATTERY_KW and import_kw > GRID_IDLE_KW and export_kw < GRID_IDLE_KW


def keep_sign_absorb(import_kw: float, export_kw: float) -> Absorb:
    """The error the battery takes so that the site keeps the sign of its planned grid exchange (grid_w = 0).

    A slot that plans an import sends its surplus errors past zero to the battery (UP): the plan imports
    there, so it values a stored kWh at least at the import price less the losses (it would discharge
    otherwise), well above the export price that kWh would fetch. A slot that plans an export covers an
    unplanned import from the battery (DOWN): the plan sells there, so it values a stored kWh at most at the
    export price plus losses (it would charge otherwise), well below the import price. Errors that only move
    the planned exchange (less import, more export and so on) stay on the grid at the price the plan traded at.
    """
    return Absorb.UP if import_kw >= export_kw else Absorb.DOWN


def slot_intent(
    import_kw: float,
    export_kw: float,
    charge_kw: float,
    discharge_kw: float,
    execution: Execution = DEFAULT_EXECUTION,
    value: Absorb | None = None,
    **limits: float | None,
) -> Intent:
    """The edge intent for one plan slot (battery part); `limits` are passed to the Intent unchanged.

    `value` is `value_absorb` for this slot; only Execution.VALUE and SETPOINT_VALUE use it."""
    battery_kw = charge_kw - discharge_kw
    battery_w = round(battery_kw * 1000.0, 1)
    grid_w = round((import_kw - export_kw) * 1000.0, 1)
    if execution is Execution.VALUE:
        absorb = either(value, absorb_for(import_kw, export_kw, battery_kw))
        return Intent(
            mode=IntentMode.SETPOINT,
            battery_w=battery_w,
            grid_w=grid_w if absorb is not None else None,
            absorb=absorb,
            **limits,
        )
    if slot_mode(import_kw, export_kw) is IntentMode.SELF_CONSUMPTION:
        return Intent(mode=IntentMode.SELF_CONSUMPTION, battery_w=battery_w, **limits)  # type: ignore[arg-type]
    if execution is Execution.KEEP_SIGN:
        absorb = keep_sign_absorb(import_kw, export_kw)
        return Intent(mode=IntentMode.SETPOINT, battery_w=battery_w, grid_w=0.0, absorb=absorb, **limits)
    capped = execution in (Execution.SURPLUS, Execution.COVER, Execution.KEEP_IMPORT)
    if capped and surplus_charge(import_kw, charge_kw):
        return Intent(mode=IntentMode.SETPOINT, battery_w=battery_w, grid_w=0.0, absorb=Absorb.DOWN, **limits)
    if execution is Execution.COVER and deficit_discharge(import_kw, export_kw, discharge_kw):
        return Intent(mode=IntentMode.SETPOINT, battery_w=battery_w, grid_w=0.0, absorb=Absorb.UP, **limits)
    if execution is Execution.KEEP_IMPORT and import_kw > GRID_IDLE_KW and export_kw < GRID_IDLE_KW:
        return Intent(mode=IntentMode.SETPOINT, battery_w=battery_w, grid_w=0.0, absorb=Absorb.UP, **limits)
    if execution is Execution.SETPOINT or capped:
        absorb = None
    elif execution is Execution.SETPOINT_VALUE:
        absorb = either(value, absorb_for(import_kw, export_kw, battery_kw))
    elif execution is Execution.GRID_TARGET:
        absorb = Absorb.BOTH
    else:
        absorb = absorb_for(import_kw, export_kw, battery_kw)
    return Intent(
        mode=IntentMode.SETPOINT,
        battery_w=battery_w,
        grid_w=grid_w if absorb is not None else None,
        absorb=absorb,
        **limits,
    )


__all__ = [
    "DEFAULT_EXECUTION",
    "IDLE_BATTERY_KW",
    "SELF_CONSUMPTION_MAX_GRID_KW",
    "Execution",
    "absorb_for",
    "deficit_discharge",
    "keep_sign_absorb",
    "plan_values",
    "slot_intent",
    "slot_mode",
    "surplus_charge",
    "value_absorb",
]
