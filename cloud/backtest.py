"""`zapcloud backtest TRACES.csv`: what would the whole chain have saved on this site, and how much was there?

The traces (CSV: ts,import_price,export_price,load_kw,pv_kw[,a PV forecast column]; one row per slot, prices per
kWh) are the truth. Four strategies are settled against them with the same rules:

* no battery;
* the edge's own self-consumption rule: the zapd fallback ladder with no plan (rung SELF_CONSUMPTION);
* our planner, rolling: every `replan_hours` it sees only what was known then (load and PV up to now, prices
  as far as they were published: day-ahead prices for tomorrow appear at `price_publication` site-local time),
  forecasts (cloud/forecast.py), solves the optimizer, turns the solution into plan intents exactly as the
  cloud does (cloud.planner.slot_intent) and the simulated edge executes them;
* perfect foresight: the optimizer over the whole trace at once, knowing every price, load and PV value.

The edge is not re-implemented: every slot, the simulated site's meter and battery readings (the slot's real
load and PV, the battery's SoC and its last power) go into `zapd.controller.decide_batteries`, the function the
daemon's controller calls each cycle: the fallback ladder (`fallback.policy.choose`), the intent's battery
power (`fallback.policy.resolve_battery_w`, where forecast errors are absorbed or not), the plan's grid limits
and the safety envelope (`zapd.envelope.clamp_batteries`). One decision per data slot: the data has one load
and PV value per slot, so a faster tick would see the same numbers. The battery then does what it was told,
within its own SoC limits and efficiency (a BMS stops at the reserve even when the AC request is larger).

The capture ratio is (no-battery cost - planner cost) / (no-battery cost - perfect-foresight cost).

Settlement rules shared by all four: import and export per slot from the balance; when the export price is
negative, PV is curtailed (up to the PV output) rather than paid for exporting; battery wear is charged at
`cycle_cost` per kWh in or out, since the planner also weighs it.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import math
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from multiprocessing import get_context
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from cloud.backtest_config import (
    BOUNDS,
    MAX_POWER_KW,
    MAX_PRICE_ABS,
    NO_LIMIT_KW,
    SITE_KEYS,
    Config,
    Forecast,
    LoadModel,
    PvModel,
    PvSpread,
    add_arguments,
    config_from_args,
    config_problem,
    options_problem,
)
from cloud.execution import plan_values, slot_intent
from cloud.forecast import (
    DEFAULT_FACTOR_CLEAR,
    NOWCAST_RATIO_BOUNDS,
    NOWCAST_RECENT_H,
    FloatArray,
    GbmLoadForecaster,
    Location,
    PvArray,
    PvFactor,
    PvShape,
    clear_sky,
    forecast_load,
    forecast_load_persistence,
    forecast_pv,
    learn_pv_factor,
    learn_pv_shape,
    pv_nowcast,
    pv_ratio_spread,
)
from cloud.forecast_load import (
    LoadQuantiles,
    day_level_persistence,
    day_load_ratios,
    day_types,
    error_persistence,
    forecast_load_daytype,
    forecast_load_level,
    zone_country,
)
from cloud.forecast_price import PriceModel, forecast_prices, terminal_value
from cloud.forecast_pv import PvSiteForecaster, SkyGrid
from cloud.forecast_pv_day import (
    PV_MEAN_DAYS,
    PvDaySpread,
    PvSpreadHistory,
    learn_spread_history,
    pv_day_outlook_from_series,
)
from cloud.forecast_pv_index import (
    IndexDays,
    IndexOutlook,
    PvIndexError,
    index_days,
    index_outlook,
    index_ratios,
    plan_levels,
    read_pv_index,
)
from cloud.optimizer import WarmStart, solve
from cloud.optimizer_io import Battery, DemandCharge, Grid, Problem, Solution
from cloud.peak_limit import NO_TARGET, TARGET_HISTORY_DAYS, PeakTarget, month_target, peak_import_limit_w
from cloud.plan_grid import coarse_problem, coarse_slots, far_grid, fine_solution, ratios_on_grid
from cloud.plan_risk import (
    LOAD_RISK_HISTORY_DAYS,
    NEUTRAL,
    NO_LOAD_RISK,
    PvRatios,
    checked_pv_ratios,
    learn_load_risk,
    night_shared_slots,
    pv_scenario_ratios,
    reserve_load,
    solve_two_stage,
)
from cloud.site_infer import SiteEstimate, infer_site, registration_warnings, solar_zone
from cloud.tariffs import Tariff, TariffError, decode_tariff, price_arrays
from drivers.config_structs import BatteryLimits
from zapd.controller import decide_batteries
from zapd.envelope import SiteLimits
from zapd.model import Plan, PlanSlot
from zapd.state import BatteryView, Snapshot

BATTERY_ID: Final = "battery"
# --infer-site: the first estimate of the site from its PV after a week, again at 14 and 28 days, then every 4
# weeks, each from the last 91 days (a season: enough change of day length to tell latitude from tilt)
SITE_FIRST_DAY: Final = 7
SITE_EVERY_DAYS: Final = 28
SITE_HISTORY_DAYS: Final = 91
# --infer-site without a time zone: the default zone is kept while its UTC offset is within this of the learned
# longitude's solar time (civil time runs up to two hours off the sun: Spain in summer, western China), else
# prices are published in the solar time zone (cloud.site_infer.solar_zone)
SOLAR_ZONE_SLACK_H: Final = 2.0
WORST_DAYS: Final = 10


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
    pv_forecast_kw: FloatArray | None = None  # an external PV forecast, NaN where it has no value
    pv_index: FloatArray | None = None  # a regional day-ahead PV forecast (`read_pv_index`), NaN where it has none

    @property
    def n(self) -> int:
        return len(self.load_kw)

    @property
    def dt_h(self) -> float:
        return self.step.total_seconds() / 3600.0

    @property
    def slots_per_day(self) -> int:
        return int(timedelta(days=1) // self.step)

    def window(self, a: int, b: int) -> Traces:
        fc = None if self.pv_forecast_kw is None else self.pv_forecast_kw[a:b]
        index = None if self.pv_index is None else self.pv_index[a:b]
        return Traces(
            self.start + self.step * a,
            self.step,
            self.import_price[a:b],
            self.export_price[a:b],
            self.load_kw[a:b],
            self.pv_kw[a:b],
            fc,
            index,
        )

    def head(self, n: int) -> Traces:
        return self.window(0, n)


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    cost: float
    import_kwh: float
    export_kwh: float
    throughput_kwh: float


@dataclass(slots=True)
class SlotLog:
    """Per data slot: what the planner forecast and planned, what the edge did, what happened."""

    load_fc_kw: FloatArray
    pv_fc_kw: FloatArray
    planned_battery_kw: FloatArray
    battery_kw: FloatArray
    soc: FloatArray  # at the end of the slot
    intent: list[str] = field(default_factory=list)

    @classmethod
    def empty(cls, n: int) -> SlotLog:
        nan = np.full(n, math.nan)
        return cls(nan.copy(), nan.copy(), nan.copy(), np.zeros(n), nan.copy(), [""] * n)


@dataclass(frozen=True, slots=True)
class Report:
    outcomes: list[Outcome]
    slots: int
    replans: int
    planner_wall_s: float
    total_wall_s: float
    log: SlotLog | None = None
    worst_days: dict[str, float] = field(default_factory=dict)  # strategy -> cost of its WORST_DAYS costliest days

    def by_name(self, name: str) -> Outcome:
        return next(o for o in self.outcomes if o.name == name)

    def _saving(self, name: str) -> float:
        return self.by_name("no battery").cost - self.by_name(name).cost

    @property
    def capture_ratio(self) -> float:
        possible = self._saving("perfect foresight")
        return self._saving("planner") / possible if possible > 1e-9 else math.nan

    @property
    def over_rule(self) -> float:
        """(planner - rule) as a share of (oracle - rule): what the cloud adds over the edge's own rule."""
        headroom = self._saving("perfect foresight") - self._saving("self-consumption rules")
        gained = self._saving("planner") - self._saving("self-consumption rules")
        return gained / headroom if headroom > 1e-9 else math.nan


COLUMNS: Final = ("ts", "import_price", "export_price", "load_kw", "pv_kw")


# The finest settlement interval in use (the Australian NEM's 5 minutes): a finer trace would make each plan's
# LP (48 h of slots) and the perfect-foresight year grow without telling anything a 5-minute one does not.
MIN_STEP: Final = timedelta(minutes=5)


def _row_problem(values: list[float], fc: float, fc_column: str | None) -> str | None:
    """What is wrong with one trace row's numbers (BOUNDS' units: EUR/kWh and kW), or None."""
    for name, value in zip(COLUMNS[1:], values, strict=True):
        price = name.endswith("_price")
        lo, hi = (-MAX_PRICE_ABS, MAX_PRICE_ABS) if price else (0.0, MAX_POWER_KW)
        if not (math.isfinite(value) and lo <= value <= hi):
            unit = "EUR/kWh (per kWh, not per MWh)" if price else "kW"
            return f"{name} = {value!r} is not a finite number within {lo:g} .. {hi:g} {unit}"
    if not math.isnan(fc) and not (math.isfinite(fc) and 0.0 <= fc <= MAX_POWER_KW):
        return f"{fc_column} = {fc!r} is not a finite number within 0 .. {MAX_POWER_KW:g} kW (or empty)"
    return None


def read_site(path: str) -> dict[str, float | str]:
    """The site a trace's `# site: key=value ...` comment line names (argparse dest -> value), each bounded.

    `zapcloud backtest` uses these where the option is not given, so a trace that names its house runs that
    house, not the default one. Keys are the options' names without "--" (SITE_KEYS); text after the pairs is
    a comment.
    """
    site: dict[str, float | str] = {}
    try:
        with open(path) as fh:
            for number, line in enumerate(fh, start=1):
                if not line.startswith("#"):
                    break
                if not line.startswith("# site:"):
                    continue
                for key, text in re.findall(r"(\S+)=(\S+)", line):
                    dest = SITE_KEYS.get(key)
                    if dest is None:
                        raise TraceError(f"{path}: line {number}: unknown '# site:' key {key!r}")
                    try:
                        value: float | str = text if dest == "tz" else float(text)
                    except ValueError:
                        raise TraceError(f"{path}: line {number}: site {key}={text!r} is not a number") from None
                    bound = BOUNDS.get(dest)
                    if isinstance(value, float) and bound is not None and (problem := bound.problem(value)):
                        raise TraceError(f"{path}: line {number}: site {problem}")
                    site[dest] = value
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not a text file") from None
    return site


def site_config(path: str, base: Config | None = None) -> Config:
    """`base` (default: Config()) with the trace's `# site:` line applied: the house the trace says it is."""
    cfg = base or Config()
    site = read_site(path)

    def number(dest: str, default: float) -> float:
        return float(site.get(dest, default))

    return dataclasses.replace(
        cfg,
        tz=str(site.get("tz", cfg.tz)),
        lat=number("lat", cfg.lat),
        lon=number("lon", cfg.lon),
        pv_kwp=number("pv_kwp", cfg.pv_kwp),
        tilt_deg=number("tilt", cfg.tilt_deg),
        azimuth_deg=number("azimuth", cfg.azimuth_deg),
    )


SPOT_COLUMN: Final = "spot_price"  # the day-ahead price (EUR/kWh) a --tariff turns into import / export prices


def read_traces(path: str, pv_forecast_column: str | None = None, tariff: Tariff | None = None) -> Traces:
    """The trace file, every row's numbers bounded (`_row_problem`).

    With a `tariff` (cloud/tariffs.py, as registered) the import and export prices are the tariff's, made by
    the cloud's own tariff code from each row's `spot_price` (needed only if the tariff follows the spot
    market); the file's import_price / export_price columns are then not read.
    """
    stamps: list[datetime] = []
    data: list[list[float]] = []
    forecast: list[float] = []
    spots: list[float] = []
    numbers: list[int] = []  # the file's line number of every line the csv reader was given (comments are not)
    own_prices = tariff is None
    spot_needed = tariff is not None and tariff.needs_spot

    def content(fh: Iterable[str]) -> Iterator[str]:
        for number, text in enumerate(fh, start=1):
            if not text.startswith("#"):
                numbers.append(number)
                yield text

    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(content(fh))
            fields = reader.fieldnames or []
            wanted = [c for c in COLUMNS if own_prices or not c.endswith("_price")]
            wanted += [*([SPOT_COLUMN] if spot_needed else []), *([pv_forecast_column] if pv_forecast_column else [])]
            missing = [c for c in wanted if c not in fields]
            if missing:
                raise TraceError(f"{path}: missing columns {', '.join(missing)}")
            for row in reader:
                line = numbers[reader.line_num - 1]
                if any(row.get(c) is None for c in wanted):
                    raise TraceError(f"{path}: line {line}: fewer fields than the header's {len(fields)}")
                try:
                    ts = datetime.fromisoformat(row["ts"])
                    values = [float(row[c]) if own_prices or not c.endswith("_price") else 0.0 for c in COLUMNS[1:]]
                    fc = float(row[pv_forecast_column]) if pv_forecast_column and row[pv_forecast_column] else math.nan
                    spot = float(row[SPOT_COLUMN]) if spot_needed else 0.0
                except (TypeError, ValueError) as exc:
                    raise TraceError(f"{path}: line {line}: {exc}") from None
                if ts.tzinfo is None:
                    raise TraceError(f"{path}: line {line}: ts {row['ts']} without UTC offset (write Z or +hh:mm)")
                problem = _row_problem(values, fc, pv_forecast_column)
                if not (math.isfinite(spot) and abs(spot) <= MAX_PRICE_ABS):
                    problem = f"{SPOT_COLUMN} = {spot!r} is not a finite number within ±{MAX_PRICE_ABS:g} EUR/kWh"
                if problem:
                    raise TraceError(f"{path}: line {line}: {problem}")
                stamps.append(ts.astimezone(UTC))
                data.append(values)
                forecast.append(fc)
                spots.append(spot)
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not a text file") from None
    except csv.Error as exc:  # e.g. a field over the csv module's 128 kB limit
        raise TraceError(f"{path}: {exc}") from None
    if len(stamps) < 2:
        raise TraceError(f"{path}: need at least two rows")
    step = _trace_step(stamps)
    if not MIN_STEP <= step <= timedelta(days=1) or timedelta(days=1) % step:
        raise TraceError(f"{path}: step {step} does not divide a day or is shorter than {MIN_STEP}")
    rows = numbers[1:]  # the data rows' line numbers (the header was the first line read)
    for i in range(1, len(stamps)):
        if problem := _time_problem(stamps[i - 1], stamps[i], step):
            raise TraceError(f"{path}: line {rows[i]}: {problem}")
    arr = np.asarray(data, dtype=np.float64)
    if tariff is not None:
        arr[:, 0], arr[:, 1] = _tariff_prices(path, tariff, stamps, spots if spot_needed else None, rows)
    fc_arr = np.asarray(forecast, dtype=np.float64) if pv_forecast_column else None
    return Traces(stamps[0], step, arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], fc_arr)


def _trace_step(stamps: list[datetime]) -> timedelta:
    """The trace's step: the most common time between consecutive rows (so that one duplicated or missing row
    is reported where it is, not as a trace of another step)."""
    gaps = Counter(b - a for a, b in itertools.pairwise(stamps))
    return max(gaps, key=lambda gap: (gaps[gap], -abs(gap.total_seconds())))


def _time_problem(before: datetime, ts: datetime, step: timedelta) -> str | None:
    """Why `ts` cannot follow `before` in a trace of `step`, in the words a user fixes it with, or None."""
    gap = ts - before
    if gap == step:
        return None
    when = ts.isoformat().replace("+00:00", "Z")
    if gap == timedelta(0):
        return (
            f"{when} again: the same time as the previous row (an hour written twice at a daylight-saving change? "
            "every row needs its own UTC time)"
        )
    if gap < timedelta(0):
        return f"{when} is before the previous row: rows must be in time order"
    if gap % step == timedelta(0):
        missing = gap // step - 1
        return (
            f"{when} follows {before.isoformat().replace('+00:00', 'Z')}: {missing} row{'s' if missing > 1 else ''} "
            f"of {step} missing (gaps are not supported: fill them, e.g. with the same time a day earlier)"
        )
    return f"{when} is {gap} after the previous row, not the trace's step of {step}"


def _tariff_prices(
    path: str, tariff: Tariff, stamps: list[datetime], spot: list[float] | None, lines: list[int]
) -> tuple[FloatArray, FloatArray]:
    """Import and export price per row by cloud.tariffs (time of use, fees, tax, VAT), bounded like a trace's."""
    try:
        imp, exp = (np.asarray(x, dtype=np.float64) for x in price_arrays(tariff, stamps, spot))
    except TariffError as exc:
        raise TraceError(f"{path}: {exc}") from None
    for name, prices in (("import", imp), ("export", exp)):
        bad = np.flatnonzero(~(np.abs(prices) <= MAX_PRICE_ABS))
        if bad.size:
            raise TraceError(
                f"{path}: line {lines[bad[0]]}: the tariff's {name} price {prices[bad[0]]!r} is not within "
                f"±{MAX_PRICE_ABS:g} EUR/kWh"
            )
    return imp, exp


def hold(tr: Traces, step: timedelta) -> Traces:
    """The traces in slots of `step`, a divisor of their own step: each row's values held over its sub-slots.

    Loads and PV are a row's mean power, so every sub-slot of it carries the same kW and the energy is
    unchanged; a price holds over its row. The planner and the edge then decide per `step`, on no more
    information than the rows carry (15-minute planning over hourly data).
    """
    if step == tr.step:
        return tr
    r = tr.step // step

    def rep(a: FloatArray) -> FloatArray:
        return np.repeat(a, r)

    fc = None if tr.pv_forecast_kw is None else rep(tr.pv_forecast_kw)
    return Traces(tr.start, step, rep(tr.import_price), rep(tr.export_price), rep(tr.load_kw), rep(tr.pv_kw), fc)


# --- settlement ---------------------------------------------------------------------------


def settle(
    tr: Traces,
    charge_kw: FloatArray,
    discharge_kw: FloatArray,
    cycle_cost: float,
    name: str,
    cfg: Config | None = None,
) -> Outcome:
    """The cost of these battery flows; with `cfg`, also its tariff's capacity charge (`capacity_cost`)."""
    net = tr.load_kw - tr.pv_kw + charge_kw - discharge_kw
    imp = np.maximum(net, 0.0)
    exp = np.maximum(-net, 0.0)
    # negative export price: curtail PV instead of paying to export it
    exp = np.where(tr.export_price < 0, np.maximum(exp - tr.pv_kw, 0.0), exp)
    dt = tr.dt_h
    throughput = float(np.sum(charge_kw + discharge_kw)) * dt
    cost = dt * float(np.dot(tr.import_price, imp) - np.dot(tr.export_price, exp)) + cycle_cost * throughput
    if cfg is not None and cfg.capacity_per_kw > 0.0:
        cost += capacity_cost(tr, imp, cfg)
    return Outcome(name, cost, float(imp.sum() * dt), float(exp.sum() * dt), throughput)


def billing_months(tr: Traces, tz: str) -> npt.NDArray[np.int64]:
    """Each slot's calendar month in `tz` (year * 12 + month): a capacity charge's billing period."""
    zone = ZoneInfo(tz)
    local = [(tr.start + tr.step * t).astimezone(zone) for t in range(tr.n)]
    return np.array([d.year * 12 + d.month for d in local], dtype=np.int64)


def capacity_cost(tr: Traces, import_kw: FloatArray, cfg: Config) -> float:
    """`capacity_per_kw` times each billing month's highest import. The tariff bills the highest 15-minute
    mean; a trace has one mean per slot, so for slots longer than 15 minutes this is a lower bound."""
    _, index = np.unique(billing_months(tr, cfg.capacity_tz), return_inverse=True)
    peaks = np.zeros(int(index.max()) + 1)
    np.maximum.at(peaks, index, import_kw)
    return cfg.capacity_per_kw * float(np.maximum(peaks, cfg.capacity_min_kw).sum())


def _demand(cfg: Config, peak_already_kw: float, reserve_kwh: list[float] | None = None) -> DemandCharge | None:
    """What the optimizer sees of the capacity charge: import above this month's peak so far (or its target)
    costs its price; `reserve_kwh` the battery keeps for the edge to hold it."""
    if cfg.capacity_per_kw <= 0.0:
        return None
    return DemandCharge(
        price_per_kw=cfg.capacity_per_kw,
        peak_already_kw=max(0.0, peak_already_kw, cfg.capacity_min_kw),
        reserve_kwh=reserve_kwh or [],
    )


def no_battery(tr: Traces, cfg: Config | None = None) -> Outcome:
    zero = np.zeros(tr.n)
    return settle(tr, zero, zero, 0.0, "no battery", cfg)


# --- the simulated edge -------------------------------------------------------------------


class Edge:
    """A site as zapd sees it: one battery behind the meter; each slot one `decide_batteries` call."""

    def __init__(self, tr: Traces, cfg: Config) -> None:
        self.tr = tr
        self.cfg = cfg
        self.soc = cfg.soc_initial
        self.power_w = 0.0
        self.tick_s = tr.step.total_seconds()
        self.envelope = {
            BATTERY_ID: BatteryLimits(
                capacity_wh=cfg.battery_kwh * 1000.0,
                max_charge_w=cfg.max_charge_kw * 1000.0,
                max_discharge_w=cfg.max_discharge_kw * 1000.0,
                reserve_soc=cfg.soc_min,
                max_soc=cfg.soc_max,
            )
        }
        self.site = SiteLimits(
            fuse_limit_w=cfg.grid_import_kw * 1000.0,
            fuse_a=1e9,
            voltage_v=230.0,
            phases=3,
            max_export_w=cfg.grid_export_kw * 1000.0 if cfg.grid_export_kw < NO_LIMIT_KW else None,
        )
        self.charge = np.zeros(tr.n)
        self.discharge = np.zeros(tr.n)

    def step(self, t: int, plan: Plan | None) -> tuple[float, str]:
        """Run slot t: the controller decides on the live readings, the battery follows. Returns (kW, rung)."""
        tr, cfg = self.tr, self.cfg
        now = tr.start + tr.step * t + timedelta(seconds=1)
        base_w = (tr.load_kw[t] - tr.pv_kw[t]) * 1000.0
        snapshot = Snapshot(
            ts=now,
            grid_w=base_w + self.power_w,  # the meter still shows the battery's last power
            phase_currents_a=None,
            pv_w=tr.pv_kw[t] * 1000.0,
            batteries={BATTERY_ID: BatteryView(BATTERY_ID, self.soc, self.power_w)},
        )
        decision, setpoints = decide_batteries(now, snapshot, plan, True, self.site, self.envelope, self.tick_s)
        want_kw = sum(sp.power_w for sp in setpoints) / 1000.0
        dt, cap, eta_c, eta_d = tr.dt_h, cfg.battery_kwh, cfg.eta_charge, cfg.eta_discharge
        # the battery's own limits (its BMS), which also account for the conversion losses
        c = min(max(want_kw, 0.0), cfg.max_charge_kw, max(0.0, (cfg.soc_max - self.soc) * cap / (eta_c * dt)))
        d = min(max(-want_kw, 0.0), cfg.max_discharge_kw, max(0.0, (self.soc - cfg.soc_min) * cap * eta_d / dt))
        self.charge[t], self.discharge[t] = c, d
        self.soc += (c * eta_c - d / eta_d) * dt / cap
        self.power_w = (c - d) * 1000.0
        intent = decision.intent
        label = intent.mode.value if intent.absorb is None else f"{intent.mode.value}:{intent.absorb.value}"
        return c - d, f"{decision.rung.name.lower()}/{label}"


def self_consumption(tr: Traces, cfg: Config) -> Outcome:
    """The edge with no plan at all: zapd's fallback ladder runs its self-consumption rung."""
    edge = Edge(tr, cfg)
    for t in range(tr.n):
        edge.step(t, None)
    return settle(tr, edge.charge, edge.discharge, cfg.cycle_cost, "self-consumption rules", cfg)


def _battery(cfg: Config, soc: float, terminal_value: float = 0.0) -> Battery:
    return Battery(
        capacity_kwh=cfg.battery_kwh,
        soc_initial=min(max(soc, 0.0), 1.0),
        soc_min=cfg.soc_min,
        soc_max=cfg.soc_max,
        max_charge_kw=cfg.max_charge_kw,
        max_discharge_kw=cfg.max_discharge_kw,
        charge_efficiency=cfg.eta_charge,
        discharge_efficiency=cfg.eta_discharge,
        cycle_cost_per_kwh=cfg.cycle_cost,
        terminal_value_per_kwh=terminal_value,
    )


def _grid(cfg: Config) -> Grid:
    return Grid(max_import_kw=cfg.grid_import_kw, max_export_kw=cfg.grid_export_kw)


def perfect_foresight(tr: Traces, cfg: Config) -> Outcome:
    """One solve over the whole trace; with a capacity charge one per billing month (each month's peak is
    billed on its own, which one LP over all months cannot express), the SoC carried from month to month."""
    cuts = [0, tr.n]
    if cfg.capacity_per_kw > 0.0:
        months = billing_months(tr, cfg.capacity_tz)
        cuts = [0, *(np.flatnonzero(np.diff(months)) + 1).tolist(), tr.n]
    soc = cfg.soc_initial
    charge: list[float] = []
    discharge: list[float] = []
    for a, b in itertools.pairwise(cuts):
        w = tr.window(a, b)
        problem = Problem(
            start=w.start,
            step_minutes=tr.step.total_seconds() / 60.0,
            import_price=w.import_price.tolist(),
            export_price=w.export_price.tolist(),
            load_kw=w.load_kw.tolist(),
            pv_kw=w.pv_kw.tolist(),
            battery=_battery(cfg, soc),
            grid=_grid(cfg),
            demand_charge=_demand(cfg, 0.0),
        )
        solution = solve(problem, time_limit_s=600.0)
        if not solution.battery_charge_kw:
            raise RuntimeError(f"perfect-foresight solve failed: {solution.status}: {solution.message}")
        charge += solution.battery_charge_kw
        discharge += solution.battery_discharge_kw
        soc = solution.soc[-1]
    return settle(tr, np.asarray(charge), np.asarray(discharge), cfg.cycle_cost, "perfect foresight", cfg)


def known_price_slots(tr: Traces, k: int, cfg: Config | None = None) -> int:
    """How many slots from k on have published prices at the start of slot k.

    Day-ahead prices for site-local day D+1 are published at `price_publication` site-local time on day D, so
    before that only today's (local) slots are known, after it today's and tomorrow's.
    """
    cfg = cfg or Config()
    zone = cfg.zone
    now = tr.start + tr.step * k
    local = now.astimezone(zone)
    days = 2 if local.time() >= cfg.price_publication else 1
    end = datetime.combine(local.date() + timedelta(days=days), clock_time(0), tzinfo=zone).astimezone(UTC)
    return max(0, int((end - now) // tr.step))


def at_quantile(q: LoadQuantiles, level: float) -> FloatArray:
    """The load at quantile `level` (0.1 .. 0.9), linear between the forecaster's P10, P50 and P90."""
    level = min(max(level, 0.1), 0.9)
    if level <= 0.5:
        w = (level - 0.1) / 0.4
        return np.asarray((1.0 - w) * q.p10 + w * q.p50, dtype=np.float64)
    w = (level - 0.5) / 0.4
    return np.asarray((1.0 - w) * q.p50 + w * q.p90, dtype=np.float64)


def daily_costs(tr: Traces, charge_kw: FloatArray, discharge_kw: FloatArray, cfg: Config) -> FloatArray:
    """The settled cost of each site-local day (the same rules as `settle`), for the worst days' cost."""
    net = tr.load_kw - tr.pv_kw + charge_kw - discharge_kw
    imp, exp = np.maximum(net, 0.0), np.maximum(-net, 0.0)
    exp = np.where(tr.export_price < 0, np.maximum(exp - tr.pv_kw, 0.0), exp)
    per_slot = tr.dt_h * (tr.import_price * imp - tr.export_price * exp + cfg.cycle_cost * (charge_kw + discharge_kw))
    zone = cfg.zone
    day = np.array([(tr.start + tr.step * t).astimezone(zone).toordinal() for t in range(tr.n)])
    _, index = np.unique(day, return_inverse=True)
    return np.asarray(np.bincount(index, weights=per_slot), dtype=np.float64)


def worst_days(costs: FloatArray, days: int = WORST_DAYS) -> float:
    """The sum of the `days` costliest days: what risk-aware planning would lower."""
    return float(np.sort(costs)[::-1][:days].sum())


def price_outlook(
    price: FloatArray, k: int, known: int, horizon: int, slots_per_day: int, model: PriceModel = PriceModel.BLEND
) -> FloatArray:
    """Prices for slots k..k+horizon-1: the published ones, then a forecast where none is published yet.

    The forecast (cloud.forecast_price) is made from the published prices only (everything before k + known)
    and only ever fills slots past `known`, so it is a forecast by construction; a plan only executes its
    first slots, which are published, and is re-made when the next day's prices appear.
    """
    out = np.array(price[k : k + horizon], dtype=np.float64)
    if horizon > known:
        out[known:] = forecast_prices(price[: k + known], horizon - known, slots_per_day, model)
    return out


class Planner:
    """The cloud side, rolling: forecasts from the past only, one optimizer solve per re-plan."""

    def __init__(self, tr: Traces, cfg: Config) -> None:
        self.tr, self.cfg = tr, cfg
        self.spd = tr.slots_per_day
        self.horizon_max = max(1, round(cfg.horizon_hours / tr.dt_h))
        self.sky = np.zeros(0)
        self.pv_site: PvSiteForecaster | None = None
        self.kwp = cfg.pv_kwp
        self._use_site(Location(cfg.lat, cfg.lon), PvArray(cfg.pv_kwp, cfg.tilt_deg, cfg.azimuth_deg))
        self.site: SiteEstimate | None = None  # with cfg.infer_site: the latest estimate from the measured PV
        self.clock = cfg  # the configuration whose time zone says when prices are published (infer_tz moves it)
        self.site_day = SITE_FIRST_DAY  # the day of the next estimate
        self.factor = PvFactor()
        self.factor_day = -1
        self.shape = PvShape.flat(self.spd)
        self.shape_origin = 0  # the slot the shape's learning window ended at
        self.pv_spread = (1.0, 1.0)
        self.load_risk = NO_LOAD_RISK
        # with pv_spread conditional: this plan's dark / bright days, the slots left today, and the point
        # forecast's level over the mean day per slot (not 1 with pv_persistence)
        self.day_spread: PvDaySpread | None = None
        self.day_spread_left = 0
        self.spread_history: PvSpreadHistory | None = None  # the completed days it is read from, once a day
        self.pv_levels = np.ones(0)
        # with a regional PV forecast (`Traces.pv_index`): its days, today's outlook, and this plan's (dark,
        # bright) per slot where the index is published (NaN elsewhere)
        self.index_days: IndexDays | None = None
        self.index_outlook: IndexOutlook | None = None
        self.index_day = -1
        self.index_pairs: FloatArray | None = None
        self.persistence: float | None = None
        self.rho_day = 0.0
        self.load_day = -1
        self.warm_scenarios = WarmStart()
        self.spread = np.zeros(self.spd)
        self.warm = WarmStart()  # re-plans of one horizon length share the LP's matrix: warm-started simplex
        self.spread_day = self.spread_origin = -1
        self.kinds = np.zeros(0, dtype=np.int64)
        if cfg.load_day_kinds or cfg.load_holidays:  # per slot of the trace and a horizon past it
            country, _, subdiv = (cfg.holidays or "").partition("/")
            self.kinds = day_types(
                tr.start,
                tr.step,
                tr.n + self.horizon_max,
                cfg.tz,
                country=country or zone_country(cfg.tz),
                subdiv=subdiv or None,
                by_weekday=not cfg.load_day_kinds,  # holidays: the weekly profile with a holiday as a Sunday
            )
        self.gbm: GbmLoadForecaster | None = None
        if cfg.load_model in (LoadModel.GBM, LoadModel.GBM_MEAN):
            country, _, subdiv = (cfg.holidays or "").partition("/")
            self.gbm = GbmLoadForecaster(
                tr.start,
                tr.step,
                cfg.tz,
                country=country or None,
                subdiv=subdiv or None,
                max_lead_hours=cfg.horizon_hours,
                objective="regression" if cfg.load_model is LoadModel.GBM_MEAN else "regression_l1",
                refit_days=cfg.load_refit_days,
                update_days=1 if cfg.load_update else 0,
            )

    def _use_site(self, location: Location, array: PvArray) -> None:
        """The PV forecasters on this site: clear sky for the whole trace (and a horizon past its end) at once,
        as pvlib per re-plan would dominate; the `fit` model starts again from this registration."""
        tr = self.tr
        n = tr.n + self.horizon_max
        self.sky = clear_sky(location, [array], tr.start, tr.step, n).pv_kw
        self.kwp = array.kwp
        self.factor_day = -1  # the factor is relearned against the new clear sky
        if self.cfg.pv_model is PvModel.FIT:
            self.pv_site = PvSiteForecaster(SkyGrid.compute(location, tr.start, tr.step, n), [array])

    def _infer_site(self, k: int) -> None:
        """With `infer_site` (no location registered): the site's location, plane and kWp from the PV measured
        before slot k (cloud.site_infer), on days 7, 14, 28, then every 28 days, from the last 91 days; the
        forecasters move to it when it moved (until then: the configured defaults)."""
        spd = self.spd
        day = k // spd
        if day < self.site_day:
            return
        self.site_day = 2 * day if day < SITE_EVERY_DAYS else day + SITE_EVERY_DAYS
        end = day * spd
        lo = max(0, end - SITE_HISTORY_DAYS * spd)
        est = infer_site(self.tr.pv_kw[lo:end], self.tr.start + self.tr.step * lo, self.tr.step)
        if est is None or (self.site is not None and self.site.close_to(est)):
            return
        self.site = est
        if self.cfg.infer_tz:  # the default zone stays where it could be the site's own clock
            now = self.tr.start + self.tr.step * k
            offset = self.cfg.zone.utcoffset(now.astimezone(self.cfg.zone).replace(tzinfo=None))
            hours = 0.0 if offset is None else offset.total_seconds() / 3600.0
            plausible = abs((est.lon / 15.0 - hours + 12.0) % 24.0 - 12.0) <= SOLAR_ZONE_SLACK_H
            self.clock = self.cfg if plausible else dataclasses.replace(self.cfg, tz=solar_zone(est.lon))
        self._use_site(Location(est.lat, est.lon), PvArray(est.kwp / DEFAULT_FACTOR_CLEAR, est.tilt, est.azimuth))

    def forecasts(self, k: int, horizon: int) -> tuple[FloatArray, FloatArray]:
        """(load kW, PV kW) for slots k..k+horizon-1, from what was known at the start of slot k."""
        tr, cfg, spd = self.tr, self.cfg, self.spd
        self._learn_load(k)
        truth = self.truth_slots(horizon)
        whole = truth == slice(0, horizon)
        if self.load_told_truth and whole:
            load = tr.load_kw[k : k + horizon].copy()
        elif self.gbm is not None and cfg.load_quantile is not None:
            load = at_quantile(self.gbm.quantiles(tr.load_kw, k, horizon), cfg.load_quantile)
        elif self.gbm is not None:
            load = self.gbm.forecast(tr.load_kw, k, horizon)
        elif cfg.load_model is LoadModel.PERSISTENCE:
            load = forecast_load_persistence(tr.load_kw[max(0, k - 28 * spd) : k], horizon, spd)
        elif cfg.load_day_kinds and not (cfg.load_day_level and cfg.load_persistence):
            lo = max(0, k - round(cfg.load_kind_weeks * 7) * spd)
            load = forecast_load_daytype(
                tr.load_kw[lo:k],
                self.kinds[lo : k + horizon],
                horizon,
                spd,
                persistence=self.persistence or 0.0,
                weeks=round(cfg.load_kind_weeks),
            )
            if cfg.load_quantile is not None:
                load = np.maximum(load + self._spread(k, horizon), 0.0)
        elif cfg.load_day_level and cfg.load_persistence:  # on the AR(1) nowcast
            weeks = round(cfg.load_kind_weeks) if cfg.load_day_kinds else 4
            lo = max(0, k - (weeks * 7 + 7) * spd)  # the last day's profile reaches `weeks` weeks before it
            kinds = self.kinds[lo : k + horizon] if len(self.kinds) else None
            load = forecast_load_level(
                tr.load_kw[lo:k],
                horizon,
                spd,
                persistence=self.persistence or 0.0,
                rho_day=self.rho_day,
                kinds=kinds,
                weeks=weeks,
            )
            if cfg.load_quantile is not None:
                load = np.maximum(load + self._spread(k, horizon), 0.0)
        else:
            load = forecast_load(tr.load_kw[max(0, k - 28 * spd) : k], horizon, spd, persistence=self.persistence)
            if cfg.load_quantile is not None:
                load = np.maximum(load + self._spread(k, horizon), 0.0)
        if self.load_told_truth and not whole:
            load = load.copy()
            load[truth] = tr.load_kw[k + truth.start : k + truth.stop]
        if self.pv_told_truth and whole:
            return load, tr.pv_kw[k : k + horizon].copy()
        pv = self._pv_model(k, horizon)
        if tr.pv_forecast_kw is not None:
            external = tr.pv_forecast_kw[k : k + horizon]
            pv = np.where(np.isnan(external), pv, external)
        if self.pv_told_truth:
            pv = pv.copy()
            pv[truth] = tr.pv_kw[k + truth.start : k + truth.stop]
        return load, pv

    @property
    def load_told_truth(self) -> bool:
        return self.cfg.forecast in (Forecast.PERFECT, Forecast.PERFECT_LOAD)

    @property
    def pv_told_truth(self) -> bool:
        return self.cfg.forecast in (Forecast.PERFECT, Forecast.PERFECT_PV)

    def truth_slots(self, horizon: int) -> slice:
        """The slots of a plan's horizon that a perfect* forecast (a diagnostic) gives the measured values in:
        truth_from_hours to truth_until_hours ahead (the horizon's end without it). Told only the next hours, a
        plan shows what a better nowcast is worth; told only the hours after them, what a better day-ahead
        forecast is (docs/cloud-planning.md, "The near hours again")."""
        dt, cfg = self.tr.dt_h, self.cfg
        a = min(round(cfg.truth_from_hours / dt), horizon)
        b = horizon if cfg.truth_until_hours is None else min(round(cfg.truth_until_hours / dt), horizon)
        return slice(a, max(a, b))

    def _learn_load(self, k: int) -> None:
        """Once a day: the house's load error persistence and whole-day load spread, when an option uses them."""
        spd = self.spd
        cfg = self.cfg
        if k // spd == self.load_day or not (
            cfg.load_persistence or cfg.load_scenarios or cfg.load_reserve or cfg.load_day_level
        ):
            return
        history = self.tr.load_kw[max(0, k - LOAD_RISK_HISTORY_DAYS * spd) : k]
        if cfg.load_persistence:
            self.persistence = error_persistence(history, spd)
        if cfg.load_day_level:
            days = round(cfg.load_day_level_days)  # each block's profile reaches four weeks before it
            blocks = self.tr.load_kw[max(0, k - (days + 28) * spd) : k]
            self.rho_day = day_level_persistence(day_load_ratios(blocks, spd, days=days))
        if cfg.load_scenarios or cfg.load_reserve:
            self.load_risk = learn_load_risk(history, spd)
        self.load_day = k // spd

    def _spread(self, k: int, horizon: int) -> FloatArray:
        """Quantile minus mean of each slot of the day over the last four weeks, for slots k..k+horizon-1.

        How far the `load_quantile` of the house's own day-to-day spread lies from its mean: added to a point
        forecast it gives that quantile's scenario (the profile forecaster has no quantiles of its own).
        Re-learnt once a day; zero until a week of history exists.
        """
        spd, q = self.spd, self.cfg.load_quantile
        if q is None or k < 7 * spd:
            return np.zeros(horizon)
        if k // spd != self.spread_day:
            days = min(28, k // spd)
            hist = self.tr.load_kw[k - days * spd : k].reshape(days, spd)
            self.spread = np.quantile(hist, q, axis=0) - hist.mean(axis=0)  # column c: slot (k + c) mod spd
            self.spread_day, self.spread_origin = k // spd, k
        return np.asarray(self.spread[(k - self.spread_origin + np.arange(horizon)) % spd], dtype=np.float64)

    def _scenario_solve(self, problem: Problem, shared: int, slot_steps: list[int]) -> Solution | None:
        """The two-stage plan over a dark day, the point forecast and a bright day (cloud.plan_risk: the PV
        history's P10 / P90 daily ratio, or with `pv_spread` conditional each day's conditional P10 / P90; with
        `load_scenarios` the load's too), or None where it declines. `problem` has one step a slot; the plan
        is solved on the grid `slot_steps` (cloud.plan_grid) and comes back on the grid."""
        pv_spread: PvRatios = NEUTRAL
        if self.cfg.scenarios:
            left, horizon = self.day_spread_left, problem.horizon
            pv_spread = pv_scenario_ratios(self.day_spread, self.pv_spread, horizon, left, self.spd, self.pv_levels)
            if self.index_pairs is not None:  # the days a regional forecast scales: its own residuals' spread
                pv_spread = index_ratios(checked_pv_ratios(pv_spread, horizon), self.index_pairs)
            if self.pv_told_truth:  # the measured PV has no dark or bright day
                dark, bright = checked_pv_ratios(pv_spread, horizon)
                truth = self.truth_slots(horizon)
                dark[truth], bright[truth] = 1.0, 1.0
                pv_spread = (dark, bright)
            pv_spread = ratios_on_grid(pv_spread, problem.pv_kw, slot_steps)
        load_spread = self.load_risk.spread if self.cfg.load_scenarios else NEUTRAL
        on_grid = coarse_problem(problem, slot_steps)
        return solve_two_stage(
            on_grid, pv_spread, load_spread, coarse_slots(shared, slot_steps), warm=self.warm_scenarios
        )

    def _pv_model(self, k: int, horizon: int) -> FloatArray:
        """The PV forecaster's output (before an external forecast overrides it)."""
        if self.cfg.infer_site:
            self._infer_site(k)
        self.day_spread = None
        if self.pv_site is not None:
            return self.pv_site.forecast(self.tr.pv_kw, k, horizon)
        spd, cfg = self.spd, self.cfg
        today = (k // spd) * spd  # the trace's days start at its first row (local midnight in bench/data)
        if k // spd != self.factor_day:  # daily ratios: re-learning once a day is enough
            lo = max(0, k - 14 * spd)
            self.factor = learn_pv_factor(self.tr.pv_kw[lo:k], self.sky[lo:k], spd, self.kwp)
            if self.cfg.scenarios:
                self.pv_spread = pv_ratio_spread(self.tr.pv_kw[lo:k], self.sky[lo:k], spd, self.kwp)
            if self.cfg.scenarios and cfg.pv_spread is PvSpread.CONDITIONAL:  # the days before today only
                days = round(cfg.pv_spread_days)
                first = max(0, today - (days + PV_MEAN_DAYS + 1) * spd)
                self.spread_history = learn_spread_history(
                    self.tr.pv_kw[first:today], self.sky[first:today], spd, self.kwp, days=days
                )
            if self.cfg.pv_shape:
                self.shape = learn_pv_shape(self.tr.pv_kw[lo:k], self.sky[lo:k], spd, self.kwp, self.factor.typical)
                self.shape_origin = k
            self.factor_day = k // spd
        lo = max(0, k - round(NOWCAST_RECENT_H / self.tr.dt_h))  # the last hours' PV against their forecast
        at = k - self.shape_origin
        self.index_pairs = None
        if not cfg.pv_persistence:  # the mean day, or each day's level from a regional forecast (1 without one)
            levels = self._index_levels(k, horizon)
            recent = forecast_pv(self.sky[lo:k], self.factor) * levels[0]
            pv = forecast_pv(self.sky[k : k + horizon], self.factor) * levels[1:]
            self.pv_levels = levels[1:]
        else:  # today so far and the days after it: m + rho^j x today's deviation (cloud.forecast_pv_day)
            days = round(cfg.pv_persistence_days)
            first = max(0, today - days * spd)  # the planner worker's call, on the trace's days
            outlook = pv_day_outlook_from_series(
                self.tr.pv_kw[first:k], self.sky[first:], today - first, spd, self.factor.typical, self.kwp, days=days
            )
            recent = self.sky[lo:k] * outlook.level(0)
            levels = outlook.factors(horizon, today + spd - k, spd)
            pv = self.sky[k : k + horizon] * levels
            self.pv_levels = levels / max(self.factor.typical, 1e-9)
        if self.spread_history is not None:  # today so far: the PV measured before k only
            today_sky = self.sky[today : today + spd]
            self.day_spread = self.spread_history.spread(self.tr.pv_kw[today:k], today_sky, self.factor.typical)
            self.day_spread_left = today + spd - k
        recent = recent * self.shape.at(at - (k - lo), k - lo)
        pv = pv * self.shape.at(at, horizon)
        bounds = (NOWCAST_RATIO_BOUNDS[0], cfg.pv_nowcast_max)
        return pv_nowcast(pv, self.tr.pv_kw[lo:k], recent, self.tr.dt_h, self.kwp, ratio_bounds=bounds)

    def _index_levels(self, k: int, horizon: int) -> FloatArray:
        """With a regional PV forecast: the level over the mean day of slot k − 1 (the nowcast's recent window)
        and of each horizon slot, 1 where the day's index is not yet published (`pv_index_lead_hours` before
        the day's first slot) or too few days are known to scale it (cloud.forecast_pv_index). Sets
        `index_pairs`, the scenarios' (dark, bright) for the horizon's slots."""
        spd, tr = self.spd, self.tr
        if tr.pv_index is None:
            return np.ones(horizon + 1)
        if self.index_days is None:  # each day's β reads only the days before it: one pass for the trace
            self.index_days = index_days(tr.pv_kw, self.sky[: tr.n], tr.pv_index, spd, self.kwp)
        if k // spd != self.index_day:
            self.index_outlook = index_outlook(self.index_days, k // spd)
            self.index_day = k // spd
        slots = np.arange(k - 1, k + horizon)
        lead = round(self.cfg.pv_index_lead_hours / tr.dt_h)
        published = k >= (np.maximum(slots, 0) // spd) * spd - lead
        levels, pairs = plan_levels(self.index_days, self.index_outlook, slots, published, spd, self.factor.typical)
        self.index_pairs = pairs[1:]
        return levels

    def _terminal_value(self, import_price: FloatArray, k: int, known: int) -> float:
        cfg = self.cfg
        if not cfg.terminal_value:
            return 0.0
        next_day = None
        ahead = len(import_price) - known  # forecast slots already inside the horizon
        if cfg.terminal_next_day and ahead >= 0:  # the day after the horizon, forecast from the published prices
            published = self.tr.import_price[: k + known]
            next_day = forecast_prices(published, ahead + self.spd, self.spd, cfg.price_model)[ahead:]
        return terminal_value(
            import_price,
            self.spd,
            cfg.eta_discharge,
            cfg.cycle_cost,
            basis=cfg.terminal_basis,
            charge_efficiency=cfg.eta_charge,
            next_day=next_day,
        )

    def plan(
        self, k: int, soc: float, executed: int, peak_kw: float = 0.0, target: PeakTarget = NO_TARGET
    ) -> tuple[Plan, Solution, FloatArray, FloatArray] | None:
        """The plan the edge holds from slot k on (its first `executed` slots), or None if there is none.

        With a capacity charge, `peak_kw` is this billing month's highest import so far and `target` the
        month's target (`billing_target`): the plan treats import up to the higher of the two as paid for,
        the edge's limit is that level where the plan does not import more, the plan keeps the reserve."""
        tr, cfg = self.tr, self.cfg
        known = min(known_price_slots(tr, k, self.clock), tr.n - k)
        horizon = min(self.horizon_max, known)
        if cfg.price_forecast:  # forecast prices extend it to price_forecast_hours ahead (never shorten it)
            ahead = round(cfg.price_forecast_hours / tr.dt_h)
            horizon = max(horizon, min(self.horizon_max, ahead, tr.n - k))
        if horizon <= 0 or known <= 0:
            return None
        imp, exp = (
            price_outlook(tr.import_price, k, known, horizon, self.spd, cfg.price_model),
            price_outlook(tr.export_price, k, known, horizon, self.spd, cfg.price_model),
        )
        load_fc, pv_fc = self.forecasts(k, horizon)
        if cfg.load_reserve:
            load_fc = reserve_load(load_fc, pv_fc, imp, exp, self.load_risk, tr.dt_h)
            if self.load_told_truth:  # a measured load needs no reserve
                truth = self.truth_slots(horizon)
                load_fc[truth] = tr.load_kw[k + truth.start : k + truth.stop]
        load_fc = np.minimum(load_fc, cfg.grid_import_kw + pv_fc)  # a forecast must not make it infeasible
        start = tr.start + tr.step * k
        problem = Problem(
            start=start,
            step_minutes=tr.step.total_seconds() / 60.0,
            import_price=imp.tolist(),
            export_price=exp.tolist(),
            load_kw=load_fc.tolist(),
            pv_kw=pv_fc.tolist(),
            battery=_battery(cfg, soc, self._terminal_value(imp, k, known)),
            grid=_grid(cfg),
            demand_charge=_demand(cfg, max(peak_kw, target.level_kw), target.reserve_for(k, horizon)),
        )
        two_stage = cfg.scenarios or cfg.load_scenarios
        shared = min(executed, horizon)
        if cfg.share_night and len(self.sky) >= k + horizon:
            shared = night_shared_slots(self.sky[k : k + horizon], self.kwp, shared)
        slot_steps = far_grid(start.timestamp(), problem.step_minutes, horizon, cfg.fine_hours)
        scenario = self._scenario_solve(problem, shared, slot_steps) if two_stage else None
        if scenario is None:
            scenario = solve(coarse_problem(problem, slot_steps), warm=self.warm)
        solution = fine_solution(scenario, slot_steps)
        if not solution.battery_charge_kw:
            return None  # the edge keeps no plan for these slots: its ladder falls back to self-consumption
        values = plan_values(solution, problem, min(executed, horizon))
        connection_w = cfg.grid_import_kw * 1000.0
        slots = tuple(
            PlanSlot(
                start=start + tr.step * j,
                end=start + tr.step * (j + 1),
                intent=slot_intent(
                    solution.grid_import_kw[j],
                    solution.grid_export_kw[j],
                    solution.battery_charge_kw[j],
                    solution.battery_discharge_kw[j],
                    cfg.execution,
                    values[j],
                    grid_import_limit_w=(  # as the planner worker sends it (cloud/planner.py to_plan)
                        peak_import_limit_w(
                            problem.demand_charge.peak_already_kw, solution.grid_import_kw[j], connection_w
                        )
                        if problem.demand_charge is not None
                        else None
                    ),
                ),
            )
            for j in range(min(executed, horizon))
        )
        plan = Plan(
            site_id="backtest",
            version=k + 1,
            issued_at=start,
            valid_until=start + tr.step * horizon,
            slots=slots,
        )
        return plan, solution, load_fc, pv_fc


def billing_target(tr: Traces, cfg: Config, first: int) -> PeakTarget:
    """The target of the billing month starting at slot `first` (cloud/peak_limit.py `month_target`), from
    the house's measured load and PV of the days before it (all known when the month starts)."""
    lo = max(0, first - round(TARGET_HISTORY_DAYS * 24.0 / tr.dt_h))
    return month_target(
        tr.load_kw[lo:first] - tr.pv_kw[lo:first],
        tr.dt_h,
        cfg.battery_kwh * (cfg.soc_max - cfg.soc_min),
        cfg.max_charge_kw,
        cfg.max_discharge_kw,
        cfg.eta_charge,
        cfg.eta_discharge,
        tr.slots_per_day,
        lo,
        floor_kw=cfg.capacity_min_kw,
    )


def rolling_flows(
    tr: Traces, cfg: Config, planner: Planner | None = None
) -> tuple[FloatArray, FloatArray, int, SlotLog]:
    """The battery's executed charge/discharge per slot under the rolling planner, the re-plan count, the log.

    Slot t's decision may use: prices published by t, load and PV before t (forecasts), and the real load and
    PV of slot t itself only through the edge's controller, which measures them live. `planner`: one made for
    `tr` and `cfg` by the caller (bench.warm_start audits its warm starts), else a new one.
    """
    every = max(1, round(cfg.replan_hours / tr.dt_h))
    planner = planner or Planner(tr, cfg)
    edge = Edge(tr, cfg)
    log = SlotLog.empty(tr.n)
    replans = 0
    months = billing_months(tr, cfg.capacity_tz) if cfg.capacity_per_kw > 0.0 else None
    target, target_first = NO_TARGET, -1
    for k in range(0, tr.n, every):
        peak = 0.0
        if months is not None:  # the highest import this billing month so far, as the meter saw it
            first = int(np.searchsorted(months, months[k]))
            if first != target_first:
                target, target_first = billing_target(tr, cfg, first), first
            net = tr.load_kw[first:k] - tr.pv_kw[first:k] + edge.charge[first:k] - edge.discharge[first:k]
            peak = float(net.max(initial=0.0))
        planned = planner.plan(k, edge.soc, every, peak, target)
        replans += 1
        plan = None
        if planned is not None:
            plan, solution, load_fc, pv_fc = planned
            m = min(every, len(load_fc), tr.n - k)
            log.load_fc_kw[k : k + m] = load_fc[:m]
            log.pv_fc_kw[k : k + m] = pv_fc[:m]
            log.planned_battery_kw[k : k + m] = np.asarray(solution.battery_charge_kw[:m]) - np.asarray(
                solution.battery_discharge_kw[:m]
            )
        for t in range(k, min(k + every, tr.n)):
            log.battery_kw[t], log.intent[t] = edge.step(t, plan)
            log.soc[t] = edge.soc
    return edge.charge, edge.discharge, replans, log


def rolling_planner(tr: Traces, cfg: Config) -> tuple[Outcome, int]:
    charge, discharge, replans, _ = rolling_flows(tr, cfg)
    return settle(tr, charge, discharge, cfg.cycle_cost, "planner", cfg), replans


def run(tr: Traces, cfg: Config, *, oracle: bool = True, parallel: bool = True) -> Report:
    """All four strategies; the perfect-foresight year (one large solve) runs in a second process meanwhile."""
    started = time.perf_counter()
    pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) if oracle and parallel else None
    try:
        pending = pool.submit(perfect_foresight, tr, cfg) if pool is not None else None
        base = no_battery(tr, cfg)
        rules = self_consumption(tr, cfg)
        t0 = time.perf_counter()
        charge, discharge, replans, log = rolling_flows(tr, cfg)
        planner = settle(tr, charge, discharge, cfg.cycle_cost, "planner", cfg)
        planner_s = time.perf_counter() - t0
        worst = {"planner": worst_days(daily_costs(tr, charge, discharge, cfg))}
        outcomes = [base, rules, planner]
        if pending is not None:
            outcomes.append(pending.result())
        elif oracle:
            outcomes.append(perfect_foresight(tr, cfg))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return Report(outcomes, tr.n, replans, planner_s, time.perf_counter() - started, log, worst)


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
    if any(o.name == "perfect foresight" for o in report.outcomes):
        lines.append(f"capture ratio (planner saving / possible saving): {report.capture_ratio:.3f}")
        lines.append(f"planner - rule as a share of oracle - rule: {report.over_rule:.3f}")
    for name, cost in report.worst_days.items():
        lines.append(f"{name}: the {WORST_DAYS} costliest days cost {cost:.2f}")
    lines.append(f"wall time: planner {report.planner_wall_s:.1f} s, total {report.total_wall_s:.1f} s")
    return "\n".join(lines)


def write_slots(path: str, tr: Traces, log: SlotLog) -> None:
    """One row per slot: the truth, what the planner forecast and planned, what the edge did."""
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(
            [
                "ts",
                "import_price",
                "export_price",
                "load_kw",
                "pv_kw",
                "load_forecast_kw",
                "pv_forecast_kw",
                "planned_battery_kw",
                "battery_kw",
                "grid_kw",
                "soc",
                "rung_intent",
            ]
        )
        for t in range(tr.n):
            grid = tr.load_kw[t] - tr.pv_kw[t] + log.battery_kw[t]
            out.writerow(
                [
                    (tr.start + tr.step * t).isoformat().replace("+00:00", "Z"),
                    f"{tr.import_price[t]:.5f}",
                    f"{tr.export_price[t]:.5f}",
                    f"{tr.load_kw[t]:.3f}",
                    f"{tr.pv_kw[t]:.3f}",
                    f"{log.load_fc_kw[t]:.3f}",
                    f"{log.pv_fc_kw[t]:.3f}",
                    f"{log.planned_battery_kw[t]:.3f}",
                    f"{log.battery_kw[t]:.3f}",
                    f"{grid:.3f}",
                    f"{log.soc[t]:.4f}",
                    log.intent[t],
                ]
            )


def plot_slots(path: str, tr: Traces, log: SlotLog, days: float = 7.0) -> None:
    """A picture of the first `days`: prices, load and PV (real and forecast), battery plan vs executed, SoC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(tr.n, max(1, round(days * tr.slots_per_day)))
    x = [tr.start + tr.step * t for t in range(n)]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(12, 8), sharex=True)
    ax1.step(x, tr.import_price[:n], where="post", label="import EUR/kWh")
    ax1.step(x, tr.export_price[:n], where="post", label="export EUR/kWh")
    ax1.legend(loc="upper right")
    ax2.plot(x, tr.load_kw[:n], label="load kW")
    ax2.plot(x, log.load_fc_kw[:n], "--", label="load forecast")
    ax2.plot(x, tr.pv_kw[:n], label="PV kW")
    ax2.plot(x, log.pv_fc_kw[:n], "--", label="PV forecast")
    ax2.legend(loc="upper right")
    ax3.step(x, log.planned_battery_kw[:n], where="post", label="planned battery kW (+ charge)")
    ax3.step(x, log.battery_kw[:n], where="post", label="executed battery kW")
    ax3b = ax3.twinx()
    ax3b.plot(x, log.soc[:n], color="grey", label="SoC")
    ax3b.set_ylim(0, 1)
    ax3.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _read_tariff(path: str | None) -> Tariff | None:
    """`--tariff FILE`: the tariff JSON a site registers (cloud/tariffs.py), or None."""
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            raw = fh.read(1_000_000)  # a tariff is a few hundred bytes
        tariff = decode_tariff(raw)
    except OSError as exc:
        raise TraceError(f"--tariff {path}: {exc.strerror or exc}") from None
    except TariffError as exc:
        raise TraceError(f"--tariff {path}: {exc}") from None
    return tariff


def _check_output(option: str, path: str | None) -> None:
    """An output file's directory must exist and be writable before a year is run, not after."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise TraceError(f"--{option.replace('_', '-')} {path}: not a file in a writable directory")


def site_notes(tr: Traces, cfg: Config) -> list[str]:
    """What the measured PV says about the site's registration, for stderr (a diagnostic over the whole trace,
    never a plan input): with `infer_site`, what the planner will learn; else where the registration disagrees
    strongly with the measurements (cloud.site_infer.registration_warnings)."""
    if cfg.infer_site:
        est = infer_site(tr.pv_kw[: SITE_HISTORY_DAYS * tr.slots_per_day], tr.start, tr.step)
        what = (
            "too little measured PV to learn it from yet (4 days): the defaults stay"
            if est is None
            else f"the first {min(SITE_HISTORY_DAYS, tr.n // tr.slots_per_day)} days put solar noon at "
            f"{est.noon_utc_h:.2f} h UTC: lat {est.lat:g}, lon {est.lon:g}, a {est.tilt:g}° plane at azimuth "
            f"{est.azimuth:g}, {est.kwp:.2f} kWp effective"
        )
        zone = (
            f", and prices are published at {cfg.price_publication:%H:%M} in its solar time zone (Etc/GMT-N, N the "
            f"longitude / 15°; --tz sets it) where {cfg.tz} is more than {SOLAR_ZONE_SLACK_H:g} h off its sun"
            if cfg.infer_tz
            else ""
        )
        return [
            f"note: no site location given (--lat/--lon or the trace's '# site:' line): the PV forecast learns "
            f"it from the measured PV from day {SITE_FIRST_DAY} on{zone} (--no-infer-site: lat {cfg.lat:g}, lon "
            f"{cfg.lon:g}, {cfg.tz}); {what}"
        ]
    registered = clear_sky(
        Location(cfg.lat, cfg.lon), [PvArray(cfg.pv_kwp, cfg.tilt_deg, cfg.azimuth_deg)], tr.start, tr.step, tr.n
    ).pv_kw
    return [f"warning: {w}" for _, w in registration_warnings(tr.pv_kw, registered, tr.start, tr.step)]


def run_backtest(args: argparse.Namespace) -> int:
    """Exit 0 with the table on stdout; 2 for a bad trace file or options (one line on stderr)."""
    try:
        site = read_site(args.traces)
    except TraceError as exc:
        print(f"zapcloud backtest: {exc}", file=sys.stderr)
        return 2
    args = argparse.Namespace(**{**site, **vars(args)})  # an option given wins over the trace's site line
    cfg = config_from_args(args)
    problem = options_problem(args) or config_problem(cfg)  # every option, before the rows are read or run
    if problem:
        print(f"zapcloud backtest: {problem}", file=sys.stderr)
        return 2
    try:
        for option in ("slots_csv", "plot"):
            _check_output(option, getattr(args, option, None))
        tariff = _read_tariff(getattr(args, "tariff", None))
        if tariff is not None and tariff.capacity is not None:
            cfg = dataclasses.replace(
                cfg,
                capacity_per_kw=tariff.capacity.price_per_kw,
                capacity_min_kw=tariff.capacity.min_kw,
                capacity_tz=tariff.timezone,
            )
            if problem := config_problem(cfg):
                raise TraceError(f"--tariff {args.tariff}: {problem}")
        tr = read_traces(args.traces, getattr(args, "pv_forecast_column", None), tariff)
        days = getattr(args, "days", None)
        if days is not None:
            tr = tr.head(max(1, int(days * tr.slots_per_day)))
        step_minutes = getattr(args, "step_minutes", None)
        if step_minutes is not None:
            step = timedelta(minutes=step_minutes)
            if step > tr.step or tr.step % step:
                raise TraceError(
                    f"--step-minutes = {step_minutes!r}: must divide the trace's step of {tr.step} (each row is "
                    "held over its sub-slots; planning in slots coarser than the data is not supported)"
                )
            tr = hold(tr, step)
        if pv_index := getattr(args, "pv_index", None):  # on the planning grid, so read after `hold`
            if cfg.pv_persistence:
                raise TraceError("--pv-index and --pv-persistence are two models of the day's PV level: use one")
            tr = dataclasses.replace(tr, pv_index=read_pv_index(pv_index, tr.start, tr.step, tr.n))
    except (TraceError, PvIndexError) as exc:
        print(f"zapcloud backtest: {exc}", file=sys.stderr)
        return 2
    for note in site_notes(tr, cfg):
        print(f"zapcloud backtest: {note}", file=sys.stderr)
    report = run(tr, cfg, oracle=not getattr(args, "no_oracle", False))
    print(format_report(report, tr))
    assert report.log is not None
    try:
        if getattr(args, "slots_csv", None):
            write_slots(args.slots_csv, tr, report.log)
        if getattr(args, "plot", None):
            plot_slots(args.plot, tr, report.log, getattr(args, "plot_days", 7.0))
    except OSError as exc:  # checked before the run; the disk may still fill up or the directory go away
        print(f"zapcloud backtest: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


__all__ = [
    "WORST_DAYS",
    "Config",
    "Edge",
    "Forecast",
    "LoadModel",
    "Outcome",
    "Planner",
    "PvModel",
    "Report",
    "SlotLog",
    "TraceError",
    "Traces",
    "add_arguments",
    "at_quantile",
    "config_from_args",
    "config_problem",
    "daily_costs",
    "format_report",
    "hold",
    "known_price_slots",
    "no_battery",
    "perfect_foresight",
    "plot_slots",
    "price_outlook",
    "read_site",
    "read_traces",
    "rolling_flows",
    "rolling_planner",
    "run",
    "run_backtest",
    "self_consumption",
    "settle",
    "site_config",
    "site_notes",
    "worst_days",
    "write_slots",
]
