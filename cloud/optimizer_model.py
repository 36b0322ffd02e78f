"""The optimizer's linear model as sparse numpy arrays, built in a few vectorized steps.

The model is the one in ARCHITECTURE.md ("Optimizer problem"). The two exclusions (no charge+discharge, no
import+export in one slot) need binaries; they are only added for the slots listed in `bin_charge` /
`bin_grid`, so the same builder serves the LP relaxation and every lazily tightened MILP. Those slots use
Balas' disjunctive formulation rather than big-M: big-M's relaxation lets a slot charge and discharge at
half rate each, which is exactly the energy dumping the exclusion forbids, and HiGHS then needed seconds
to close the gap on a week of negative-price middays.

Two deliberate relaxations keep real-world input solvable instead of "infeasible":

* Battery starting outside [soc_min, soc_max]: the SoC bound of slot t is relaxed to what the battery can
  reach by then when moving towards the band at the fastest rate the site allows (charge limited by the
  charger and by pv + max_import - load; discharge by the inverter and by load + max_export). The lower
  bound is `min(soc_min, soc_initial + cumulative fastest charge)`, symmetric for the upper bound, so the
  battery is forced back into the band as fast as physically possible and never allowed to drift further.
  `soc_final_min` is likewise capped at the highest energy reachable by the end of the horizon.
* EV target: a shortfall variable with a large penalty makes an unreachable target "charge as much as
  possible"; the solver then fixes the shortfall and re-optimizes the true cost (see optimizer.py).

An EV whose departure lies beyond the horizon must reach its target by the end of the horizon (the
conservative choice for a rolling planner: the next plan may not have enough slots left).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from cloud.optimizer_io import Problem

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int32]
BoolArray = NDArray[np.bool_]

# Column blocks of length T, in this order; SOC holds the stored energy (kWh) at the END of slot t.
CHARGE, DISCHARGE, IMPORT, EXPORT, PV_USED, EV_CHARGE, ENERGY = range(7)
N_BLOCKS = 7

# A kWh of EV shortfall must cost more than anything the site could gain by not delivering it.
_PENALTY_MARGIN = 100.0


@dataclass(frozen=True)
class SiteData:
    """The problem as float arrays and scalars, with derived bounds computed once per solve."""

    horizon: int
    dt: FloatArray  # each slot's length in hours (Problem.slot_hours)
    import_price: FloatArray
    export_price: FloatArray
    load: FloatArray
    pv: FloatArray
    capacity: float
    energy_initial: float
    max_charge: float
    max_discharge: float
    eff_charge: float
    eff_discharge: float
    cycle_cost: float
    max_import: float
    max_export: float
    energy_lb: FloatArray
    energy_ub: FloatArray
    ev_ub: FloatArray
    ev_eff: float
    ev_need_kwh: float
    ev_room_kwh: float
    has_ev: bool
    demand_price: float
    peak_already: float
    has_demand: bool
    ev_penalty: float
    terminal_value: float = 0.0
    start_s: float = 0.0  # POSIX seconds at the start of slot 0: where a warm start's slots lie in time
    step_s: float = 0.0  # the problem's step in seconds; a slot is `slot_steps` of them
    slot_steps: tuple[int, ...] = ()  # empty: every slot one step


def site_data(problem: Problem) -> SiteData:
    horizon, dt = problem.horizon, np.asarray(problem.slot_hours(), dtype=np.float64)
    bat, grid = problem.battery, problem.grid
    load = np.asarray(problem.load_kw, dtype=np.float64)
    pv = np.asarray(problem.pv_kw, dtype=np.float64)
    ip = np.asarray(problem.import_price, dtype=np.float64)
    ep = np.asarray(problem.export_price, dtype=np.float64)
    lb, ub = energy_bounds(problem, load, pv)

    ev_ub = np.zeros(horizon)
    ev_need = ev_room = 0.0
    ev_eff = 1.0
    if problem.ev is not None:
        ev = problem.ev
        ev_ub[min(ev.arrival_slot, horizon) : min(ev.departure_slot, horizon)] = ev.max_charge_kw
        ev_need = max(0.0, ev.soc_target - ev.soc_initial) * ev.capacity_kwh
        ev_room = max(0.0, 1.0 - ev.soc_initial) * ev.capacity_kwh
        ev_eff = ev.efficiency
    dc = problem.demand_charge
    demand_price = dc.price_per_kw if dc is not None else 0.0
    worst_value = (
        1.0
        + float(np.max(np.abs(ip)))
        + float(np.max(np.abs(ep)))
        + 2.0 * bat.cycle_cost_per_kwh
        + demand_price / float(dt.min())
    )
    penalty = _PENALTY_MARGIN * worst_value / (ev_eff * bat.charge_efficiency * bat.discharge_efficiency)
    return SiteData(
        horizon=horizon,
        dt=dt,
        import_price=ip,
        export_price=ep,
        load=load,
        pv=pv,
        capacity=bat.capacity_kwh,
        energy_initial=bat.soc_initial * bat.capacity_kwh,
        max_charge=bat.max_charge_kw,
        max_discharge=bat.max_discharge_kw,
        eff_charge=bat.charge_efficiency,
        eff_discharge=bat.discharge_efficiency,
        cycle_cost=bat.cycle_cost_per_kwh,
        max_import=grid.max_import_kw,
        max_export=grid.max_export_kw,
        energy_lb=lb,
        energy_ub=ub,
        ev_ub=ev_ub,
        ev_eff=ev_eff,
        ev_need_kwh=ev_need,
        ev_room_kwh=ev_room,
        has_ev=problem.ev is not None,
        demand_price=demand_price,
        peak_already=dc.peak_already_kw if dc is not None else 0.0,
        has_demand=dc is not None and dc.price_per_kw > 0.0,
        ev_penalty=penalty,
        terminal_value=bat.terminal_value_per_kwh,
        start_s=problem.start.timestamp(),
        step_s=problem.step_minutes * 60.0,
        slot_steps=tuple(problem.slot_steps),
    )


def energy_bounds(problem: Problem, load: FloatArray, pv: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Stored-energy bounds (kWh) at the end of each slot, relaxed for an out-of-band start (module doc)."""
    bat, grid, dt = problem.battery, problem.grid, np.asarray(problem.slot_hours(), dtype=np.float64)
    cap, e0 = bat.capacity_kwh, bat.soc_initial * bat.capacity_kwh
    charge_room = np.minimum(bat.max_charge_kw, np.maximum(0.0, pv + grid.max_import_kw - load))
    gain = dt * bat.charge_efficiency * charge_room
    drop = dt / bat.discharge_efficiency * np.minimum(bat.max_discharge_kw, load + grid.max_export_kw)
    lb = np.minimum(bat.soc_min * cap, e0 + np.cumsum(gain))
    dc = problem.demand_charge
    if dc is not None and len(dc.reserve_kwh) == problem.horizon and max(dc.reserve_kwh) > 0.0:
        # A peak-shaving reserve above the minimum, never above the maximum. A battery below it refills it
        # only from PV and import under the level already paid for: a floor reached by charging at full
        # power would itself set the month's new peak.
        floor = np.minimum(bat.soc_max * cap, bat.soc_min * cap + np.asarray(dc.reserve_kwh, dtype=np.float64))
        room = np.minimum(bat.max_charge_kw, np.maximum(0.0, pv + min(dc.peak_already_kw, grid.max_import_kw) - load))
        lb = np.maximum(lb, np.minimum(floor, e0 + np.cumsum(dt * bat.charge_efficiency * room)))
    ub = np.maximum(bat.soc_max * cap, e0 - np.cumsum(drop))
    if bat.soc_final_min is not None:
        reach = e0
        for t in range(problem.horizon):
            reach = min(float(ub[t]), reach + float(gain[t]))
        lb[-1] = max(float(lb[-1]), min(bat.soc_final_min * cap, reach))
    return lb, ub


@dataclass(frozen=True)
class Mode:
    """One way a slot may run: which flows it allows, its weight column (binary) and its flow copies."""

    blocks: tuple[int, ...]
    weight: NDArray[np.int64]
    copies: dict[int, NDArray[np.int64]]


@dataclass(frozen=True)
class Disjunction:
    slots: NDArray[np.int64]
    modes: tuple[Mode, ...]


@dataclass(frozen=True)
class Segment:
    """A run of `length` columns (or rows) of one kind from index `first`: entry j is about slot j of the
    horizon (`per_slot`), or a single entry about the whole horizon."""

    kind: str
    first: int
    length: int
    per_slot: bool = True


@dataclass(frozen=True)
class Layout:
    """Which slot each column and row of an LP is about, and when slot 0 starts.

    Why: a rolling planner's next model starts some slots later and has another horizon, so its matrix is new,
    but its columns and rows are the same kinds about mostly the same slots of time: the warm start
    (cloud/optimizer_warm.py) carries the last optimal basis over by kind and slot time."""

    start_s: float  # POSIX seconds at the start of slot 0
    step_s: float
    cols: tuple[Segment, ...]
    rows: tuple[Segment, ...]
    slot_steps: tuple[int, ...] = ()  # each slot's length in steps; empty: one step each

    def renamed(self, prefix: str, col_offset: int, row_offset: int) -> Layout:
        """This layout as part of a larger model: kinds prefixed, indices moved by the offsets."""
        return replace(
            self,
            cols=tuple(Segment(f"{prefix}{g.kind}", g.first + col_offset, g.length, g.per_slot) for g in self.cols),
            rows=tuple(Segment(f"{prefix}{g.kind}", g.first + row_offset, g.length, g.per_slot) for g in self.rows),
        )


# The column blocks' names in a Layout, by block index.
BLOCK_NAMES = ("charge", "discharge", "import", "export", "pv_used", "ev_charge", "energy")


@dataclass(frozen=True)
class Model:
    """Arrays for `Highs.passModel` (row-wise CSR) plus where the extra columns live."""

    col_cost: FloatArray
    col_lower: FloatArray
    col_upper: FloatArray
    row_lower: FloatArray
    row_upper: FloatArray
    a_start: IntArray
    a_index: IntArray
    a_value: FloatArray
    integrality: IntArray
    peak_col: int | None
    slack_col: int | None
    n_real: int  # columns before those of the disjunctions
    disjunctions: tuple[Disjunction, ...]
    layout: Layout | None = None  # an LP's columns and rows by slot; None for a model with exclusions

    @property
    def is_mip(self) -> bool:
        return bool(self.integrality.any())


class _Columns:
    """Column data appended in blocks; indices are handed out as they are added."""

    def __init__(self, cost: FloatArray, lower: FloatArray, upper: FloatArray) -> None:
        self.parts: list[tuple[FloatArray, FloatArray, FloatArray]] = [(cost, lower, upper)]
        self.count = len(cost)

    def add(self, cost: FloatArray, lower: FloatArray, upper: FloatArray) -> NDArray[np.int64]:
        self.parts.append((cost, lower, upper))
        self.count += len(cost)
        return np.arange(self.count - len(cost), self.count, dtype=np.int64)

    def arrays(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        cost, lower, upper = (np.concatenate(a).astype(np.float64) for a in zip(*self.parts, strict=True))
        return cost, lower, upper


class _Coo:
    """Accumulates constraint rows as coordinate triples, then compresses them once."""

    def __init__(self) -> None:
        self.rows: list[NDArray[np.int64]] = []
        self.cols: list[NDArray[np.int64]] = []
        self.vals: list[FloatArray] = []
        self.lower: list[FloatArray] = []
        self.upper: list[FloatArray] = []
        self.n_rows = 0

    def add_block(
        self,
        n: int,
        entries: list[tuple[NDArray[np.int64], FloatArray]],
        lower: FloatArray,
        upper: FloatArray,
    ) -> None:
        """Add n rows; each entry gives one column index and coefficient per row."""
        row_ids = np.arange(self.n_rows, self.n_rows + n, dtype=np.int64)
        for cols, vals in entries:
            self.rows.append(row_ids)
            self.cols.append(cols)
            self.vals.append(np.broadcast_to(vals, (n,)).astype(np.float64))
        self.lower.append(np.broadcast_to(lower, (n,)).astype(np.float64))
        self.upper.append(np.broadcast_to(upper, (n,)).astype(np.float64))
        self.n_rows += n

    def add_row(self, cols: NDArray[np.int64], vals: FloatArray, lower: float, upper: float) -> None:
        self.rows.append(np.full(len(cols), self.n_rows, dtype=np.int64))
        self.cols.append(cols)
        self.vals.append(vals.astype(np.float64))
        self.lower.append(np.array([lower]))
        self.upper.append(np.array([upper]))
        self.n_rows += 1

    def csr(self) -> tuple[IntArray, IntArray, FloatArray, FloatArray, FloatArray]:
        rows = np.concatenate(self.rows)
        order = np.argsort(rows, kind="stable")
        start = np.searchsorted(rows[order], np.arange(self.n_rows + 1)).astype(np.int32)
        index = np.concatenate(self.cols)[order].astype(np.int32)
        value = np.concatenate(self.vals)[order]
        return start, index, value, np.concatenate(self.lower), np.concatenate(self.upper)


def build_model(d: SiteData, bin_charge: BoolArray, bin_grid: BoolArray, ev_slack_cap: float | None) -> Model:
    """The full model; `ev_slack_cap` set means the EV shortfall is fixed (no penalty) at most that value."""
    T, dt = d.horizon, d.dt
    slots = np.arange(T, dtype=np.int64)

    def col(block: int) -> NDArray[np.int64]:
        return block * T + slots

    cost = np.zeros(N_BLOCKS * T)
    lower = np.zeros(N_BLOCKS * T)
    upper = np.empty(N_BLOCKS * T)
    cost[col(CHARGE)] = dt * d.cycle_cost
    cost[col(DISCHARGE)] = dt * d.cycle_cost
    cost[col(IMPORT)] = dt * d.import_price
    cost[col(EXPORT)] = -dt * d.export_price
    cost[ENERGY * T + T - 1] = -d.terminal_value  # the energy left at the end is worth this much later
    upper[col(CHARGE)] = d.max_charge
    upper[col(DISCHARGE)] = d.max_discharge
    upper[col(IMPORT)] = d.max_import
    upper[col(EXPORT)] = d.max_export
    upper[col(PV_USED)] = d.pv
    upper[col(EV_CHARGE)] = d.ev_ub
    lower[col(ENERGY)] = d.energy_lb
    upper[col(ENERGY)] = d.energy_ub
    columns = _Columns(cost, lower, upper)

    def new_col(c: float, lo: float, hi: float) -> int:
        return int(columns.add(np.array([c]), np.array([lo]), np.array([hi]))[0])

    coo = _Coo()
    one, minus = np.ones(1), -np.ones(1)
    # Balance: pv_used + import + discharge - charge - export - ev = load.
    coo.add_block(
        T,
        [
            (col(PV_USED), one),
            (col(IMPORT), one),
            (col(DISCHARGE), one),
            (col(CHARGE), minus),
            (col(EXPORT), minus),
            (col(EV_CHARGE), minus),
        ],
        d.load,
        d.load,
    )
    # Storage: e[t] - e[t-1] - dt*eta_c*charge + dt/eta_d*discharge = 0 (e[-1] is the initial energy).
    soc_rhs = np.zeros(T)
    soc_rhs[0] = d.energy_initial
    coo.add_block(
        T,
        [
            (col(ENERGY), one),
            (col(CHARGE), -dt * d.eff_charge),
            (col(DISCHARGE), dt / d.eff_discharge),
        ],
        soc_rhs,
        soc_rhs,
    )
    if T > 1:
        # The e[t-1] coefficients of rows 1..T-1 of the storage block (row ids T+1 .. 2T-1).
        coo.rows.append(T + slots[1:])
        coo.cols.append(col(ENERGY)[:-1])
        coo.vals.append(-np.ones(T - 1))

    col_segments = [Segment(name, block * T, T) for block, name in enumerate(BLOCK_NAMES)]
    row_segments = [Segment("balance", 0, T), Segment("storage", T, T)]
    peak_col = None
    if d.has_demand:
        # Only import above the period's peak so far is charged: excess >= import[t] - peak_already.
        peak_col = new_col(d.demand_price, 0.0, np.inf)
        col_segments.append(Segment("peak", peak_col, 1, per_slot=False))
        row_segments.append(Segment("peak", coo.n_rows, T))
        coo.add_block(
            T,
            [(col(IMPORT), one), (np.full(T, peak_col, dtype=np.int64), minus)],
            np.full(T, -np.inf),
            np.full(T, d.peak_already),
        )

    slack_col = None
    window = EV_CHARGE * T + np.flatnonzero(d.ev_ub > 0.0).astype(np.int64)
    ev_coef = d.ev_eff * dt[window - EV_CHARGE * T]
    if d.has_ev and d.ev_need_kwh > 0.0:
        if ev_slack_cap is None:
            slack_col = new_col(d.ev_penalty, 0.0, d.ev_need_kwh)
        else:
            slack_col = new_col(0.0, 0.0, min(ev_slack_cap, d.ev_need_kwh))
        col_segments.append(Segment("ev_slack", slack_col, 1, per_slot=False))
        row_segments.append(Segment("ev_need", coo.n_rows, 1, per_slot=False))
        coo.add_row(np.append(window, slack_col), np.append(ev_coef, 1.0), d.ev_need_kwh, np.inf)
    if d.has_ev and len(window) > 0:
        row_segments.append(Segment("ev_room", coo.n_rows, 1, per_slot=False))
        coo.add_row(window, ev_coef, -np.inf, d.ev_room_kwh)

    n_real = columns.count
    integer_cols: list[NDArray[np.int64]] = []
    groups: list[Disjunction] = []

    def new_cols(n: int, hi: FloatArray) -> NDArray[np.int64]:
        return columns.add(np.zeros(n), np.zeros(n), hi)

    for slots, battery_modes, grid_modes in _disjunction_groups(bin_charge, bin_grid):
        groups.append(_add_disjunction(d, coo, new_cols, slots, battery_modes, grid_modes))
        integer_cols.extend(mode.weight for mode in groups[-1].modes)

    a_start, a_index, a_value, row_lower, row_upper = coo.csr()
    col_cost, col_lower, col_upper = columns.arrays()
    integrality = np.zeros(len(col_cost), dtype=np.int32)
    for cols in integer_cols:
        integrality[cols] = 1
    layout = None
    if not groups:
        layout = Layout(d.start_s, d.step_s, tuple(col_segments), tuple(row_segments), d.slot_steps)
    return Model(
        col_cost=col_cost,
        col_lower=col_lower,
        col_upper=col_upper,
        row_lower=row_lower,
        row_upper=row_upper,
        a_start=a_start,
        a_index=a_index,
        a_value=a_value,
        integrality=integrality,
        peak_col=peak_col,
        slack_col=slack_col,
        n_real=n_real,
        disjunctions=tuple(groups),
        layout=layout,
    )


def with_flows(model: Model, d: SiteData) -> Model:
    """`model` (a plain LP: no EV, no demand charge, no exclusions) re-bounded for site data `d` that differs
    from its own only in load and PV: what `build_model(d, ...)` would give, without building it again.

    Why: the two-stage plan (cloud.optimizer_scenarios) solves three scenarios of one problem that differ only
    in load and PV, and building each model afresh was an eighth of a backtest year's time. Load and PV enter
    in three places only: the balance rows' bounds (the first T rows), the PV columns' upper bounds and the
    stored-energy bounds (`energy_bounds`); the matrix and the costs are the same."""
    if model.disjunctions or model.peak_col is not None or model.slack_col is not None or d.has_ev or d.has_demand:
        raise ValueError("with_flows re-bounds a plain LP only (no EV, demand charge or exclusions)")
    T = d.horizon
    if model.n_real != N_BLOCKS * T or len(model.row_lower) != 2 * T:
        raise ValueError(f"with_flows: the model is not one of horizon {T}")
    col_lower, col_upper = model.col_lower.copy(), model.col_upper.copy()
    row_lower, row_upper = model.row_lower.copy(), model.row_upper.copy()
    col_upper[PV_USED * T : (PV_USED + 1) * T] = d.pv
    col_lower[ENERGY * T : (ENERGY + 1) * T] = d.energy_lb
    col_upper[ENERGY * T : (ENERGY + 1) * T] = d.energy_ub
    row_lower[:T] = d.load
    row_upper[:T] = d.load
    return replace(model, col_lower=col_lower, col_upper=col_upper, row_lower=row_lower, row_upper=row_upper)


_FLOW_BLOCKS = (CHARGE, DISCHARGE, IMPORT, EXPORT, PV_USED, EV_CHARGE)
# Balance-row sign of each flow (supply +, demand -).
_SIGN = {PV_USED: 1.0, IMPORT: 1.0, DISCHARGE: 1.0, CHARGE: -1.0, EXPORT: -1.0, EV_CHARGE: -1.0}


_Group = tuple[NDArray[np.int64], list[tuple[int, ...]], list[tuple[int, ...]]]


def _disjunction_groups(bin_charge: BoolArray, bin_grid: BoolArray) -> list[_Group]:
    """Slots grouped by which exclusions they enforce, with the modes each group's slots choose from."""
    battery_split: list[tuple[int, ...]] = [(CHARGE,), (DISCHARGE,)]
    grid_split: list[tuple[int, ...]] = [(IMPORT,), (EXPORT,)]
    both: list[tuple[int, ...]] = [(CHARGE, DISCHARGE)]
    both_grid: list[tuple[int, ...]] = [(IMPORT, EXPORT)]
    groups: list[_Group] = []
    for battery_on, grid_on in ((True, True), (True, False), (False, True)):
        mask = (bin_charge if battery_on else ~bin_charge) & (bin_grid if grid_on else ~bin_grid)
        slots = np.flatnonzero(mask).astype(np.int64)
        if len(slots):
            groups.append(
                (
                    slots,
                    battery_split if battery_on else both,
                    grid_split if grid_on else both_grid,
                )
            )
    return groups


def _add_disjunction(
    d: SiteData,
    coo: _Coo,
    new_cols: Callable[[int, FloatArray], NDArray[np.int64]],
    slots: NDArray[np.int64],
    battery_modes: list[tuple[int, ...]],
    grid_modes: list[tuple[int, ...]],
) -> Disjunction:
    """Balas' disjunctive formulation of the slot's modes: each mode gets its own copy of the slot's flows,
    scaled by a binary weight, with the slot's balance and bounds. Its LP relaxation is the convex hull of
    the slot's modes, much tighter than big-M, so branch and bound has little left to do."""
    T, n = d.horizon, len(slots)
    upper = {
        CHARGE: np.full(n, d.max_charge),
        DISCHARGE: np.full(n, d.max_discharge),
        IMPORT: np.full(n, d.max_import),
        EXPORT: np.full(n, d.max_export),
        PV_USED: d.pv[slots],
        EV_CHARGE: d.ev_ub[slots],
    }
    one, minus = np.ones(1), -np.ones(1)
    neg_inf, zeros = np.full(n, -np.inf), np.zeros(n)
    modes = []
    for battery in battery_modes:
        for grid in grid_modes:
            blocks = (*battery, *grid, PV_USED, EV_CHARGE)
            weight = new_cols(n, np.ones(n))
            copies = {block: new_cols(n, upper[block]) for block in blocks}
            for block, cols in copies.items():
                coo.add_block(n, [(cols, one), (weight, -upper[block])], neg_inf, zeros)
            balance = [(cols, np.array([_SIGN[block]])) for block, cols in copies.items()]
            coo.add_block(n, [*balance, (weight, -d.load[slots])], zeros, zeros)
            modes.append(Mode(blocks, weight, copies))
    coo.add_block(n, [(mode.weight, one) for mode in modes], np.ones(n), np.ones(n))
    for block in _FLOW_BLOCKS:
        parts = [(mode.copies[block], minus) for mode in modes if block in mode.copies]
        coo.add_block(n, [(block * T + slots, one), *parts], zeros, zeros)
    return Disjunction(slots, tuple(modes))
