"""Exact site optimizer: the MILP of ARCHITECTURE.md ("Optimizer problem"), solved with HiGHS.

Why it is fast and still exact: the LP relaxation (exclusions dropped) is solved first. Its optimum is a
lower bound on the MILP optimum, so if its solution already respects both exclusions it IS the MILP
optimum. Simultaneous flows that cost nothing to remove (import and export in a slot where exporting
does not pay more than importing costs; charge and discharge whose net effect can be matched with less
throughput and the surplus curtailed) are netted out without raising the cost.

Only when a real violation remains (negative prices make dumping energy pay) does the MILP come in:
1. a repair dive forbids the weaker flow of each violating slot and re-solves the LP; if that plan's cost
   meets the relaxation's bound it is optimal and we are done;
2. otherwise the violating slots (and every slot where importing is paid or exporting beats importing)
   get binaries in a disjunctive formulation (optimizer_model.py) and HiGHS solves the MILP from the
   dive's plan with a 1e-7 relative gap. A solution of this partial MILP that respects every exclusion
   is optimal for the full MILP, for the same relaxation argument; slots still violating are added and
   after a few rounds every slot gets its binaries, so the loop always ends with the exact answer.

An EV target that cannot be met is handled lexicographically: a heavily penalized shortfall first finds
how much can be delivered, then the shortfall is capped at that amount and the true cost re-optimized,
so the reported plan is the cheapest among those that charge the EV as much as possible.

A solve that hits the time limit returns status "error" with a message; if a plan meeting every
constraint is known by then, its arrays and cost come with it (usable, just not proven optimal).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import highspy
import msgspec
import numpy as np
from highspy._core import _Highs
from numpy.typing import NDArray

from cloud.optimizer_io import Problem, ProblemError, Solution, Status, decode_problem, error_solution
from cloud.optimizer_model import (
    CHARGE,
    DISCHARGE,
    ENERGY,
    EV_CHARGE,
    EXPORT,
    IMPORT,
    N_BLOCKS,
    PV_USED,
    BoolArray,
    FloatArray,
    IntArray,
    Model,
    SiteData,
    build_model,
    site_data,
)
from cloud.optimizer_warm import KeptBasis, shifted_basis

__all__ = ["WarmStart", "WarmStats", "energy_value", "recompute_cost", "solve", "solve_json"]

# Flows below this (kW) count as zero when checking the exclusions; HiGHS' feasibility tolerance is 1e-7.
EXCLUSION_TOL = 1e-7
# Shortfalls below this (kWh) are solver noise, not an unreachable target.
EV_SHORTFALL_TOL = 1e-6
MIP_REL_GAP = 1e-7
DEFAULT_TIME_LIMIT_S = 10.0
# LPs with at most this many rows are solved without presolve (see _run).
SMALL_LP_ROWS = 2000
# Lazy rounds before every slot gets its binaries.
_LAZY_ROUNDS = 3
# LP re-solves the exclusion-repair heuristic may spend.
_DIVE_STEPS = 6
_SEARCH_OPTIONS_OFF = (
    "mip_allow_restart",
    "mip_heuristic_run_rins",
    "mip_heuristic_run_rens",
    "mip_heuristic_run_root_reduced_cost",
    "mip_heuristic_run_feasibility_jump",
)
_INFEASIBLE = "no plan satisfies the constraints (load beyond the grid, PV and battery limits?)"


def recompute_cost(problem: Problem, solution: Solution) -> float:
    """The contract cost from the solution's arrays alone, so reported and audited costs cannot diverge."""
    imp = np.asarray(solution.grid_import_kw, dtype=np.float64)
    exp = np.asarray(solution.grid_export_kw, dtype=np.float64)
    throughput = np.asarray(solution.battery_charge_kw) + np.asarray(solution.battery_discharge_kw)
    if problem.slot_steps:  # slots of several steps: each slot's energy at its own length
        dt_slot = np.asarray(problem.slot_hours(), dtype=np.float64)
        energy = float(np.dot(dt_slot * np.asarray(problem.import_price), imp)) - float(
            np.dot(dt_slot * np.asarray(problem.export_price), exp)
        )
        cycling = problem.battery.cycle_cost_per_kwh * float(np.dot(dt_slot, throughput))
    else:
        dt = problem.dt_hours
        energy = dt * (float(np.dot(problem.import_price, imp)) - float(np.dot(problem.export_price, exp)))
        cycling = problem.battery.cycle_cost_per_kwh * dt * float(np.sum(throughput))
    demand = 0.0
    if problem.demand_charge is not None and len(imp) > 0:
        dc = problem.demand_charge
        demand = dc.price_per_kw * max(0.0, float(np.max(imp)) - dc.peak_already_kw)
    return energy + cycling + demand


def solve_json(data: bytes | str, *, time_limit_s: float = DEFAULT_TIME_LIMIT_S) -> Solution:
    """Entry point for untrusted JSON: bad input becomes status "error" with a message, never a traceback."""
    started = time.perf_counter()
    try:
        problem = decode_problem(data)
    except ProblemError as exc:
        return error_solution("error", str(exc), _ms_since(started))
    return solve(problem, time_limit_s=time_limit_s)


@dataclass
class WarmStats:
    """How a WarmStart's LPs started, for the backtest's figures: `same` matrix (bounds and costs changed in
    place), `shifted` (the last basis moved in time, cloud.optimizer_warm), `cold` (nothing to start from, or a
    model that does not line up with the last), `refused` (HiGHS did not take the shifted basis: cold);
    `iterations` the simplex iterations of all of them."""

    same: int = 0
    shifted: int = 0
    cold: int = 0
    refused: int = 0
    iterations: int = 0


class WarmStart:
    """One HiGHS start kept across the LPs of a rolling planner's re-plans.

    Consecutive re-plans differ in prices, forecasts and the initial energy, and (the backtest's and the day-ahead
    market's usual case) in the horizon, which shrinks by the executed slots until the next prices arrive. With
    the same matrix the costs and bounds are changed in place and the simplex restarts from the previous optimal
    basis (about a third of a cold solve's time, same objectives to 1e-15); with another matrix the last
    optimal basis is carried over by slot time (cloud.optimizer_warm.shifted_basis) into a fresh instance. Only
    the first LP relaxation of a solve uses it; the repair dive and MILP rounds are built cold as before.
    """

    def __init__(self) -> None:
        self._highs: _Highs | None = None
        self._matrix: tuple[IntArray, IntArray, FloatArray] | None = None
        self._kept: KeptBasis | None = None
        self._small_lp = False  # whether self._highs holds an LP solved with the small LPs' options
        self.stats = WarmStats()

    def highs(self, model: Model) -> _Highs:
        """The instance loaded with `model`: updated in place when the matrix is the last one's, else a new
        one started from the last optimal basis moved to this model's slots where it lines up."""
        matrix = (model.a_start, model.a_index, model.a_value)
        if self._highs is not None and self._same_matrix(matrix) and self._highs.getNumCol() == len(model.col_cost):
            h = self._highs
            n, m = len(model.col_cost), len(model.row_lower)
            cols, rows = np.arange(n, dtype=np.int32), np.arange(m, dtype=np.int32)
            h.changeColsCost(n, cols, model.col_cost)
            h.changeColsBounds(n, cols, model.col_lower, model.col_upper)
            h.changeRowsBounds(m, rows, model.row_lower, model.row_upper)  # type: ignore[attr-defined]  # not in the stub
            self.stats.same += 1
            return h
        small_lp = not model.is_mip and len(model.row_lower) <= SMALL_LP_ROWS
        if self._highs is not None and small_lp and self._small_lp:
            h = self._highs  # the same options: a new model replaces the last one and its basis (5 % of a year)
            _pass(h, model)
        else:
            h = _new_highs(model)
        self._small_lp = small_lp
        statuses = shifted_basis(self._kept, model) if self._kept is not None else None
        if statuses is None:
            self.stats.cold += 1
        elif h.setBasis(_highs_basis(*statuses)) == highspy.HighsStatus.kOk:
            self.stats.shifted += 1
        else:
            self.stats.refused += 1
            h = _new_highs(model)
        self._highs = h
        self._matrix = matrix
        return h

    def keep(self, model: Model, h: _Highs, col_value: FloatArray) -> None:
        """After an optimal LP on `h`: its basis, for the next model that does not share the matrix."""
        status, basic = h.getBasicVariables()  # type: ignore[attr-defined]  # not in the stub
        self._kept = KeptBasis.of(model, basic, col_value) if status == highspy.HighsStatus.kOk else None

    def _same_matrix(self, matrix: tuple[IntArray, IntArray, FloatArray]) -> bool:
        if self._matrix is None:
            return False
        start, index, value = self._matrix
        return (
            start.shape == matrix[0].shape
            and index.shape == matrix[1].shape
            and value.shape == matrix[2].shape
            and np.array_equal(start, matrix[0])
            and np.array_equal(index, matrix[1])
            and np.array_equal(value, matrix[2])
        )


# HiGHS' status enums by value, as an object array: indexing it by a status array is one numpy call
_STATUSES = np.array([highspy.HighsBasisStatus(i) for i in range(5)], dtype=object)


def _highs_basis(col_status: NDArray[np.int8], row_status: NDArray[np.int8]) -> highspy.HighsBasis:
    """HiGHS' basis from status arrays; `alien` (its default): HiGHS factors it and repairs a singular part."""
    basis = highspy.HighsBasis()
    basis.alien = True
    basis.col_status = _STATUSES[col_status].tolist()
    basis.row_status = _STATUSES[row_status].tolist()
    return basis


def solve(problem: Problem, *, time_limit_s: float = DEFAULT_TIME_LIMIT_S, warm: WarmStart | None = None) -> Solution:
    """The optimal plan; `warm` (a rolling planner's) re-uses the last solve's basis for the first LP."""
    started = time.perf_counter()
    deadline = started + time_limit_s
    d = site_data(problem)
    T = d.horizon
    bin_charge = np.zeros(T, dtype=np.bool_)
    bin_grid = np.zeros(T, dtype=np.bool_)
    slack_cap: float | None = None
    incumbent: _Plan | None = None  # best plan known to meet every exclusion, a MIP start
    rounds = 0
    value: FloatArray | None = None  # the stored energy's marginal value, from the first (LP) relaxation
    while True:
        model = build_model(d, bin_charge, bin_grid, slack_cap)
        first = warm if value is None and not model.is_mip else None
        outcome = _run(model, deadline, _mip_start(d, model, incumbent), first)
        if value is None and outcome.row_dual is not None:
            value = energy_value(outcome.row_dual, T)
        if outcome.status != "optimal" or outcome.x is None:
            best = _plan(d, outcome.x, outcome.objective) if outcome.x is not None else incumbent
            if best is not None and not any(v.any() for v in _violations(best.flows)):
                return _solution(problem, d, best.flows, slack_cap is not None, started, outcome.message, value)
            return error_solution(outcome.status, outcome.message, _ms_since(started))
        plan = _plan(d, outcome.x, outcome.objective)
        bad_charge, bad_grid = _violations(plan.flows)
        # A slot that already has binaries can only show integrality-tolerance noise; _tidy removes it.
        bad_charge &= ~bin_charge
        bad_grid &= ~bin_grid
        if bad_charge.any() or bad_grid.any():
            dived = _dive(d, plan, slack_cap, deadline)
            if dived is not None and (incumbent is None or dived.objective < incumbent.objective):
                incumbent = dived
            if dived is None or dived.objective > outcome.bound + _gap(outcome.bound):
                rounds += 1
                bin_charge |= bad_charge
                bin_grid |= bad_grid
                if rounds == 1:
                    # Wasting energy (battery) or round-tripping it (grid) only pays where importing does
                    # or where exporting pays more than importing costs: give all such slots binaries now
                    # rather than discovering them one MILP at a time.
                    bin_charge |= (d.import_price < 0.0) & bad_charge.any() & (d.max_charge > 0.0)
                    bin_grid |= (d.export_price > d.import_price) & bad_grid.any() & (d.max_import > 0.0)
                if rounds >= _LAZY_ROUNDS:
                    bin_charge[:] = d.max_charge > 0 and d.max_discharge > 0
                    bin_grid[:] = d.max_import > 0 and d.max_export > 0
                continue
            plan = dived  # meets every exclusion and the relaxation's bound: optimal
        if slack_cap is None and plan.shortfall(model) > EV_SHORTFALL_TOL:
            # This plan meets every exclusion, so its shortfall is the least possible: keep it, and
            # now minimize the real cost.
            slack_cap = plan.shortfall(model) * (1.0 + 1e-9) + 1e-9
            incumbent = plan
            continue
        return _solution(problem, d, plan.flows, slack_cap is not None, started, value=value)


def energy_value(row_dual: FloatArray, horizon: int) -> FloatArray:
    """EUR one more kWh put into the battery during each slot would save over the horizon.

    The storage rows (horizon .. 2*horizon-1, `e[t] - e[t-1] - ... = rhs`) have duals d cost / d rhs; raising
    row t's right-hand side by one adds a kWh during slot t (it may replace that slot's discharge), so the
    value is minus the dual: what a forecast error absorbed in slot t is worth. Where binaries were needed
    this is the relaxation's value: a price signal, not a promise.
    """
    return np.asarray(-row_dual[horizon : 2 * horizon], dtype=np.float64)


def _gap(bound: float) -> float:
    return MIP_REL_GAP * max(1.0, abs(bound))


@dataclass(frozen=True)
class _Plan:
    """A solver solution: the raw column values and the flows after cost-free netting."""

    x: FloatArray
    flows: FloatArray
    objective: float

    def shortfall(self, model: Model) -> float:
        return float(self.x[model.slack_col]) if model.slack_col is not None else 0.0


def _plan(d: SiteData, x: FloatArray, objective: float) -> _Plan:
    flows = x[: N_BLOCKS * d.horizon].reshape(N_BLOCKS, d.horizon).copy()
    _net_grid(d, flows)
    _net_battery(d, flows)
    return _Plan(x, flows, objective)


def _dive(d: SiteData, plan: _Plan, slack_cap: float | None, deadline: float) -> _Plan | None:
    """Find a plan that meets every exclusion: forbid the weaker of the two flows wherever both run and
    re-solve the LP. Cheap, and on real profiles usually optimal, which the relaxation's bound proves."""
    T = d.horizon
    forbid = np.zeros((N_BLOCKS, T), dtype=np.bool_)
    for _ in range(_DIVE_STEPS):
        bad_charge, bad_grid = _violations(plan.flows)
        if not bad_charge.any() and not bad_grid.any():
            return plan
        f = plan.flows
        forbid[DISCHARGE] |= bad_charge & (f[CHARGE] >= f[DISCHARGE])
        forbid[CHARGE] |= bad_charge & (f[CHARGE] < f[DISCHARGE])
        forbid[EXPORT] |= bad_grid & (f[IMPORT] >= f[EXPORT])
        forbid[IMPORT] |= bad_grid & (f[IMPORT] < f[EXPORT])
        model = build_model(d, np.zeros(T, dtype=np.bool_), np.zeros(T, dtype=np.bool_), slack_cap)
        model.col_upper[: N_BLOCKS * T][forbid.ravel()] = 0.0
        outcome = _run(model, deadline, None)
        if outcome.x is None or outcome.status != "optimal":
            return None
        plan = _plan(d, outcome.x, outcome.objective)
    return None


def _mip_start(d: SiteData, model: Model, plan: _Plan | None) -> FloatArray | None:
    """The incumbent as a full column vector of `model` (binaries set to its flow directions)."""
    if plan is None or not model.is_mip:
        return None
    T = d.horizon
    x = np.zeros(len(model.col_cost))
    x[: model.n_real] = plan.x
    x[: N_BLOCKS * T] = plan.flows.ravel()
    if model.peak_col is not None:
        x[model.peak_col] = max(0.0, float(np.max(plan.flows[IMPORT])) - d.peak_already)
    if model.slack_col is not None and x[model.slack_col] > model.col_upper[model.slack_col]:
        return None  # the shortfall cap came from another plan; this one no longer fits
    for group in model.disjunctions:
        chosen = np.zeros(len(group.slots), dtype=np.bool_)
        for mode in group.modes:
            excluded = [b for b in (CHARGE, DISCHARGE, IMPORT, EXPORT) if b not in mode.blocks]
            fits = ~chosen & np.all(plan.flows[excluded][:, group.slots] <= 0.0, axis=0)
            x[mode.weight] = fits
            for block, cols in mode.copies.items():
                x[cols] = np.where(fits, plan.flows[block, group.slots], 0.0)
            chosen |= fits
        if not chosen.all():
            return None
    return x


@dataclass(frozen=True)
class _Outcome:
    status: Status
    x: FloatArray | None  # the model's real (non-binary) columns, when a feasible solution exists
    objective: float = np.inf
    bound: float = -np.inf
    message: str = ""
    row_dual: FloatArray | None = None  # an LP's row duals (d objective / d row bound); None for a MIP


def _new_highs(model: Model) -> _Highs:
    # highspy.Highs() prints a banner on stdout when created; the bare core class does not, and stdout
    # carries the CLI's JSON.
    h = _Highs()
    h.setOptionValue("output_flag", False)
    if model.is_mip:
        h.setOptionValue("mip_rel_gap", MIP_REL_GAP)
    elif len(model.row_lower) <= SMALL_LP_ROWS:
        # A rolling re-plan's LP (a few hundred rows) solves ~30 % faster without presolve, by primal simplex
        # (measured over a year of backtest re-plans); the year-long LP keeps HiGHS' defaults.
        h.setOptionValue("presolve", "off")
        h.setOptionValue("simplex_strategy", 4)
    _pass(h, model)
    return h


def _pass(h: _Highs, model: Model) -> None:
    n_col, n_row = len(model.col_cost), len(model.row_lower)
    h.passModel(
        n_col,
        n_row,
        len(model.a_value),
        int(highspy.MatrixFormat.kRowwise),
        int(highspy.ObjSense.kMinimize),
        0.0,
        model.col_cost,
        model.col_lower,
        model.col_upper,
        model.row_lower,
        model.row_upper,
        model.a_start,
        model.a_index,
        model.a_value,
        model.integrality,
    )


def _run(model: Model, deadline: float, start: FloatArray | None, warm: WarmStart | None = None) -> _Outcome:
    h = warm.highs(model) if warm is not None and start is None else _new_highs(model)
    time_limit_s = max(deadline - time.perf_counter(), 0.001)
    # HiGHS' time limit counts the instance's whole run time, so a re-used (warm) instance gets its past runs added
    h.setOptionValue("time_limit", time_limit_s + (h.getRunTime() if warm is not None else 0.0))
    n_col = len(model.col_cost)
    if start is not None:
        h.setSolution(n_col, np.arange(n_col, dtype=np.int32), start)
        # The start comes from the repair dive and is usually optimal already: what is left is proving it.
        # HiGHS' restarts and sub-MIP heuristics then cost up to 10x the proof itself.
        for option in _SEARCH_OPTIONS_OFF:
            h.setOptionValue(option, False)
        h.setOptionValue("mip_heuristic_effort", 0.0)
    h.run()
    status = h.getModelStatus()
    info = h.getInfo()
    has_solution = info.primal_solution_status == highspy.SolutionStatus.kSolutionStatusFeasible
    x = None
    objective = float(info.objective_function_value)
    solution = h.getSolution() if has_solution else None  # one copy out of HiGHS: columns and duals
    if solution is not None:
        full = np.asarray(solution.col_value, dtype=np.float64)
        if start is not None and float(model.col_cost @ full) > objective + _gap(objective):
            # HiGHS 1.16 can report a better MIP objective than the start while handing back the start's
            # columns (found by test_matches_independent_milp): solve again without the start.
            return _run(model, deadline, None)
        x = full[: model.n_real]
    if warm is not None and start is None:
        warm.stats.iterations += int(info.simplex_iteration_count)
    if status == highspy.HighsModelStatus.kOptimal and x is not None and solution is not None:
        if warm is not None and start is None and not model.is_mip:
            warm.keep(model, h, full)
        if model.is_mip:
            return _Outcome("optimal", x, objective, float(info.mip_dual_bound))
        duals = np.asarray(solution.row_dual, dtype=np.float64)
        return _Outcome("optimal", x, objective, objective, row_dual=duals)
    if status in (highspy.HighsModelStatus.kInfeasible, highspy.HighsModelStatus.kUnboundedOrInfeasible):
        return _Outcome("infeasible", None, message=_INFEASIBLE)
    if status == highspy.HighsModelStatus.kTimeLimit:
        gap = f" (best plan within {100 * info.mip_gap:.3g}% of optimal)" if x is not None else ""
        return _Outcome("error", x, objective, message=f"time limit of {time_limit_s:.3f} s reached{gap}")
    return _Outcome("error", None, message=f"solver stopped: {h.modelStatusToString(status)}")


def _net_grid(d: SiteData, flows: FloatArray) -> None:
    """Cancel simultaneous import/export where exporting pays no more than importing costs."""
    imp, exp = flows[IMPORT], flows[EXPORT]
    both = np.minimum(imp, exp)
    fix = (both > 0.0) & (d.export_price <= d.import_price)
    imp[fix] -= both[fix]
    exp[fix] -= both[fix]


def _net_battery(d: SiteData, flows: FloatArray) -> None:
    """Replace simultaneous charge/discharge by the net flow with the same SoC, when the energy this frees
    can be absorbed without raising the cost (curtail PV, import less at a price >= 0, export more at a
    price >= 0). Only slots with such a violation are visited, so the Python loop stays short."""
    ch, dis = flows[CHARGE], flows[DISCHARGE]
    round_trip = d.eff_charge * d.eff_discharge
    for t in np.flatnonzero(np.minimum(ch, dis) > EXCLUSION_TOL):
        removed_charge = min(ch[t], dis[t] / round_trip)
        removed_discharge = removed_charge * round_trip
        surplus = removed_charge - removed_discharge
        pv_cut = min(surplus, flows[PV_USED, t])
        import_cut = min(surplus - pv_cut, flows[IMPORT, t]) if d.import_price[t] >= 0.0 else 0.0
        export_add = 0.0
        rest = surplus - pv_cut - import_cut
        if rest > 0.0 and d.export_price[t] >= 0.0 and flows[IMPORT, t] - import_cut <= EXCLUSION_TOL:
            export_add = min(rest, d.max_export - flows[EXPORT, t])
        if rest - export_add > 1e-12:
            continue
        ch[t] -= removed_charge
        dis[t] -= removed_discharge
        flows[PV_USED, t] -= pv_cut
        flows[IMPORT, t] -= import_cut
        flows[EXPORT, t] += export_add


def _violations(flows: FloatArray) -> tuple[BoolArray, BoolArray]:
    bad_charge = np.minimum(flows[CHARGE], flows[DISCHARGE]) > EXCLUSION_TOL
    bad_grid = np.minimum(flows[IMPORT], flows[EXPORT]) > EXCLUSION_TOL
    return bad_charge, bad_grid


def _tidy(d: SiteData, flows: FloatArray) -> None:
    """Clip solver noise so the plan is exactly within bounds and exactly exclusive."""
    np.clip(flows, 0.0, None, out=flows)
    for a, b in ((CHARGE, DISCHARGE), (IMPORT, EXPORT)):
        smaller_a = flows[a] <= flows[b]
        flows[a][smaller_a] = 0.0
        flows[b][~smaller_a] = 0.0
    flows[CHARGE] = np.minimum(flows[CHARGE], d.max_charge)
    flows[DISCHARGE] = np.minimum(flows[DISCHARGE], d.max_discharge)
    flows[IMPORT] = np.minimum(flows[IMPORT], d.max_import)
    flows[EXPORT] = np.minimum(flows[EXPORT], d.max_export)
    flows[PV_USED] = np.minimum(flows[PV_USED], d.pv)
    flows[EV_CHARGE] = np.minimum(flows[EV_CHARGE], d.ev_ub)
    flows[ENERGY] = np.clip(flows[ENERGY], d.energy_lb, d.energy_ub)


def _solution(
    problem: Problem,
    d: SiteData,
    flows: FloatArray,
    ev_unreachable: bool,
    started: float,
    failure: str | None = None,
    value: FloatArray | None = None,
) -> Solution:
    """`failure` set: a plan that meets every constraint but is not proven optimal (status "error")."""
    flows = flows.copy()
    _tidy(d, flows)
    soc = np.concatenate([[problem.battery.soc_initial], flows[ENERGY] / d.capacity])
    message = "ev target unreachable: charging as much as possible" if ev_unreachable else None
    if failure is not None:
        message = failure if message is None else f"{failure}; {message}"
    draft = Solution(
        status="optimal" if failure is None else "error",
        cost=0.0,
        solve_ms=0.0,
        battery_charge_kw=flows[CHARGE].tolist(),
        battery_discharge_kw=flows[DISCHARGE].tolist(),
        grid_import_kw=flows[IMPORT].tolist(),
        grid_export_kw=flows[EXPORT].tolist(),
        pv_used_kw=flows[PV_USED].tolist(),
        ev_charge_kw=flows[EV_CHARGE].tolist(),
        soc=soc.tolist(),
        ev_target_unreachable=ev_unreachable,
        message=message,
        energy_value=None if value is None else [round(float(v), 6) for v in value],
    )
    return _replace(draft, cost=recompute_cost(problem, draft), solve_ms=_ms_since(started))


def _replace(solution: Solution, *, cost: float, solve_ms: float) -> Solution:
    return msgspec.structs.replace(solution, cost=cost, solve_ms=solve_ms)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
