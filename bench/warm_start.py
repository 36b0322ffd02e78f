"""The shifted-basis warm start audited over a backtest year: `python -m bench.warm_start TRACE [--days N]`.

The rolling planner runs as the backtest runs it (cloud.backtest.rolling_flows, the bench year's house and
defaults), with every LP that started warm solved again cold on a fresh HiGHS instance: the simplex
iterations both ways (what the warm start saves), the largest relative difference of the two optimal
objectives (it may only be HiGHS' tolerance: the warm start must not change the optimum), how many optimal
solutions differ (equal-cost alternative optima, which make the year's settled cost move by cents), and how the
LPs started (cloud.optimizer.WarmStats). The cold re-solves double the LP time: a check, not a timing.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np
from highspy._core import _Highs

from bench.backtest import DATA, DATASETS
from cloud.backtest import Planner, read_traces, rolling_flows, settle
from cloud.optimizer import WarmStart, WarmStats, _new_highs
from cloud.optimizer_model import FloatArray, Model

COMMAND = "python -m bench.warm_start"
# Two optimal solutions of one LP "differ" where a column does by more than this (kW or kWh).
SAME_X = 1e-7


@dataclass
class Audit:
    lps: int = 0
    cold_iterations: int = 0
    worst_rel: float = 0.0
    differing: int = 0


class AuditedWarmStart(WarmStart):
    """A WarmStart whose every optimal LP is solved once more from cold, for comparison."""

    def __init__(self, audit: Audit) -> None:
        super().__init__()
        self.audit = audit

    def keep(self, model: Model, h: _Highs, col_value: FloatArray) -> None:
        super().keep(model, h, col_value)
        cold = _new_highs(model)
        cold.run()
        info = cold.getInfo()
        a = self.audit
        a.lps += 1
        a.cold_iterations += int(info.simplex_iteration_count)
        warm_objective, cold_objective = h.getInfo().objective_function_value, info.objective_function_value
        a.worst_rel = max(a.worst_rel, abs(warm_objective - cold_objective) / max(1.0, abs(cold_objective)))
        x = np.asarray(cold.getSolution().col_value, dtype=np.float64)
        a.differing += int(not np.allclose(x, col_value, rtol=0.0, atol=SAME_X))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    names = [ds.file for ds in DATASETS]
    parser.add_argument("trace", metavar="TRACE", choices=names, help=f"a bench year: {', '.join(names)}")
    parser.add_argument("--days", type=int, default=0, help="the year's first N days only (default: all)")
    args = parser.parse_args(argv)
    if args.days < 0:
        parser.error("--days must be >= 0")
    ds = next(d for d in DATASETS if d.file == args.trace)
    cfg = ds.cfg
    tr = read_traces(str(DATA / ds.file))
    if args.days:
        tr = tr.head(min(tr.n, args.days * tr.slots_per_day))
    audit = Audit()
    planner = Planner(tr, cfg)
    planner.warm, planner.warm_scenarios = AuditedWarmStart(audit), AuditedWarmStart(audit)
    charge, discharge, replans, _ = rolling_flows(tr, cfg, planner)
    cost = settle(tr, charge, discharge, cfg.cycle_cost, "planner", cfg).cost
    stats = [planner.warm_scenarios.stats, planner.warm.stats]
    fields = ("same", "shifted", "cold", "refused", "iterations")
    total = WarmStats(*(sum(getattr(s, f) for s in stats) for f in fields))
    print(f"{ds.file}: {replans} re-plans, planner {cost:.2f} EUR")
    print(f"first LPs: {total.shifted} shifted, {total.same} same matrix, {total.cold} cold, {total.refused} refused")
    print(f"simplex iterations: {total.iterations} warm, {audit.cold_iterations} the same LPs cold")
    print(f"largest relative objective difference warm vs cold: {audit.worst_rel:.3g} over {audit.lps} LPs")
    print(f"optimal solutions that differ (alternative optima): {audit.differing}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
