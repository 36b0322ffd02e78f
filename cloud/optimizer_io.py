"""The optimizer's wire format (ARCHITECTURE.md, "Optimizer problem"): typed structs and their validation.

Kept apart from the solver so that callers (HTTP API, backtest, edge-side tooling) can decode, validate and
encode problems and solutions without importing HiGHS. Every input problem becomes either a valid `Problem`
or a `ProblemError` whose message names the field, so bad input never surfaces as a traceback.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Literal

import msgspec

NonNeg = Annotated[float, msgspec.Meta(ge=0.0)]
Positive = Annotated[float, msgspec.Meta(gt=0.0)]
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Efficiency = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
SlotIndex = Annotated[int, msgspec.Meta(ge=0)]
# A slot spans at most a day of steps (cloud.plan_grid: the far hours of a sub-hourly plan, one slot an hour).
SlotSteps = Annotated[int, msgspec.Meta(ge=1, le=1440)]

Status = Literal["optimal", "infeasible", "error"]


class ProblemError(ValueError):
    """Input that does not describe a solvable-in-principle problem; the message names the field."""


class Battery(msgspec.Struct, frozen=True):
    capacity_kwh: Positive
    soc_initial: Fraction
    soc_min: Fraction
    soc_max: Fraction
    max_charge_kw: NonNeg
    max_discharge_kw: NonNeg
    charge_efficiency: Efficiency
    discharge_efficiency: Efficiency
    cycle_cost_per_kwh: NonNeg
    soc_final_min: Fraction | None = None
    # EUR per kWh still stored at the end of the horizon: what the plan may count on it being worth later
    # (cloud.forecast_price.terminal_value); 0 values leftover energy at nothing (the horizon is all there is).
    terminal_value_per_kwh: Annotated[float, msgspec.Meta(ge=0.0, le=100.0)] = 0.0


class Grid(msgspec.Struct, frozen=True):
    max_import_kw: NonNeg
    max_export_kw: NonNeg


class DemandCharge(msgspec.Struct, frozen=True):
    """`peak_already_kw` is the billing period's peak so far (or its target, cloud/peak_limit.py): only import
    above it costs anything more. `reserve_kwh` (empty, or one per slot): battery energy above `soc_min` the
    plan keeps at the end of each slot, so the edge can discharge against a load the forecast did not see and
    hold the peak (a battery below it refills it only under `peak_already_kw`, cloud/optimizer_model.py)."""

    price_per_kw: NonNeg
    peak_already_kw: NonNeg = 0.0
    reserve_kwh: list[NonNeg] = msgspec.field(default_factory=list)


class Ev(msgspec.Struct, frozen=True):
    capacity_kwh: Positive
    soc_initial: Fraction
    soc_target: Fraction
    arrival_slot: SlotIndex
    departure_slot: SlotIndex
    max_charge_kw: NonNeg
    efficiency: Efficiency


class Problem(msgspec.Struct, frozen=True):
    start: datetime
    step_minutes: Positive
    import_price: list[float]
    export_price: list[float]
    load_kw: list[NonNeg]
    pv_kw: list[NonNeg]
    battery: Battery
    grid: Grid
    demand_charge: DemandCharge | None = None
    ev: Ev | None = None
    # Each slot's length in steps (empty: every slot is one step). Why: a sub-hourly plan's far hours need no
    # quarter-hour decisions (they are planned again before they come), and one slot per hour there cuts the
    # LP by about three (cloud/plan_grid.py). Every array stays one entry per slot, in kW and EUR/kWh.
    slot_steps: list[SlotSteps] = msgspec.field(default_factory=list)

    @property
    def horizon(self) -> int:
        return len(self.import_price)

    @property
    def dt_hours(self) -> float:
        """The step in hours: every slot's length where `slot_steps` is empty (`slot_hours` in general)."""
        return self.step_minutes / 60.0

    def slot_hours(self) -> list[float]:
        """Each slot's length in hours."""
        if not self.slot_steps:
            return [self.dt_hours] * self.horizon
        return [self.dt_hours * n for n in self.slot_steps]


class Solution(msgspec.Struct, frozen=True):
    """`cost` is the contract cost recomputed from the arrays (never a solver objective with penalties)."""

    status: Status
    cost: float | None
    solve_ms: float
    battery_charge_kw: list[float]
    battery_discharge_kw: list[float]
    grid_import_kw: list[float]
    grid_export_kw: list[float]
    pv_used_kw: list[float]
    ev_charge_kw: list[float]
    soc: list[float]
    ev_target_unreachable: bool = False
    message: str | None = None
    # EUR/kWh: what one more kWh put into the battery during each slot is worth to the plan (the LP's
    # storage duals). The edge compares it with the slot's prices to decide where a forecast error goes.
    energy_value: list[float] | None = None


def error_solution(status: Status, message: str, solve_ms: float = 0.0) -> Solution:
    return Solution(
        status=status,
        cost=None,
        solve_ms=solve_ms,
        battery_charge_kw=[],
        battery_discharge_kw=[],
        grid_import_kw=[],
        grid_export_kw=[],
        pv_used_kw=[],
        ev_charge_kw=[],
        soc=[],
        message=message,
    )


_decoder = msgspec.json.Decoder(Problem)
_encoder = msgspec.json.Encoder()


def decode_problem(data: bytes | str) -> Problem:
    """Decode and validate; msgspec's messages already carry the JSON path (e.g. `$.battery.soc_min`)."""
    try:
        problem = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ProblemError(str(exc)) from None
    validate_problem(problem)
    return problem


def validate_problem(problem: Problem) -> None:
    """Cross-field rules that a per-field schema cannot express."""
    horizon = problem.horizon
    if horizon == 0:
        raise ProblemError("import_price: must have at least one slot")
    for name in ("import_price", "export_price", "load_kw", "pv_kw"):
        values: list[float] = getattr(problem, name)
        if len(values) != horizon:
            raise ProblemError(f"{name}: length {len(values)} != T={horizon} (the length of import_price)")
        if not all(math.isfinite(v) for v in values):
            raise ProblemError(f"{name}: values must be finite numbers")
    reserve = problem.demand_charge.reserve_kwh if problem.demand_charge is not None else []
    if reserve and len(reserve) != horizon:
        raise ProblemError(f"demand_charge.reserve_kwh: length {len(reserve)} != T={horizon} (or empty)")
    if not all(math.isfinite(r) and r >= 0.0 for r in reserve):
        raise ProblemError("demand_charge.reserve_kwh: must be finite numbers >= 0")
    if problem.slot_steps:
        if len(problem.slot_steps) != horizon:
            raise ProblemError(f"slot_steps: length {len(problem.slot_steps)} != T={horizon} (or empty)")
        if problem.step_minutes * max(problem.slot_steps) > 1440.0:
            raise ProblemError("slot_steps: a slot may span at most a day (step_minutes x slot_steps <= 1440)")
    if problem.start.tzinfo is None:
        raise ProblemError("start: must be an RFC 3339 timestamp with a UTC offset")
    bat = problem.battery
    if bat.soc_min > bat.soc_max:
        raise ProblemError(f"battery.soc_min ({bat.soc_min}) > battery.soc_max ({bat.soc_max})")
    if bat.soc_final_min is not None and bat.soc_final_min > bat.soc_max:
        raise ProblemError(f"battery.soc_final_min ({bat.soc_final_min}) > battery.soc_max ({bat.soc_max})")
    ev = problem.ev
    if ev is not None and ev.departure_slot < ev.arrival_slot:
        raise ProblemError(f"ev.departure_slot ({ev.departure_slot}) < ev.arrival_slot ({ev.arrival_slot})")
    for path, value in _all_floats(problem):
        if not math.isfinite(value):
            raise ProblemError(f"{path}: must be a finite number")


def _all_floats(problem: Problem) -> list[tuple[str, float]]:
    found: list[tuple[str, float]] = [("step_minutes", problem.step_minutes)]
    for prefix, struct in (
        ("battery", problem.battery),
        ("grid", problem.grid),
        ("demand_charge", problem.demand_charge),
        ("ev", problem.ev),
    ):
        if struct is None:
            continue
        for field in struct.__struct_fields__:
            value = getattr(struct, field)
            if isinstance(value, float):
                found.append((f"{prefix}.{field}", value))
    return found


def encode_solution(solution: Solution) -> bytes:
    return _encoder.encode(solution)
