"""The optimizer against an independent formulation.

The reference below shares no code with cloud/optimizer*.py: it is a dense, textbook MILP with binaries in
every slot, solved by scipy's `milp`, with the EV "as much as possible" rule done as an explicit two-stage
(max EV energy, then min cost). Each generated problem checks the returned plan constraint by constraint,
its cost against the arrays, and its optimality against the reference objective.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.optimizer import site_problem
from cloud import optimizer
from cloud.optimizer import recompute_cost, solve, solve_json
from cloud.optimizer_io import Battery, Grid, Problem, Solution, decode_problem

scipy_optimize = pytest.importorskip("scipy.optimize")

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-6


# --------------------------------------------------------------------------- reference formulation


@dataclass
class Reference:
    status: str  # "optimal" | "infeasible"
    cost: float
    ev_energy_max: float  # kWh deliverable into the EV (capped at the need), or 0 without EV


def _soc_bounds(p: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Bounds on soc[t+1]: the documented recovery rule for a start outside [soc_min, soc_max]."""
    b, g = p["battery"], p["grid"]
    dt = p["step_minutes"] / 60.0
    cap = b["capacity_kwh"]
    lo_reach = hi_reach = b["soc_initial"]
    lo: list[float] = []
    hi: list[float] = []
    for t in range(len(p["import_price"])):
        room = min(b["max_charge_kw"], max(0.0, p["pv_kw"][t] + g["max_import_kw"] - p["load_kw"][t]))
        lo_reach += dt * b["charge_efficiency"] * room / cap
        out = min(b["max_discharge_kw"], p["load_kw"][t] + g["max_export_kw"])
        hi_reach -= dt * out / b["discharge_efficiency"] / cap
        lo.append(min(b["soc_min"], lo_reach))
        hi.append(max(b["soc_max"], hi_reach))
    if b.get("soc_final_min") is not None:
        reach = b["soc_initial"]
        for t in range(len(lo)):
            room = min(b["max_charge_kw"], max(0.0, p["pv_kw"][t] + g["max_import_kw"] - p["load_kw"][t]))
            reach = min(hi[t], reach + dt * b["charge_efficiency"] * room / cap)
        lo[-1] = max(lo[-1], min(b["soc_final_min"], reach))
    return lo, hi


def reference_solve(p: dict[str, Any]) -> Reference:
    T = len(p["import_price"])
    dt = p["step_minutes"] / 60.0
    b, g = p["battery"], p["grid"]
    ev, dc = p.get("ev"), p.get("demand_charge")
    cap = b["capacity_kwh"]
    # variables: c d i e pv v soc zc zi (each T), then peak
    names = ["c", "d", "i", "e", "pv", "v", "soc", "zc", "zi"]
    idx = {n: k * T for k, n in enumerate(names)}
    n = len(names) * T + 1
    peak = n - 1
    lo, hi = np.zeros(n), np.zeros(n)
    integ = np.zeros(n)
    soc_lo, soc_hi = _soc_bounds(p)
    for t in range(T):
        hi[idx["c"] + t] = b["max_charge_kw"]
        hi[idx["d"] + t] = b["max_discharge_kw"]
        hi[idx["i"] + t] = g["max_import_kw"]
        hi[idx["e"] + t] = g["max_export_kw"]
        hi[idx["pv"] + t] = p["pv_kw"][t]
        in_window = ev is not None and ev["arrival_slot"] <= t < ev["departure_slot"]
        hi[idx["v"] + t] = ev["max_charge_kw"] if in_window else 0.0
        lo[idx["soc"] + t], hi[idx["soc"] + t] = soc_lo[t], soc_hi[t]
        hi[idx["zc"] + t] = hi[idx["zi"] + t] = 1.0
        integ[idx["zc"] + t] = integ[idx["zi"] + t] = 1
    hi[peak] = np.inf if dc else 0.0
    rows: list[np.ndarray] = []
    rlo: list[float] = []
    rhi: list[float] = []

    def row(coefs: dict[int, float], lower: float, upper: float) -> None:
        r = np.zeros(n)
        for k, v in coefs.items():
            r[k] += v
        rows.append(r)
        rlo.append(lower)
        rhi.append(upper)

    for t in range(T):
        c, d_, i, e = idx["c"] + t, idx["d"] + t, idx["i"] + t, idx["e"] + t
        row({idx["pv"] + t: 1, i: 1, d_: 1, c: -1, e: -1, idx["v"] + t: -1}, p["load_kw"][t], p["load_kw"][t])
        prev = {idx["soc"] + t - 1: -cap} if t > 0 else {}
        rhs = b["soc_initial"] * cap if t == 0 else 0.0
        coefs = {idx["soc"] + t: cap, c: -dt * b["charge_efficiency"], d_: dt / b["discharge_efficiency"]}
        row(coefs | prev, rhs, rhs)
        row({c: 1, idx["zc"] + t: -b["max_charge_kw"]}, -np.inf, 0)
        row({d_: 1, idx["zc"] + t: b["max_discharge_kw"]}, -np.inf, b["max_discharge_kw"])
        row({i: 1, idx["zi"] + t: -g["max_import_kw"]}, -np.inf, 0)
        row({e: 1, idx["zi"] + t: g["max_export_kw"]}, -np.inf, g["max_export_kw"])
        if dc:
            row({i: 1, peak: -1}, -np.inf, dc.get("peak_already_kw", 0.0))
    cost = np.zeros(n)
    for t in range(T):
        cost[idx["c"] + t] = cost[idx["d"] + t] = dt * b["cycle_cost_per_kwh"]
        cost[idx["i"] + t] = dt * p["import_price"][t]
        cost[idx["e"] + t] = -dt * p["export_price"][t]
    if dc:
        cost[peak] = dc["price_per_kw"]
        # peak is the excess over peak_already: its rows are import - peak <= peak_already

    ev_energy = np.zeros(n)
    need = room = 0.0
    if ev is not None:
        for t in range(T):
            ev_energy[idx["v"] + t] = ev["efficiency"] * dt
        need = max(0.0, ev["soc_target"] - ev["soc_initial"]) * ev["capacity_kwh"]
        room = (1.0 - ev["soc_initial"]) * ev["capacity_kwh"]
        rows.append(ev_energy.copy())
        rlo.append(-np.inf)
        rhi.append(room)

    bounds = scipy_optimize.Bounds(lo, hi)
    opts = {"mip_rel_gap": 1e-9, "time_limit": 60}
    best_ev = 0.0
    if ev is not None and need > 0:
        cons = scipy_optimize.LinearConstraint(np.array(rows), rlo, rhi)
        stage1 = scipy_optimize.milp(-ev_energy, constraints=cons, integrality=integ, bounds=bounds, options=opts)
        if stage1.status == 2:
            return Reference("infeasible", math.nan, 0.0)
        best_ev = min(need, float(ev_energy @ stage1.x))
        rows.append(ev_energy.copy())
        rlo.append(best_ev - 1e-7)
        rhi.append(np.inf)
    cons = scipy_optimize.LinearConstraint(np.array(rows), rlo, rhi)
    res = scipy_optimize.milp(cost, constraints=cons, integrality=integ, bounds=bounds, options=opts)
    if res.status == 2:
        return Reference("infeasible", math.nan, 0.0)
    assert res.status == 0, res.message
    return Reference("optimal", float(res.fun), best_ev)


# --------------------------------------------------------------------------- plan checks


def check_plan(p: dict[str, Any], s: Solution) -> None:
    """Every contract constraint, verified on the returned arrays only."""
    T = len(p["import_price"])
    dt = p["step_minutes"] / 60.0
    b, g, ev = p["battery"], p["grid"], p.get("ev")
    arrays = [s.battery_charge_kw, s.battery_discharge_kw, s.grid_import_kw, s.grid_export_kw]
    arrays += [s.pv_used_kw, s.ev_charge_kw]
    assert all(len(a) == T for a in arrays)
    assert len(s.soc) == T + 1
    c, d, i, e = (np.array(a) for a in arrays[:4])
    pv, v, soc = np.array(s.pv_used_kw), np.array(s.ev_charge_kw), np.array(s.soc)
    assert soc[0] == pytest.approx(b["soc_initial"], abs=1e-12)
    for arr, upper in ((c, b["max_charge_kw"]), (d, b["max_discharge_kw"]), (i, g["max_import_kw"])):
        assert np.all(arr >= 0) and np.all(arr <= upper + TOL)
    assert np.all(e >= 0) and np.all(e <= g["max_export_kw"] + TOL)
    assert np.all(pv >= 0) and np.all(pv <= np.array(p["pv_kw"]) + TOL)
    balance = pv + i + d - np.array(p["load_kw"]) - c - e - v
    assert np.max(np.abs(balance)) <= 1e-5
    cap = b["capacity_kwh"]
    dyn = soc[1:] * cap - soc[:-1] * cap - dt * (b["charge_efficiency"] * c - d / b["discharge_efficiency"])
    assert np.max(np.abs(dyn)) <= 1e-5
    lo, hi = _soc_bounds(p)
    assert np.all(soc[1:] >= np.array(lo) - TOL) and np.all(soc[1:] <= np.array(hi) + TOL)
    assert np.all(np.minimum(c, d) <= 0.0), "charge and discharge in one slot"
    assert np.all(np.minimum(i, e) <= 0.0), "import and export in one slot"
    if ev is None:
        assert np.all(v == 0)
    else:
        window = np.zeros(T, dtype=bool)
        window[ev["arrival_slot"] : ev["departure_slot"]] = True
        assert np.all(v[~window] == 0)
        assert np.all(v <= ev["max_charge_kw"] + TOL)
        delivered = ev["efficiency"] * dt * float(np.sum(v))
        need = max(0.0, ev["soc_target"] - ev["soc_initial"]) * ev["capacity_kwh"]
        assert delivered <= (1 - ev["soc_initial"]) * ev["capacity_kwh"] + 1e-5
        if not s.ev_target_unreachable:
            assert delivered >= need - 1e-5
    problem = decode_problem(json.dumps(p))
    assert s.cost is not None
    assert s.cost == pytest.approx(recompute_cost(problem, s), abs=1e-9)
    assert s.cost == pytest.approx(_independent_cost(p, s), abs=1e-7)


def _independent_cost(p: dict[str, Any], s: Solution) -> float:
    dt = p["step_minutes"] / 60.0
    total = 0.0
    for t in range(len(p["import_price"])):
        total += dt * (p["import_price"][t] * s.grid_import_kw[t] - p["export_price"][t] * s.grid_export_kw[t])
        total += p["battery"]["cycle_cost_per_kwh"] * dt * (s.battery_charge_kw[t] + s.battery_discharge_kw[t])
    dc = p.get("demand_charge")
    if dc:
        total += dc["price_per_kw"] * max(0.0, max(s.grid_import_kw) - dc.get("peak_already_kw", 0.0))
    return total


def assert_optimal(p: dict[str, Any]) -> Solution:
    s = solve_json(json.dumps(p))
    ref = reference_solve(p)
    assert s.status == ref.status, (s.status, s.message, ref)
    if ref.status == "optimal":
        check_plan(p, s)
        assert s.cost is not None
        assert s.cost == pytest.approx(ref.cost, rel=1e-6, abs=1e-6)
        if p.get("ev") is not None:
            delivered = p["ev"]["efficiency"] * p["step_minutes"] / 60 * sum(s.ev_charge_kw)
            assert delivered >= ref.ev_energy_max - 1e-5
    return s


# --------------------------------------------------------------------------- problem generation


def base_problem(T: int = 24, step: int = 60) -> dict[str, Any]:
    hours = np.arange(T) * step / 60
    price = 0.25 + 0.1 * np.sin((hours - 6) / 24 * 2 * np.pi)
    return {
        "start": "2026-06-01T00:00:00Z",
        "step_minutes": step,
        "import_price": price.round(4).tolist(),
        "export_price": (price - 0.1).round(4).tolist(),
        "load_kw": (0.8 + 0.5 * np.cos(hours / 24 * 2 * np.pi) ** 2).round(3).tolist(),
        "pv_kw": np.maximum(0, 4 * np.sin((hours % 24 - 6) / 12 * np.pi)).round(3).tolist(),
        "battery": {
            "capacity_kwh": 10.0,
            "soc_initial": 0.5,
            "soc_min": 0.1,
            "soc_max": 0.9,
            "max_charge_kw": 5.0,
            "max_discharge_kw": 5.0,
            "charge_efficiency": 0.95,
            "discharge_efficiency": 0.95,
            "cycle_cost_per_kwh": 0.01,
        },
        "grid": {"max_import_kw": 17.0, "max_export_kw": 10.0},
    }


money = st.integers(-40, 80).map(lambda c: c / 100)
kw = st.integers(0, 60).map(lambda x: x / 10)


@st.composite
def problems(draw: st.DrawFn) -> dict[str, Any]:
    T = draw(st.integers(4, 24))
    step = draw(st.sampled_from([15, 30, 60]))
    imp = draw(st.lists(money, min_size=T, max_size=T))
    mode = draw(st.sampled_from(["spread", "free", "equal"]))
    if mode == "spread":
        exp = [x - draw(st.integers(0, 20)) / 100 for x in imp]
    elif mode == "equal":
        exp = list(imp)
    else:
        exp = draw(st.lists(money, min_size=T, max_size=T))
    soc_min = draw(st.integers(0, 40)) / 100
    soc_max = draw(st.integers(max(60, int(soc_min * 100)), 100)) / 100
    battery = {
        "capacity_kwh": draw(st.integers(1, 30)) * 1.0,
        "soc_initial": draw(st.integers(0, 100)) / 100,
        "soc_min": soc_min,
        "soc_max": soc_max,
        "max_charge_kw": draw(kw),
        "max_discharge_kw": draw(kw),
        "charge_efficiency": draw(st.sampled_from([1.0, 0.95, 0.9, 0.8])),
        "discharge_efficiency": draw(st.sampled_from([1.0, 0.95, 0.9])),
        "cycle_cost_per_kwh": draw(st.sampled_from([0.0, 0.0, 0.02, 0.05])),
    }
    if draw(st.booleans()):
        battery["soc_final_min"] = draw(st.integers(0, int(soc_max * 100))) / 100
    p: dict[str, Any] = {
        "start": "2026-06-01T00:00:00+02:00",
        "step_minutes": step,
        "import_price": imp,
        "export_price": exp,
        "load_kw": draw(st.lists(kw, min_size=T, max_size=T)),
        "pv_kw": draw(st.lists(kw, min_size=T, max_size=T)),
        "battery": battery,
        "grid": {
            "max_import_kw": draw(st.integers(2, 25)) * 1.0,
            "max_export_kw": draw(st.integers(0, 10)) * 1.0,
        },
    }
    if draw(st.booleans()):
        p["demand_charge"] = {
            "price_per_kw": draw(st.integers(0, 300)) / 100,
            "peak_already_kw": draw(st.integers(0, 8)) * 1.0,
        }
    if draw(st.booleans()):
        arrival = draw(st.integers(0, T - 1))
        p["ev"] = {
            "capacity_kwh": draw(st.integers(10, 80)) * 1.0,
            "soc_initial": draw(st.integers(0, 90)) / 100,
            "soc_target": draw(st.integers(0, 100)) / 100,
            "arrival_slot": arrival,
            "departure_slot": draw(st.integers(arrival, T + 4)),
            "max_charge_kw": draw(st.integers(0, 11)) * 1.0,
            "efficiency": draw(st.sampled_from([1.0, 0.9])),
        }
    return p


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_matches_independent_milp(p: dict[str, Any]) -> None:
    assert_optimal(p)


# --------------------------------------------------------------------------- examples


def test_plain_day_is_optimal_and_consistent() -> None:
    s = assert_optimal(base_problem())
    assert s.status == "optimal"
    assert s.solve_ms > 0
    assert s.ev_target_unreachable is False


def test_negative_prices_never_charge_and_discharge_together() -> None:
    p = base_problem()
    p["battery"]["cycle_cost_per_kwh"] = 0.0
    p["battery"]["charge_efficiency"] = p["battery"]["discharge_efficiency"] = 0.9
    p["import_price"][10:15] = [-0.3] * 5
    p["export_price"][10:15] = [-0.35] * 5
    p["pv_kw"][10:15] = [0.0] * 5  # nothing to curtail: wasting energy means losses in the battery
    p["export_price"][18] = 0.9  # and an export price above the import price: grid arbitrage pressure
    s = assert_optimal(p)
    c, d = np.array(s.battery_charge_kw), np.array(s.battery_discharge_kw)
    i, e = np.array(s.grid_import_kw), np.array(s.grid_export_kw)
    assert np.all(c * d == 0) and np.all(i * e == 0)
    assert np.sum(i[10:15]) > 0  # it is paid to import


@pytest.mark.parametrize("seed", range(6))
def test_negative_price_days_match_reference(seed: int) -> None:
    """A full day of 15-minute slots where, without a cycle cost, dumping energy through the battery pays."""
    p = json.loads(msgspec.json.encode(site_problem(96, True, seed, cycle_cost=0.0)))
    assert_optimal(p)


def test_dumping_energy_takes_the_milp_path(monkeypatch: pytest.MonkeyPatch) -> None:
    mip_solves = []
    run = optimizer._run

    def counting(model: Any, deadline: float, start: Any, warm: Any = None) -> Any:
        mip_solves.append(model.is_mip)
        return run(model, deadline, start, warm)

    monkeypatch.setattr(optimizer, "_run", counting)
    p = json.loads(msgspec.json.encode(site_problem(96, True, 4, cycle_cost=0.0)))
    assert_optimal(p)
    assert any(mip_solves)


def test_demand_charge_shaves_the_peak() -> None:
    p = base_problem()
    p["load_kw"] = [1.0] * 24
    p["load_kw"][5] = 8.0
    p["pv_kw"] = [0.0] * 24
    p["import_price"] = [0.2] * 24
    p["export_price"] = [0.0] * 24
    p["battery"].update(soc_initial=0.1, cycle_cost_per_kwh=0.01)
    plain = assert_optimal(p)
    assert max(plain.grid_import_kw) == pytest.approx(8.0)
    p["demand_charge"] = {"price_per_kw": 10.0}
    shaved = assert_optimal(p)
    # The battery covers the spike up to its 5 kW inverter limit; the rest of the day it sits idle.
    assert max(shaved.grid_import_kw) == pytest.approx(3.0, abs=1e-6)
    assert shaved.battery_discharge_kw[5] == pytest.approx(5.0, abs=1e-6)


def test_demand_charge_counts_only_above_the_peak_so_far() -> None:
    p = base_problem()
    p["demand_charge"] = {"price_per_kw": 10.0, "peak_already_kw": 50.0}
    s = assert_optimal(p)
    without = solve_json(json.dumps(base_problem()))
    assert s.cost == pytest.approx(without.cost, abs=1e-6)


def test_unreachable_ev_target_is_flagged_and_charged_to_the_limit() -> None:
    p = base_problem()
    p["ev"] = {
        "capacity_kwh": 60.0,
        "soc_initial": 0.1,
        "soc_target": 0.9,
        "arrival_slot": 20,
        "departure_slot": 22,
        "max_charge_kw": 7.0,
        "efficiency": 0.9,
    }
    s = assert_optimal(p)
    assert s.ev_target_unreachable is True
    assert s.ev_charge_kw[20:22] == pytest.approx([7.0, 7.0])
    assert sum(s.ev_charge_kw) == pytest.approx(14.0)


def test_reachable_ev_target_is_met_in_the_window() -> None:
    p = base_problem()
    p["ev"] = {
        "capacity_kwh": 40.0,
        "soc_initial": 0.2,
        "soc_target": 0.6,
        "arrival_slot": 17,
        "departure_slot": 23,
        "max_charge_kw": 7.0,
        "efficiency": 0.9,
    }
    s = assert_optimal(p)
    assert s.ev_target_unreachable is False
    assert 0.9 * sum(s.ev_charge_kw) == pytest.approx(16.0, abs=1e-5)
    assert sum(s.ev_charge_kw[:17]) == 0 and s.ev_charge_kw[23] == 0


@pytest.mark.parametrize(("soc_initial", "direction"), [(0.02, 1), (0.99, -1)])
def test_battery_outside_its_band_recovers_at_full_rate(soc_initial: float, direction: int) -> None:
    p = base_problem()
    p["battery"]["soc_initial"] = soc_initial
    s = assert_optimal(p)
    soc = np.array(s.soc)
    # One hour at 5 kW * 0.95 moves 0.475 of 10 kWh; the bound follows the fastest recovery.
    if direction > 0:
        assert soc[1] == pytest.approx(min(0.1, 0.02 + 0.475), abs=1e-6) or soc[1] >= 0.1 - 1e-9
        assert np.all(soc[1:] >= 0.1 - 1e-7)
    else:
        assert np.all(soc[1:] <= 0.9 + 1e-7)


def test_recovery_from_deep_discharge_with_weak_charger() -> None:
    p = base_problem()
    p["battery"].update(soc_initial=0.0, max_charge_kw=0.5, soc_min=0.2)
    s = assert_optimal(p)
    soc = np.array(s.soc)
    expected = np.minimum(0.2, 0.5 * 0.95 * np.arange(1, 25) / 10)
    assert np.all(soc[1:] >= expected - 1e-7)


def test_infeasible_when_load_exceeds_every_source() -> None:
    p = base_problem()
    p["load_kw"][3] = 100.0
    s = solve_json(json.dumps(p))
    assert s.status == "infeasible"
    assert s.cost is None and s.message


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda p: p.__setitem__("load_kw", p["load_kw"][:-1]), "load_kw"),
        (lambda p: p["battery"].update(soc_min=0.95), "soc_min"),
        (lambda p: p["battery"].update(capacity_kwh=-1.0), "capacity_kwh"),
        (lambda p: p["battery"].pop("max_charge_kw"), "max_charge_kw"),
        (lambda p: p["battery"].update(charge_efficiency=0.0), "charge_efficiency"),
        (lambda p: p.__setitem__("import_price", []), "import_price"),
        (lambda p: p.__setitem__("start", "2026-06-01T00:00:00"), "start"),
        (lambda p: p.__setitem__("step_minutes", "15"), "step_minutes"),
        (
            lambda p: p.__setitem__(
                "ev",
                {
                    "capacity_kwh": 40.0,
                    "soc_initial": 0.2,
                    "soc_target": 0.6,
                    "arrival_slot": 9,
                    "departure_slot": 3,
                    "max_charge_kw": 7.0,
                    "efficiency": 0.9,
                },
            ),
            "departure_slot",
        ),
    ],
)
def test_invalid_input_is_an_error_with_a_message(mutate: Any, expected: str) -> None:
    p = base_problem()
    mutate(p)
    s = solve_json(json.dumps(p))
    assert s.status == "error"
    assert s.message is not None and expected in s.message
    assert s.cost is None and s.soc == []


def test_malformed_json_is_an_error() -> None:
    s = solve_json(b"{not json")
    assert s.status == "error" and s.message


def test_solve_accepts_a_typed_problem() -> None:
    problem: Problem = decode_problem(json.dumps(base_problem(T=8)))
    assert solve(problem).status == "optimal"


# --------------------------------------------------------------------------- CLI


def _cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "cloud.cli", "optimize", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_cli_prints_the_solution(tmp_path: Path) -> None:
    problem_file = tmp_path / "problem.json"
    problem_file.write_text(json.dumps(base_problem()))
    done = _cli(str(problem_file))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["status"] == "optimal"
    assert len(out["soc"]) == 25 and isinstance(out["cost"], float)


def test_cli_reads_stdin() -> None:
    done = _cli("-", stdin=json.dumps(base_problem(T=6)).encode())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "optimal"


def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    p = base_problem()
    p["pv_kw"] = [1.0]
    problem_file = tmp_path / "bad.json"
    problem_file.write_text(json.dumps(p))
    done = _cli(str(problem_file))
    assert done.returncode == 2
    assert done.stderr.decode().count("\n") == 1 and "pv_kw" in done.stderr.decode()
    assert json.loads(done.stdout)["status"] == "error"


def test_cli_missing_file_exits_2(tmp_path: Path) -> None:
    done = _cli(str(tmp_path / "nope.json"))
    assert done.returncode == 2 and done.stderr.decode().count("\n") == 1


def test_cli_infeasible_exits_1(tmp_path: Path) -> None:
    p = base_problem()
    p["load_kw"][0] = 500.0
    problem_file = tmp_path / "infeasible.json"
    problem_file.write_text(json.dumps(p))
    done = _cli(str(problem_file))
    assert done.returncode == 1
    assert json.loads(done.stdout)["status"] == "infeasible"


def _empty_battery(capacity_kwh: float, soc_max: float, power_kw: float, efficiency: float) -> Battery:
    """An empty battery (reserve 0) without wear, for hand-worked examples."""
    return Battery(
        capacity_kwh=capacity_kwh,
        soc_initial=0.0,
        soc_min=0.0,
        soc_max=soc_max,
        max_charge_kw=power_kw,
        max_discharge_kw=power_kw,
        charge_efficiency=efficiency,
        discharge_efficiency=efficiency,
        cycle_cost_per_kwh=0.0,
    )


def test_energy_value_is_what_a_stored_kwh_saves() -> None:
    """Two hours, an empty battery (90 % each way), 1 kW of load, import 0.10 then 0.30 EUR/kWh.

    The plan charges 1/0.81 kWh in hour 0 at 0.10 to cover hour 1. One more kWh put into the battery during hour
    0 would save 1/0.9 kWh of that charging: worth 0.10/0.9 = 0.1111 EUR. One more kWh during hour 1 replaces a
    kWh of hour 1's discharge, so hour 0 stores a kWh less: the same 0.1111. Put in while a price of 0.30 is
    being avoided it is still worth only what it replaces (the cheapest way to have it). With load only in hour 0:
    a kWh put in during hour 0 gives 0.9 kWh out in it, replacing import at 0.10: 0.09; in hour 1 nothing would
    use it: 0. (Worked by hand, not from the solver.)
    """
    problem = Problem(
        start=datetime(2026, 1, 1, tzinfo=UTC),
        step_minutes=60.0,
        import_price=[0.10, 0.30],
        export_price=[0.0, 0.0],
        load_kw=[1.0, 1.0],
        pv_kw=[0.0, 0.0],
        battery=_empty_battery(10.0, 1.0, 5.0, 0.9),
        grid=Grid(max_import_kw=10.0, max_export_kw=10.0),
    )
    s = solve(problem)
    assert s.battery_charge_kw[0] == pytest.approx(1 / 0.81, abs=1e-6)
    assert s.energy_value == pytest.approx([0.10 / 0.9, 0.10 / 0.9], abs=1e-6)
    idle = solve(msgspec.structs.replace(problem, load_kw=[1.0, 0.0]))
    assert idle.energy_value == pytest.approx([0.09, 0.0], abs=1e-6)
    assert msgspec.json.decode(msgspec.json.encode(s), type=Solution).energy_value == s.energy_value


def test_a_better_mip_solution_than_the_start_is_returned() -> None:
    """Found by test_matches_independent_milp: HiGHS reported the better objective but handed back the start's
    columns. No battery; slot 5 exports 0.1 kW of PV at 0.01 EUR/kWh, slot 11 imports its 0.1 kW load at -0.01
    (curtailing its PV): -0.00025 EUR each, -0.0005 in all (by hand)."""
    zero = [0.0] * 24
    imp, exp, load, pv = list(zero), list(zero), list(zero), list(zero)
    imp[11], exp[5], load[11], pv[5], pv[11] = -0.01, 0.01, 0.1, 0.1, 0.4
    s = solve(
        Problem(
            start=datetime(2026, 6, 1, tzinfo=UTC),
            step_minutes=15.0,
            import_price=imp,
            export_price=exp,
            load_kw=load,
            pv_kw=pv,
            battery=_empty_battery(1.0, 0.6, 0.0, 1.0),
            grid=Grid(max_import_kw=2.0, max_export_kw=1.0),
        )
    )
    assert s.cost == pytest.approx(-0.0005, abs=1e-9)
    assert s.grid_export_kw[5] == pytest.approx(0.1)


def test_a_warm_start_changes_nothing_but_the_time() -> None:
    """A rolling planner's re-plans through one WarmStart give the cold solve's cost, also when the horizon
    changes between them (a new matrix) and when negative prices send a solve down the MILP path. (Duals of a
    degenerate LP are not unique, so the energy values may differ where several are optimal.)"""
    warm = optimizer.WarmStart()
    rng = np.random.default_rng(7)
    for T, soc, shift in [(24, 0.5, 0.0), (24, 0.2, 0.05), (24, 0.8, -0.3), (12, 0.5, 0.0), (24, 0.5, 0.1)]:
        p = base_problem(T)
        p["import_price"] = (np.asarray(p["import_price"]) + shift + rng.normal(0, 0.05, T)).round(4).tolist()
        p["battery"]["soc_initial"] = soc
        problem = decode_problem(json.dumps(p))
        cold, hot = solve(problem), solve(problem, warm=warm)
        assert hot.status == cold.status == "optimal"
        assert hot.cost == pytest.approx(cold.cost, abs=1e-9)
        assert hot.energy_value is not None and all(math.isfinite(v) for v in hot.energy_value)


def test_a_warm_instance_gets_the_full_time_limit_for_every_solve() -> None:
    """HiGHS counts an instance's time limit over all its runs: once the re-used instance has run longer than
    the limit in total, each further solve must still get its own limit (it used to stop at once)."""
    warm = optimizer.WarmStart()
    rng = np.random.default_rng(3)
    p = base_problem(96, 30)
    limit, ran = 0.2, 0.0
    for _ in range(5000):
        p["import_price"] = (0.3 + 0.1 * rng.random(96)).round(4).tolist()  # a new re-plan: work for the simplex
        assert solve(decode_problem(json.dumps(p)), time_limit_s=limit, warm=warm).status == "optimal"
        ran = warm._highs.getRunTime() if warm._highs is not None else 0.0
        if ran > 2.5 * limit:
            break
    assert ran > 2.5 * limit
