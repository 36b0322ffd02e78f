"""`zapcloud backtest TRACES.csv`: what would the planner have saved on this site, and how much was there?

The traces (CSV: ts,import_price,export_price,load_kw,pv_kw; one row per slot, prices per kWh) are the
truth. Four strategies are settled against them with the same rules:

* no battery;
* self-consumption rules (charge from PV surplus, discharge to cover load, never touch the grid);
* our planner, rolling: every `--replan-hours` it sees only the past (load and PV up to now, prices as far
  as they would have been published: the day-ahead auction for tomorrow clears around 12:00 UTC), forecasts
  with the same forecasters the cloud uses (cloud/forecast.py), solves the same optimizer, and the site
  executes the plan's slots as the edge does until the next re-plan (planner.slot_mode: slots that only
  balance the house run the self-consumption rule on the real load and PV, the others follow the battery
  setpoint and the grid absorbs the forecast error);
* perfect foresight: the optimizer over the whole trace at once, knowing every price, load and PV value.

The capture ratio is (no-battery cost - planner cost) / (no-battery cost - perfect-foresight cost).

Settlement rules shared by all four: import and export per slot from the balance; when the export price is
negative, PV is curtailed (up to the PV output) rather than paid for exporting; battery wear is charged at
`cycle_cost` per kWh in or out, since the planner also weighs it.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from cloud.forecast import (
    FloatArray,
    Location,
    PvArray,
    PvFactor,
    clear_sky,
    forecast_load,
    forecast_pv,
    learn_pv_factor,
)
from cloud.optimizer import solve
from cloud.optimizer_io import Battery, Grid, Problem
from cloud.planner import slot_mode
from zapd.model import IntentMode

PRICE_PUBLICATION_HOUR_UTC = 12


class TraceError(ValueError):
    """The trace file cannot be used; the message names the line."""


@dataclass(frozen=True, slots=True)
class Traces:
    start: datetime
    step: timedelta
    import_price: FloatArray
    export_price: FloatArray
    load_kw: FloatArray
    pv_kw: FloatArray

    @property
    def n(self) -> int:
        return len(self.load_kw)

    @property
    def dt_h(self) -> float:
        return self.step.total_seconds() / 3600.0

    @property
    def slots_per_day(self) -> int:
        return int(timedelta(days=1) // self.step)

    def head(self, n: int) -> Traces:
        return Traces(
            self.start, self.step, self.import_price[:n], self.export_price[:n], self.load_kw[:n], self.pv_kw[:n]
        )


@dataclass(frozen=True, slots=True)
class Config:
    battery_kwh: float = 10.0
    battery_kw: float = 5.0
    efficiency: float = 0.95
    soc_min: float = 0.1
    soc_max: float = 0.95
    soc_initial: float = 0.5
    cycle_cost: float = 0.02
    replan_hours: float = 1.0
    horizon_hours: float = 48.0
    lat: float = 52.1
    lon: float = 5.18
    pv_kwp: float = 5.0
    tilt_deg: float = 35.0
    azimuth_deg: float = 180.0


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    cost: float
    import_kwh: float
    export_kwh: float
    throughput_kwh: float


@dataclass(frozen=True, slots=True)
class Report:
    outcomes: list[Outcome]
    slots: int
    replans: int
    planner_wall_s: float
    total_wall_s: float

    def by_name(self, name: str) -> Outcome:
        return next(o for o in self.outcomes if o.name == name)

    @property
    def capture_ratio(self) -> float:
        none = self.by_name("no battery").cost
        possible = none - self.by_name("perfect foresight").cost
        achieved = none - self.by_name("planner").cost
        return achieved / possible if possible > 1e-9 else math.nan


def read_traces(path: str) -> Traces:
    cols = ("ts", "import_price", "export_price", "load_kw", "pv_kw")
    stamps: list[datetime] = []
    data: list[list[float]] = []
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(line for line in fh if not line.startswith("#"))
            missing = [c for c in cols if c not in (reader.fieldnames or [])]
            if missing:
                raise TraceError(f"{path}: missing columns {', '.join(missing)}")
            for line, row in enumerate(reader, start=2):
                try:
                    ts = datetime.fromisoformat(row["ts"])
                    values = [float(row[c]) for c in cols[1:]]
                except (TypeError, ValueError) as exc:
                    raise TraceError(f"{path}: row {line}: {exc}") from None
                if ts.tzinfo is None:
                    raise TraceError(f"{path}: row {line}: ts without UTC offset")
                if not all(math.isfinite(v) for v in values) or values[2] < 0 or values[3] < 0:
                    raise TraceError(f"{path}: row {line}: values must be finite, load and pv >= 0")
                stamps.append(ts.astimezone(UTC))
                data.append(values)
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror or exc}") from None
    if len(stamps) < 2:
        raise TraceError(f"{path}: need at least two rows")
    step = stamps[1] - stamps[0]
    for i in range(1, len(stamps)):
        if stamps[i] - stamps[i - 1] != step:
            raise TraceError(f"{path}: row {i + 2}: not {step} after the previous row (gaps are not supported)")
    if timedelta(days=1) % step:
        raise TraceError(f"{path}: step {step} does not divide a day")
    arr = np.asarray(data, dtype=np.float64)
    return Traces(stamps[0], step, arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3])


# --- settlement ---------------------------------------------------------------------------


def settle(tr: Traces, charge_kw: FloatArray, discharge_kw: FloatArray, cycle_cost: float, name: str) -> Outcome:
    net = tr.load_kw - tr.pv_kw + charge_kw - discharge_kw
    imp = np.maximum(net, 0.0)
    exp = np.maximum(-net, 0.0)
    # negative export price: curtail PV instead of paying to export it
    exp = np.where(tr.export_price < 0, np.maximum(exp - tr.pv_kw, 0.0), exp)
    dt = tr.dt_h
    throughput = float(np.sum(charge_kw + discharge_kw)) * dt
    cost = dt * float(np.dot(tr.import_price, imp) - np.dot(tr.export_price, exp)) + cycle_cost * throughput
    return Outcome(name, cost, float(imp.sum() * dt), float(exp.sum() * dt), throughput)


def no_battery(tr: Traces) -> Outcome:
    zero = np.zeros(tr.n)
    return settle(tr, zero, zero, 0.0, "no battery")


def self_consumption(tr: Traces, cfg: Config) -> Outcome:
    dt, cap, eta = tr.dt_h, cfg.battery_kwh, cfg.efficiency
    soc = cfg.soc_initial
    charge = np.zeros(tr.n)
    discharge = np.zeros(tr.n)
    for t in range(tr.n):
        surplus = tr.pv_kw[t] - tr.load_kw[t]
        if surplus > 0:
            c = min(surplus, cfg.battery_kw, max(0.0, (cfg.soc_max - soc) * cap / (eta * dt)))
            charge[t] = c
            soc += c * eta * dt / cap
        else:
            d = min(-surplus, cfg.battery_kw, max(0.0, (soc - cfg.soc_min) * cap * eta / dt))
            discharge[t] = d
            soc -= d * dt / (eta * cap)
    return settle(tr, charge, discharge, cfg.cycle_cost, "self-consumption rules")


def _battery(cfg: Config, soc: float) -> Battery:
    return Battery(
        capacity_kwh=cfg.battery_kwh,
        soc_initial=min(max(soc, 0.0), 1.0),
        soc_min=cfg.soc_min,
        soc_max=cfg.soc_max,
        max_charge_kw=cfg.battery_kw,
        max_discharge_kw=cfg.battery_kw,
        charge_efficiency=cfg.efficiency,
        discharge_efficiency=cfg.efficiency,
        cycle_cost_per_kwh=cfg.cycle_cost,
    )


# The traces carry no connection limit; this one never binds for a household.
_GRID = Grid(max_import_kw=1000.0, max_export_kw=1000.0)


def perfect_foresight(tr: Traces, cfg: Config) -> Outcome:
    problem = Problem(
        start=tr.start,
        step_minutes=tr.step.total_seconds() / 60.0,
        import_price=tr.import_price.tolist(),
        export_price=tr.export_price.tolist(),
        load_kw=tr.load_kw.tolist(),
        pv_kw=tr.pv_kw.tolist(),
        battery=_battery(cfg, cfg.soc_initial),
        grid=_GRID,
    )
    solution = solve(problem, time_limit_s=600.0)
    if not solution.battery_charge_kw:
        raise RuntimeError(f"perfect-foresight solve failed: {solution.status}: {solution.message}")
    return settle(
        tr,
        np.asarray(solution.battery_charge_kw),
        np.asarray(solution.battery_discharge_kw),
        cfg.cycle_cost,
        "perfect foresight",
    )


def known_price_slots(tr: Traces, k: int) -> int:
    """How many slots from k on have published prices at the time of slot k (day-ahead rule)."""
    now = tr.start + tr.step * k
    midnight = datetime.combine(now.date(), datetime.min.time(), tzinfo=UTC)
    days = 2 if now.hour >= PRICE_PUBLICATION_HOUR_UTC else 1
    return int((midnight + timedelta(days=days) - now) // tr.step)


def rolling_planner(tr: Traces, cfg: Config) -> tuple[Outcome, int]:
    charge, discharge, replans = rolling_flows(tr, cfg)
    return settle(tr, charge, discharge, cfg.cycle_cost, "planner"), replans


def rolling_flows(tr: Traces, cfg: Config) -> tuple[FloatArray, FloatArray, int]:
    """The battery's executed charge/discharge per slot under the rolling planner, and the re-plan count.

    Slot t's decision may use: prices published by t, load and PV before t (forecasts), and the real load
    and PV of slot t itself only through the edge's self-consumption rule, which measures them live.
    """
    spd = tr.slots_per_day
    dt = tr.dt_h
    horizon_max = round(cfg.horizon_hours / dt)
    every = max(1, round(cfg.replan_hours / dt))
    # clear sky for the whole trace (and a horizon past its end) once: pvlib per re-plan would dominate
    sky = clear_sky(
        Location(cfg.lat, cfg.lon),
        [PvArray(cfg.pv_kwp, cfg.tilt_deg, cfg.azimuth_deg)],
        tr.start,
        tr.step,
        tr.n + horizon_max,
    ).pv_kw
    charge = np.zeros(tr.n)
    discharge = np.zeros(tr.n)
    soc = cfg.soc_initial
    cap, eta = cfg.battery_kwh, cfg.efficiency
    pv_days, load_days = 14, 28
    factor = PvFactor()
    replans = 0
    for k in range(0, tr.n, every):
        horizon = min(horizon_max, known_price_slots(tr, k), tr.n - k)
        if horizon <= 0:
            break
        if k % spd == 0 or replans == 0:  # daily ratios: re-learning once a day is enough
            lo = max(0, k - pv_days * spd)
            factor = learn_pv_factor(tr.pv_kw[lo:k], sky[lo:k], spd, cfg.pv_kwp)
        pv_fc = forecast_pv(sky[k : k + horizon], factor)
        load_fc = forecast_load(tr.load_kw[max(0, k - load_days * spd) : k], horizon, spd)
        problem = Problem(
            start=tr.start + tr.step * k,
            step_minutes=tr.step.total_seconds() / 60.0,
            import_price=tr.import_price[k : k + horizon].tolist(),
            export_price=tr.export_price[k : k + horizon].tolist(),
            load_kw=load_fc.tolist(),
            pv_kw=pv_fc.tolist(),
            battery=_battery(cfg, soc),
            grid=_GRID,
        )
        solution = solve(problem)
        replans += 1
        if not solution.battery_charge_kw:
            continue  # hold the battery until the next re-plan (the edge would run its fallback)
        for j in range(min(every, horizon)):
            t = k + j
            # as the edge executes a plan slot (planner.slot_mode): self-consumption slots balance the real
            # load and PV, setpoint slots follow the plan; both within the battery's real limits
            if slot_mode(solution.grid_import_kw[j], solution.grid_export_kw[j]) is IntentMode.SELF_CONSUMPTION:
                want = tr.pv_kw[t] - tr.load_kw[t]
            else:
                want = solution.battery_charge_kw[j] - solution.battery_discharge_kw[j]
            c = min(max(want, 0.0), cfg.battery_kw, max(0.0, (cfg.soc_max - soc) * cap / (eta * dt)))
            d = min(max(-want, 0.0), cfg.battery_kw, max(0.0, (soc - cfg.soc_min) * cap * eta / dt))
            charge[t], discharge[t] = c, d
            soc += (c * eta - d / eta) * dt / cap
    return charge, discharge, replans


def run(tr: Traces, cfg: Config) -> Report:
    started = time.perf_counter()
    base = no_battery(tr)
    rules = self_consumption(tr, cfg)
    t0 = time.perf_counter()
    planner, replans = rolling_planner(tr, cfg)
    planner_s = time.perf_counter() - t0
    best = perfect_foresight(tr, cfg)
    return Report([base, rules, planner, best], tr.n, replans, planner_s, time.perf_counter() - started)


def format_report(report: Report, tr: Traces) -> str:
    days = tr.n * tr.dt_h / 24
    lines = [
        f"backtest: {tr.n} slots of {tr.step} ({days:.0f} days) from {tr.start.isoformat()}, {report.replans} re-plans",
        f"{'strategy':<24} {'cost':>10} {'saving':>10} {'import kWh':>11} {'export kWh':>11} {'battery kWh':>12}",
    ]
    none = report.by_name("no battery").cost
    for o in report.outcomes:
        lines.append(
            f"{o.name:<24} {o.cost:>10.2f} {none - o.cost:>10.2f} {o.import_kwh:>11.1f} {o.export_kwh:>11.1f} "
            f"{o.throughput_kwh:>12.1f}"
        )
    lines.append(f"capture ratio (planner saving / possible saving): {report.capture_ratio:.3f}")
    lines.append(f"wall time: planner {report.planner_wall_s:.1f} s, total {report.total_wall_s:.1f} s")
    return "\n".join(lines)


def config_from_args(args: argparse.Namespace) -> Config:
    d = Config()
    return Config(
        battery_kwh=args.battery_kwh,
        battery_kw=args.battery_kw,
        replan_hours=args.replan_hours,
        horizon_hours=args.horizon_hours,
        cycle_cost=getattr(args, "cycle_cost", d.cycle_cost),
        lat=getattr(args, "lat", d.lat),
        lon=getattr(args, "lon", d.lon),
        pv_kwp=getattr(args, "pv_kwp", d.pv_kwp),
        tilt_deg=getattr(args, "tilt", d.tilt_deg),
        azimuth_deg=getattr(args, "azimuth", d.azimuth_deg),
    )


def run_backtest(args: argparse.Namespace) -> int:
    """Exit 0 with the table on stdout; 2 for a bad trace file or options (one line on stderr)."""
    try:
        tr = read_traces(args.traces)
    except TraceError as exc:
        print(f"zapcloud backtest: {exc}", file=sys.stderr)
        return 2
    days = getattr(args, "days", None)
    if days:
        tr = tr.head(int(days * tr.slots_per_day))
    cfg = config_from_args(args)
    if cfg.battery_kwh <= 0 or cfg.battery_kw < 0 or cfg.replan_hours <= 0 or cfg.horizon_hours <= 0:
        print("zapcloud backtest: battery size, power, re-plan and horizon hours must be positive", file=sys.stderr)
        return 2
    report = run(tr, cfg)
    print(format_report(report, tr))
    return 0


__all__ = [
    "Config",
    "Outcome",
    "Report",
    "TraceError",
    "Traces",
    "format_report",
    "known_price_slots",
    "no_battery",
    "perfect_foresight",
    "read_traces",
    "rolling_flows",
    "rolling_planner",
    "run",
    "run_backtest",
    "self_consumption",
    "settle",
]
