"""What the load GBM's training costs and earns: incremental (daily continuation, full refit every 14 days)
against a full refit every 14 days and a full refit every day (issue 11 item 3, `python -m bench.load_training`).

* The planner worker's path (`cloud.site_forecast.site_load_forecast` on a real SQLite file, 70 days of
  15-minute telemetry of bench/planner_loop.py's synthetic house): process CPU of a plan that fits the model
  from scratch, of one that continues it on the day since, and of one that finds it fresh (load the stored
  row, predict), each the median of a few.
* A real year (Konstanz NL, hourly; Ausgrid NL, half-hourly): the day-ahead MAE of forecasts issued every 6 h
  (bench/forecast_scores.py's protocol, data before each origin only) and the CPU the training took over the
  year, per training schedule.

Options: `--worker-only`, `--year-only`, dataset file names for the year part.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from bench.backtest import DATA
from bench.forecast_scores import HOLIDAYS, ORIGIN_EVERY_H
from bench.planner_loop import ASSETS, T0, seeded_site
from cloud.backtest import Traces, read_site, read_traces
from cloud.forecast import GbmLoadForecaster
from cloud.forecast_load import Training

YEARS = ("opsd_kn_res4_nl_2023.csv", "ausgrid_c12_nl_2023.csv")
# name: (refit_days, update_days)
SCHEDULES = {"incremental (default)": (14, 1), "refit every 14 days": (14, 0), "refit daily": (1, 0)}
# the year part also runs the continuation's trees per day at half and double the default (8)
ROUNDS = {"incremental, 4 trees a day": 4, "incremental, 16 trees a day": 16}
REPEATS = 3
PLANS_PER_DAY = 96  # cloud.planner.PlannerOptions.replan_every: 15 min


@dataclass(frozen=True, slots=True)
class WorkerCost:
    refit_ms: float  # a plan that fits from scratch
    update_ms: float  # a plan that continues the model on the day since (mean over a 14-day cycle)
    fresh_fit_ms: float  # a plan that finds the model fresh, right after a full fit (80 trees)
    fresh_cycle_ms: float  # the same, mean over the cycle of continuations (80 .. 184 trees)

    def per_day_ms(self, refit_days: int, update: bool, plans: int = PLANS_PER_DAY) -> float:
        """CPU per site and day: the training due that day and the other plans' loading and predicting."""
        if update:
            return (self.refit_ms + (refit_days - 1) * self.update_ms) / refit_days + (plans - 1) * self.fresh_cycle_ms
        return self.refit_ms / refit_days + (plans - 1 / refit_days) * self.fresh_fit_ms


async def worker_cost() -> WorkerCost:
    """Process CPU (ms) of `site_load_forecast` over a 14-day cycle: the refit, the 13 daily continuations,
    and a plan an hour after each that finds the model fresh (the median of `REPEATS` cycles each)."""
    from cloud.assets import decode_assets
    from cloud.forecast_models import forecast_models
    from cloud.site_forecast import LoadChoice, ModelChoice, site_load_forecast
    from cloud.site_series import load_series

    step, choice = timedelta(minutes=15), ModelChoice(load=LoadChoice.GBM)
    assets = decode_assets(ASSETS)
    cycle = choice.load_refit // timedelta(days=1)
    first = T0.replace(minute=0) - timedelta(days=cycle)  # the cycle's days of telemetry after the first fit
    async with seeded_site("bench-load-training-") as db:

        async def plan(at: datetime) -> float:
            # the plan's own telemetry query is not the model's cost; the training window's query is
            series = await load_series(db, "s", at - timedelta(days=28), at, step, has_battery=True, has_ev=False)
            started = time.process_time()
            await site_load_forecast(db, "s", assets, series, 192, at, choice)
            return (time.process_time() - started) * 1000.0

        refit, update, fresh_fit, fresh_cycle = [], [], [], []
        for _ in range(REPEATS):
            async with db.engine.begin() as conn:
                await conn.execute(forecast_models.delete())
            refit.append(await plan(first))  # nothing stored: a full fit
            fresh = [await plan(first + timedelta(hours=1))]  # stored an hour ago: used as it is
            fresh_fit.append(fresh[0])
            days = []
            for d in range(1, cycle):  # each day: the continuation, then a plan an hour later
                days.append(await plan(first + timedelta(days=d)))
                fresh.append(await plan(first + timedelta(days=d, hours=1)))
            update.append(statistics.mean(days))
            fresh_cycle.append(statistics.mean(fresh))
    med = statistics.median
    return WorkerCost(med(refit), med(update), med(fresh_fit), med(fresh_cycle))


@dataclass(frozen=True, slots=True)
class YearScore:
    mae_kw: float
    train_cpu_s: float
    refits: int
    updates: int


def _origins(tr: Traces) -> Iterator[int]:
    every = round(ORIGIN_EVERY_H / tr.dt_h)
    yield from range(14 * tr.slots_per_day, tr.n - tr.slots_per_day, every)


def year_score(tr: Traces, tz: str, refit_days: int, update_days: int, update_rounds: int = 8) -> YearScore:
    """Day-ahead MAE through the year and the CPU its training took (training timed apart from predicting)."""
    country, _, subdiv = HOLIDAYS.get(tz, "").partition("/")
    gbm = GbmLoadForecaster(
        tr.start, tr.step, tz, country=country or None, subdiv=subdiv or None,
        refit_days=refit_days, update_days=update_days, update_rounds=update_rounds,
    )  # fmt: skip
    day = tr.slots_per_day
    errs, cpu, done = [], 0.0, {Training.REFIT: 0, Training.UPDATE: 0}
    for k in _origins(tr):
        started = time.process_time()
        what = gbm.train(tr.load_kw, k)
        cpu += time.process_time() - started
        if what is not None:
            done[what] += 1
        fc = gbm.predict(tr.load_kw, k, day)
        a = tr.load_kw[k : k + day]
        ok = ~np.isnan(a)
        errs.append(np.abs(fc[ok] - a[ok]))
    return YearScore(float(np.mean(np.concatenate(errs))), cpu, done[Training.REFIT], done[Training.UPDATE])


def main(argv: list[str]) -> None:
    names = [a for a in argv if not a.startswith("--")] or list(YEARS)
    if "--year-only" not in argv:
        w = asyncio.run(worker_cost())
        print(f"worker path, site_load_forecast, process CPU (median of {REPEATS} 14-day cycles, 15-min telemetry):")
        print(f"  full refit {w.refit_ms:.0f} ms, daily continuation {w.update_ms:.0f} ms, fresh plan "
              f"{w.fresh_fit_ms:.1f} ms after a fit, {w.fresh_cycle_ms:.1f} ms over the cycle")  # fmt: skip
        for name, (refit, update) in SCHEDULES.items():
            print(f"  {name}: {w.per_day_ms(refit, bool(update)):.0f} ms CPU per site and day ({PLANS_PER_DAY} plans)")
    if "--worker-only" in argv:
        return
    for name in names:
        tr = read_traces(str(DATA / name))
        tz = str(read_site(str(DATA / name)).get("tz", "Europe/Amsterdam"))
        print(f"{name} ({tr.n} slots, tz {tz}): day-ahead MAE kW, training CPU over the year")
        runs = [(label, refit, update, 8) for label, (refit, update) in SCHEDULES.items()]
        runs += [(label, 14, 1, rounds) for label, rounds in ROUNDS.items()]
        for label, refit, update, rounds in runs:
            s = year_score(tr, tz, refit, update, rounds)
            counts = f"{s.refits} refits, {s.updates} updates"
            print(f"  {label:28} MAE {s.mae_kw:.4f}  CPU {s.train_cpu_s:6.1f} s  ({counts})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
