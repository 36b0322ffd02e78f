"""The `zapcloud backtest` configuration and options, light enough for the CLI to load with every command."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields
from datetime import time as clock_time
from enum import StrEnum
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cloud.execution import DEFAULT_EXECUTION, Execution
from cloud.forecast import NOWCAST_RATIO_BOUNDS
from cloud.forecast_price import PriceModel, TerminalBasis
from cloud.forecast_pv_index import DEFAULT_PUBLISHED_BEFORE_H
from cloud.plan_grid import FINE_HOURS

NO_LIMIT_KW: Final = 1000.0  # a trace carries no connection limit; this never binds for a household

# The bounds of every number the backtest takes, from the options or a trace file. Ranges a real site can have,
# wide enough for any house or small business, narrow enough that a unit mix-up (W for kW, EUR/MWh for EUR/kWh),
# NaN, ±inf or a typo by orders of magnitude is refused with a message naming it instead of crashing deep inside
# pvlib, numpy or the LP (or silently running a nonsense site).
MAX_POWER_KW: Final = 10_000.0  # 10 MW: zapd/bounds.py MAX_POWER_W, "far above any site behind one fuse"
MAX_CAPACITY_KWH: Final = 100_000.0  # 100 MWh: zapd/bounds.py MAX_CAPACITY_WH (the zapd config's battery bound)
# |price| per kWh: cloud/server/bounds.py MAX_PRICE_ABS (EPEX clears within -0.5 .. 4 EUR/kWh; 10 leaves room for
# a changed cap and tariff add-ons, not for EUR/MWh taken as EUR/kWh). Not imported: that package loads the server.
MAX_PRICE_ABS: Final = 10.0
MAX_DAYS: Final = 36_525.0  # a century of data: bounds the slot count computed from --days


@dataclass(frozen=True, slots=True)
class Bound:
    """The closed range lo .. hi of one option (lo itself refused if `lo_open`), its unit and why."""

    option: str  # the command-line option, named in every message
    lo: float
    hi: float
    unit: str
    why: str
    lo_open: bool = False

    def problem(self, value: float) -> str | None:
        """Why `value` is refused, or None."""
        low_ok = value > self.lo if self.lo_open else value >= self.lo
        if math.isfinite(value) and low_ok and value <= self.hi:
            return None
        unit = f" {self.unit}" if self.unit else ""
        span = f"above {self.lo:g} and at most {self.hi:g}" if self.lo_open else f"within {self.lo:g} .. {self.hi:g}"
        return f"{self.option} = {value!r}: must be a finite number {span}{unit} ({self.why})"


# Keyed by the argparse dest (which is also the Config field, except where FIELD_OPTION maps it).
BOUNDS: Final[dict[str, Bound]] = {
    b.option.removeprefix("--").replace("-", "_"): b
    for b in (
        Bound("--battery-kwh", 0.0, MAX_CAPACITY_KWH, "kWh", "zapd's battery capacity bound", lo_open=True),
        Bound("--battery-kw", 0.0, MAX_POWER_KW, "kW", "zapd's power bound, 10 MW"),
        Bound("--charge-kw", 0.0, MAX_POWER_KW, "kW", "zapd's power bound, 10 MW"),
        Bound("--discharge-kw", 0.0, MAX_POWER_KW, "kW", "zapd's power bound, 10 MW"),
        Bound("--efficiency", 0.5, 1.0, "", "one way; real batteries 0.9-0.98, below 0.5 none is sold"),
        Bound("--charge-efficiency", 0.5, 1.0, "", "real batteries 0.9-0.98, below 0.5 none is sold"),
        Bound("--discharge-efficiency", 0.5, 1.0, "", "real batteries 0.9-0.98, below 0.5 none is sold"),
        Bound("--step-minutes", 5.0, 1440.0, "min", "the finest settlement in use (NEM) .. a day"),
        Bound("--truth-from-hours", 0.0, 168.0, "h", "hours ahead of a plan, at most a week"),
        Bound("--truth-until-hours", 0.0, 168.0, "h", "hours ahead of a plan, at most a week", lo_open=True),
        Bound("--soc-min", 0.0, 1.0, "", "a fraction of the capacity"),
        Bound("--soc-max", 0.0, 1.0, "", "a fraction of the capacity"),
        Bound("--soc-initial", 0.0, 1.0, "", "a fraction of the capacity"),
        Bound("--cycle-cost", 0.0, MAX_PRICE_ABS, "EUR/kWh", "at most the largest price a trace may carry"),
        Bound("--grid-import-kw", 0.0, MAX_POWER_KW, "kW", "zapd's power bound, 10 MW", lo_open=True),
        Bound("--grid-export-kw", 0.0, MAX_POWER_KW, "kW", "zapd's power bound, 10 MW"),
        Bound("--replan-hours", 0.0, 168.0, "h", "at least one plan a week", lo_open=True),
        Bound("--horizon-hours", 1.0, 168.0, "h", "a week; day-ahead prices reach 12-36 h ahead"),
        Bound("--fine-hours", 0.0, 168.0, "h", "as --horizon-hours; 0: hourly slots from the next clock hour"),
        Bound("--pv-kwp", 0.0, MAX_POWER_KW, "kWp", "zapd's power bound, 10 MW"),
        Bound("--lat", -90.0, 90.0, "degrees", "a latitude"),
        Bound("--lon", -180.0, 180.0, "degrees", "a longitude"),
        Bound("--tilt", 0.0, 90.0, "degrees", "0 flat, 90 a wall"),
        Bound("--azimuth", 0.0, 360.0, "degrees", "compass bearing, 180 = south"),
        Bound("--load-quantile", 0.1, 0.9, "", "the forecaster's P10 .. P90"),
        Bound("--load-refit-days", 1.0, 366.0, "days", "daily .. yearly; the GBM trains on its last 56 days"),
        Bound("--price-forecast-hours", 1.0, 168.0, "h", "as --horizon-hours"),
        Bound("--load-day-level-days", 14.0, 366.0, "days", "two weeks of day pairs .. a year"),
        Bound("--load-kind-weeks", 1.0, 8.0, "weeks", "a week .. two months of same-kind days"),
        Bound("--pv-nowcast-max", 1.0, 10.0, "", "1: never raised; a clear hour is at most ~5x a dark day's"),
        Bound("--pv-persistence-days", 2.0, 366.0, "days", "a pair of days .. a year of daily clearness"),
        Bound("--pv-index-lead-hours", 0.0, 48.0, "h", "published at most two days before the day it is for"),
        Bound("--pv-spread-days", 11.0, 366.0, "days", "the ten pairs of days a quantile needs .. a year"),
        Bound("--days", 1.0, MAX_DAYS, "days", "at least one day of prices, at most a century"),
        Bound("--plot-days", 0.0, 366.0, "days", "a year on one figure is already unreadable", lo_open=True),
    )
}
# a --tariff's capacity charge: Flemish and Dutch capacity tariffs are a few EUR per kW and month
BOUNDS["capacity_per_kw"] = Bound(
    "--tariff capacity.price_per_kw", 0.0, 100.0, "EUR/kW per month", "real ones are 1-10 EUR/kW per month"
)
BOUNDS["capacity_min_kw"] = Bound(
    "--tariff capacity.min_kw",
    0.0,
    1000.0,
    "kW",
    "the lowest monthly peak billed: Flanders 2.5 kW; no household's above",
)
# Config fields named differently from their option
FIELD_DEST: Final = {"tilt_deg": "tilt", "azimuth_deg": "azimuth"}
# The keys a trace's `# site:` line may set (its option names without "--") and their argparse dests
SITE_KEYS: Final = {"tz": "tz", "lat": "lat", "lon": "lon", "pv-kwp": "pv_kwp", "tilt": "tilt", "azimuth": "azimuth"}


class LoadModel(StrEnum):
    """The load forecaster the planner uses (scored against each other in money by the backtest)."""

    PROFILE = "profile"  # the seasonal profile with a fading recent level (cloud.forecast.forecast_load)
    PERSISTENCE = "persistence"  # the same slot on the most recent measured day
    GBM = "gbm"  # LightGBM on calendar, holidays and lags (cloud.forecast.GbmLoadForecaster), the median
    GBM_MEAN = "gbm_mean"  # the same trees fitted to the mean (costs are linear in the load: the mean is unbiased)


class PvSpread(StrEnum):
    """The dark / bright days of the two-stage plan (`scenarios`)."""

    UNCONDITIONAL = "unconditional"  # P10 / P90 of the last 14 days' clearness (cloud.forecast.pv_ratio_spread)
    # conditioned on today and yesterday: the AR(1) residual's P10 / P90 (cloud.forecast_pv_day.pv_day_spread_...)
    CONDITIONAL = "conditional"


class PvModel(StrEnum):
    """The PV forecaster the planner uses."""

    FACTOR = "factor"  # clear sky on the configured arrays x a 14-day median factor (cloud.forecast)
    FIT = "fit"  # a site model fitted to the PV history with pvlib (cloud.forecast_pv), refitted weekly


class Forecast(StrEnum):
    """What the planner is told about load and PV: its forecasters, or (diagnostics) the truth."""

    MODEL = "model"
    PERFECT = "perfect"
    PERFECT_PV = "perfect_pv"
    PERFECT_LOAD = "perfect_load"


@dataclass(frozen=True, slots=True)
class Config:
    battery_kwh: float = 10.0
    battery_kw: float = 5.0
    efficiency: float = 0.95  # each way (charge and discharge)
    # the battery's charge / discharge power and efficiency where they differ; None: battery_kw / efficiency
    charge_kw: float | None = None
    discharge_kw: float | None = None
    charge_efficiency: float | None = None
    discharge_efficiency: float | None = None
    # a tariff's capacity charge (--tariff): per kW of each calendar month's highest import, months in capacity_tz
    capacity_per_kw: float = 0.0
    capacity_min_kw: float = 0.0  # the lowest monthly peak billed (the tariff's capacity.min_kw)
    capacity_tz: str = "UTC"
    soc_min: float = 0.1
    soc_max: float = 0.95
    soc_initial: float = 0.5
    cycle_cost: float = 0.02
    grid_import_kw: float = NO_LIMIT_KW
    grid_export_kw: float = NO_LIMIT_KW
    replan_hours: float = 1.0
    horizon_hours: float = 48.0
    # a plan's slots at the data's step for this many hours, then an hour each (cloud.plan_grid); a step of an
    # hour or more, or a value at the horizon or beyond, plans every slot at the step
    fine_hours: float = FINE_HOURS
    lat: float = 52.1
    lon: float = 5.18
    pv_kwp: float = 5.0
    tilt_deg: float = 35.0
    azimuth_deg: float = 180.0
    tz: str = "Europe/Amsterdam"
    # learn the site's location, PV plane and kWp from the PV measured so far (cloud.site_infer) instead of
    # lat / lon / tilt / azimuth / pv_kwp: on by default when no location is registered (no --lat / --lon, no
    # `# site:` lat / lon), where the defaults above are a guess
    infer_site: bool = False
    # with infer_site and no time zone registered (no --tz, no `# site:` tz): prices are published in the learned
    # longitude's solar time zone (cloud.site_infer.solar_zone) once the site is learned
    infer_tz: bool = False
    price_publication: clock_time = clock_time(13, 0)  # site-local time tomorrow's day-ahead prices are known
    execution: Execution = DEFAULT_EXECUTION
    forecast: Forecast = Forecast.MODEL
    # with a perfect* forecast: the truth only from truth_from_hours to truth_until_hours ahead of each plan (None:
    # to the horizon's end), the forecasters' output elsewhere; what a better forecast at those leads is worth
    truth_from_hours: float = 0.0
    truth_until_hours: float | None = None
    load_model: LoadModel = LoadModel.PROFILE
    pv_model: PvModel = PvModel.FACTOR
    # the factor forecast's hour-of-day shape corrected by the site's own telemetry (cloud.forecast.learn_pv_shape)
    pv_shape: bool = False
    # the PV nowcast's upper ratio bound (cloud.forecast.pv_nowcast; its lower one stays 0.2)
    pv_nowcast_max: float = NOWCAST_RATIO_BOUNDS[1]
    price_forecast: bool = False  # plan past the published prices with forecast prices (cloud.forecast_price)
    price_model: PriceModel = PriceModel.BLEND  # the forecaster of those prices (and of --terminal-next-day's)
    # with price_forecast: forecast prices extend a plan to this many hours ahead (at most horizon_hours)
    price_forecast_hours: float = 48.0
    holidays: str | None = None  # COUNTRY or COUNTRY/SUBDIVISION for the GBM's holiday feature (e.g. AU/NSW)
    # the GBM's training (cloud.forecast_load.GbmLoadForecaster.due): from scratch every load_refit_days, and
    # with load_update continued daily in between on the rows measured since (as the planner worker does)
    load_refit_days: float = 14.0
    load_update: bool = True
    # plan on this quantile of the load (risk): the GBM's P10/P50/P90, or the profile plus the house's own
    # day-to-day spread at that quantile; None: the point forecast
    load_quantile: float | None = None
    # two-stage plan over P10/P50/P90 PV (weather) scenarios (cloud.plan_risk); default since it lowered all six
    # real years' cost with `load_reserve` (docs/cloud-planning.md, "Risk in the planner worker")
    scenarios: bool = True
    # two-stage plan over whole-day load scenarios (the P10 / P90 of the recent days' load energy over the
    # profile's); with `scenarios` too, a dark day with high load and a bright one with low load
    load_scenarios: bool = False
    # the scenarios share every battery decision at night up to the first sunlit slot, not only the slots run
    # before the next plan (cloud.plan_risk.night_shared_slots); default since it lowered all six Konstanz years
    share_night: bool = True
    # the profile forecaster's recent level as an AR(1) nowcast with the house's own error persistence
    # (cloud.forecast_load.error_persistence) instead of the 2 h ratio fading over 4 h; default since the
    # fifth pass (lower cost on all six datasets)
    load_persistence: bool = True
    # plan the slots the battery serves on the whole-day load ratio's newsvendor quantile 1 - export/import
    # (cloud.plan_risk; default with `scenarios`)
    load_reserve: bool = True
    # the profile pooled by day kind (working day / weekend or public holiday, holidays of --holidays or of the
    # time zone's country) over load_kind_weeks instead of by weekday (cloud.forecast_load.day_type_profile)
    load_day_kinds: bool = True  # default since loadfc, with the day level (lower cost on all six real years)
    # the weekly profile with public holidays planned like Sundays (and left out of their weekday's profile)
    load_holidays: bool = False
    # the weekly profile scaled by the house's day-level persistence: the last 24 h's energy over the
    # profile's, carried forward by the house's own day-to-day autocorrelation (cloud.forecast_load.day_level_factors);
    # default since loadfc (lower cost on all six real years)
    load_day_level: bool = True
    load_day_level_days: float = 28.0  # the 24 h blocks its day-to-day autocorrelation is measured over
    load_kind_weeks: float = 4.0
    # the PV forecast's day-to-day part: today and the next days planned on the mean day + ρ^j × today's
    # expected deviation, ρ the site's own lag-1 autocorrelation of its daily clearness (cloud.forecast_pv_day)
    pv_persistence: bool = False
    pv_persistence_days: float = 28.0  # the window that ρ is measured over
    # with a --pv-index: how long before a day's first slot its values are published (cloud.forecast_pv_index)
    pv_index_lead_hours: float = DEFAULT_PUBLISHED_BEFORE_H
    # the scenarios' dark / bright days (PvSpread): conditional since it lowered the cost of `scenarios` on the
    # six real years and cut the synthetic house's loss (docs/cloud-planning.md, "Conditional PV spread")
    pv_spread: PvSpread = PvSpread.CONDITIONAL
    pv_spread_days: float = 60.0  # with pv_spread conditional: the days its residuals and ρ are measured over
    terminal_value: bool = True  # value the energy left at the horizon's end (cloud.forecast_price.terminal_value)
    terminal_basis: TerminalBasis = TerminalBasis.DISCHARGE  # which kWh that energy counts as (TerminalBasis)
    # lower the terminal value's reference price to the forecast cheapest import of the day after the horizon
    terminal_next_day: bool = False

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    @property
    def max_charge_kw(self) -> float:
        return self.battery_kw if self.charge_kw is None else self.charge_kw

    @property
    def max_discharge_kw(self) -> float:
        return self.battery_kw if self.discharge_kw is None else self.discharge_kw

    @property
    def eta_charge(self) -> float:
        return self.efficiency if self.charge_efficiency is None else self.charge_efficiency

    @property
    def eta_discharge(self) -> float:
        return self.efficiency if self.discharge_efficiency is None else self.discharge_efficiency


def _hhmm(text: str) -> clock_time:
    try:
        hh, mm = (int(x) for x in text.split(":"))
        return clock_time(hh, mm)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a local time HH:MM: {text!r}") from None


def add_arguments(bt: argparse.ArgumentParser) -> None:
    """The `zapcloud backtest` options (cloud/cli.py calls this)."""
    d = Config()
    bt.add_argument(
        "traces",
        help="CSV with columns ts,import_price,export_price,load_kw,pv_kw; '#' lines are comments, a '# site: "
        "tz=.. lat=.. lon=.. pv-kwp=.. tilt=.. azimuth=..' line gives the site options' defaults",
    )
    bt.add_argument("--battery-kwh", type=float, default=d.battery_kwh, help="usable battery capacity, kWh")
    bt.add_argument("--battery-kw", type=float, default=d.battery_kw, help="charge and discharge power limit")
    bt.add_argument("--efficiency", type=float, default=d.efficiency, help="one-way (charge and discharge)")
    bt.add_argument("--charge-kw", type=float, default=None, help="charge power limit (default: --battery-kw)")
    bt.add_argument("--discharge-kw", type=float, default=None, help="discharge power limit (default: --battery-kw)")
    bt.add_argument("--charge-efficiency", type=float, default=None, help="AC to stored (default: --efficiency)")
    bt.add_argument("--discharge-efficiency", type=float, default=None, help="stored to AC (default: --efficiency)")
    bt.add_argument("--soc-min", type=float, default=d.soc_min, help="reserve SoC (fraction)")
    bt.add_argument("--soc-max", type=float, default=d.soc_max, help="highest SoC the plan may use (fraction)")
    bt.add_argument("--soc-initial", type=float, default=d.soc_initial, help="SoC at the start (fraction)")
    bt.add_argument("--cycle-cost", type=float, default=d.cycle_cost, help="battery wear per kWh in or out")
    bt.add_argument("--grid-import-kw", type=float, default=d.grid_import_kw, help="connection import limit")
    bt.add_argument("--grid-export-kw", type=float, default=d.grid_export_kw, help="connection export limit")
    bt.add_argument("--replan-hours", type=float, default=d.replan_hours, help="hours between two plans")
    bt.add_argument("--horizon-hours", type=float, default=d.horizon_hours, help="hours each plan looks ahead")
    bt.add_argument(
        "--fine-hours",
        type=float,
        default=d.fine_hours,
        help="sub-hourly data: plan this many hours at the data's step, then one slot per hour (default "
        f"{d.fine_hours:g}; 168: every slot at the step)",
    )
    # the site options: not given, they come from the trace's `# site:` header line, else from Config()
    for option, kind, default, about in (
        ("--pv-kwp", float, d.pv_kwp, "PV size the clear-sky forecaster assumes"),
        ("--lat", float, d.lat, "site latitude, degrees (PV forecast)"),
        ("--lon", float, d.lon, "site longitude, degrees (PV forecast)"),
        ("--tilt", float, d.tilt_deg, "PV tilt, degrees"),
        ("--azimuth", float, d.azimuth_deg, "PV azimuth, degrees (180 = south)"),
        ("--tz", str, d.tz, "the site's time zone (price publication, local days)"),
    ):
        about += f" (default: the trace's '# site:' line, else {default})"
        bt.add_argument(option, type=kind, default=argparse.SUPPRESS, help=about)
    bt.add_argument(
        "--infer-site",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="learn the site's location, PV plane and kWp from the measured PV as the run goes (default: on when "
        "neither --lat/--lon nor the trace's '# site:' line gives a location)",
    )
    bt.add_argument(
        "--price-publication",
        type=_hhmm,
        default=d.price_publication,
        help="site-local time tomorrow's day-ahead prices become known (HH:MM)",
    )
    bt.add_argument("--pv-forecast-column", default=None, help="a trace column holding an external PV forecast")
    bt.add_argument(
        "--pv-index",
        default=None,
        metavar="FILE",
        help="a day-ahead forecast that follows the site's PV, e.g. a regional PV forecast (CSV ts,value): "
        "each day's PV is planned on the site's ratio to it (cloud/forecast_pv_index.py)",
    )
    bt.add_argument(
        "--pv-index-lead-hours",
        type=float,
        default=d.pv_index_lead_hours,
        help="hours before a day's first slot its --pv-index values become known (default %(default)s: 18:00 "
        "the day before, ENTSO-E's day-ahead wind and solar deadline)",
    )
    bt.add_argument(
        "--execution",
        choices=[e.value for e in Execution],
        default=d.execution.value,
        help="how the edge executes the slots (setpoint: the battery power; grid_target: the grid power)",
    )
    bt.add_argument(
        "--forecast", choices=[f.value for f in Forecast], default=d.forecast.value, help="diagnostics: perfect*"
    )
    bt.add_argument(
        "--truth-from-hours",
        type=float,
        default=d.truth_from_hours,
        help="with --forecast perfect*: the measured values only from this many hours ahead of each plan on",
    )
    bt.add_argument(
        "--truth-until-hours",
        type=float,
        default=None,
        help="with --forecast perfect*: the measured values only up to this many hours ahead of each plan "
        "(default: the horizon's end); the forecasters' output elsewhere",
    )
    bt.add_argument(
        "--load-model",
        choices=[m.value for m in LoadModel],
        default=d.load_model.value,
        help="the load forecaster the planner uses",
    )
    bt.add_argument(
        "--pv-model",
        choices=[m.value for m in PvModel],
        default=d.pv_model.value,
        help="fit: orientation, kWp, clipping and hourly shading fitted to the PV history (pvlib)",
    )
    bt.add_argument(
        "--pv-shape",
        action=argparse.BooleanOptionalAction,
        default=d.pv_shape,
        help="factor PV: correct the clear-sky shape per slot of the day by the last 14 days' measured/forecast",
    )
    bt.add_argument(
        "--pv-nowcast-max",
        type=float,
        default=d.pv_nowcast_max,
        help="factor PV: the intraday nowcast's upper bound on measured / forecast of the last 2 h",
    )
    bt.add_argument(
        "--price-forecast",
        action="store_true",
        help="plan the whole horizon: unpublished hours get a forecast from the published prices",
    )
    bt.add_argument(
        "--price-forecast-hours",
        type=float,
        default=d.price_forecast_hours,
        help="with --price-forecast: forecast prices extend a plan to this many hours ahead (at most the horizon)",
    )
    bt.add_argument(
        "--price-model",
        choices=[m.value for m in PriceModel],
        default=d.price_model.value,
        help="the forecaster of unpublished prices (cloud.forecast_price.PriceModel)",
    )
    bt.add_argument(
        "--load-quantile",
        type=float,
        default=None,
        help="plan on this quantile (0.1-0.9) of the load: the GBM's quantiles, or the profile + the house's spread",
    )
    bt.add_argument(
        "--terminal-value",
        action=argparse.BooleanOptionalAction,
        default=d.terminal_value,
        help="value the energy left at the horizon's end at the last day's cheapest import (default on)",
    )
    bt.add_argument(
        "--terminal-basis",
        choices=[b.value for b in TerminalBasis],
        default=d.terminal_basis.value,
        help="the terminal value: cheapest import x discharge efficiency - wear, the price, or / charge efficiency",
    )
    bt.add_argument(
        "--terminal-next-day",
        action="store_true",
        help="the terminal value's price: no more than the forecast cheapest import of the day after the horizon",
    )
    bt.add_argument(
        "--scenarios",
        action=argparse.BooleanOptionalAction,
        default=d.scenarios,
        help="two-stage plan over P10/P50/P90 PV (weather) scenarios, one decision for the slots about to run "
        "(default on)",
    )
    bt.add_argument(
        "--share-night",
        action=argparse.BooleanOptionalAction,
        default=d.share_night,
        help="--scenarios: one battery decision for all scenarios at night up to the first sunlit slot (no PV "
        "information arrives before it; default on), not only for the slots about to run",
    )
    bt.add_argument(
        "--load-scenarios",
        action="store_true",
        help="two-stage plan over whole-day load scenarios (P10 / P90 of the recent days' load over the profile)",
    )
    bt.add_argument(
        "--load-persistence",
        action=argparse.BooleanOptionalAction,
        default=d.load_persistence,
        help="load nowcast: the last slot's error fades by the house's own measured persistence (default on)",
    )
    bt.add_argument(
        "--pv-persistence",
        action=argparse.BooleanOptionalAction,
        default=d.pv_persistence,
        help="PV day to day: plan today and the next days on the site's own persistence of clear and cloudy "
        "days (the AR(1) of its daily clearness) instead of the two-week mean day",
    )
    bt.add_argument(
        "--pv-persistence-days",
        type=float,
        default=d.pv_persistence_days,
        help="days of daily clearness the PV persistence is measured over (default %(default)s)",
    )
    bt.add_argument(
        "--pv-spread",
        choices=[v.value for v in PvSpread],
        default=d.pv_spread.value,
        help="--scenarios' dark / bright days: the last 14 days' P10 / P90 (unconditional) or those of the AR(1) "
        "forecast's residual around today's and yesterday's clearness (conditional)",
    )
    bt.add_argument(
        "--pv-spread-days",
        type=float,
        default=d.pv_spread_days,
        help="--pv-spread conditional: days of residuals its P10 / P90 and persistence are measured over "
        "(default %(default)s)",
    )
    bt.add_argument(
        "--load-reserve",
        action=argparse.BooleanOptionalAction,
        default=d.load_reserve,
        help="plan net-demand slots on the whole-day load ratio's quantile 1 - export/import (newsvendor; default on)",
    )
    bt.add_argument(
        "--load-day-kinds",
        action=argparse.BooleanOptionalAction,
        default=d.load_day_kinds,
        help="load profile pooled by day kind (working day / weekend or holiday) instead of by weekday (default on)",
    )
    bt.add_argument(
        "--load-holidays",
        action=argparse.BooleanOptionalAction,
        default=d.load_holidays,
        help="weekly load profile with public holidays (--holidays, else the time zone's country) as Sundays",
    )
    bt.add_argument(
        "--load-day-level",
        action=argparse.BooleanOptionalAction,
        default=d.load_day_level,
        help="load profile scaled by the last day's level, carried forward by the house's day-to-day persistence "
        "(default on)",
    )
    bt.add_argument(
        "--load-day-level-days",
        type=float,
        default=d.load_day_level_days,
        help="days of 24 h blocks the load's day-to-day persistence is measured over (default %(default)s)",
    )
    bt.add_argument(
        "--load-kind-weeks",
        type=float,
        default=d.load_kind_weeks,
        help="--load-day-kinds: weeks of same-kind days the profile averages (default %(default)s)",
    )
    bt.add_argument(
        "--holidays",
        default=None,
        help="COUNTRY[/SUBDIVISION] public holidays (--load-model gbm, --load-day-kinds; default: the time zone's "
        "country for --load-day-kinds)",
    )
    bt.add_argument(
        "--load-refit-days",
        type=float,
        default=d.load_refit_days,
        help="--load-model gbm: train from scratch every N days (default 14)",
    )
    bt.add_argument(
        "--load-update",
        action=argparse.BooleanOptionalAction,
        default=d.load_update,
        help="--load-model gbm: continue the model daily with a few trees on the new rows between refits (default on)",
    )
    bt.add_argument("--days", type=float, default=None, help="only the first N days of the traces")
    bt.add_argument(
        "--step-minutes",
        type=float,
        default=None,
        help="plan and execute in slots of this length (a divisor of the trace's step: each row's values are "
        "held, e.g. 15 over hourly data); default the trace's step",
    )
    bt.add_argument(
        "--tariff",
        default=None,
        help="a tariff JSON as registered (cloud/tariffs.py): the import and export prices come from it and the "
        "trace's spot_price column (EUR/kWh) instead of the trace's import_price / export_price",
    )
    bt.add_argument("--slots-csv", default=None, help="write one row per slot to this CSV")
    bt.add_argument("--plot", default=None, help="write a PNG of the first --plot-days days")
    bt.add_argument("--plot-days", type=float, default=7.0, help="days shown in --plot")
    bt.add_argument("--no-oracle", action="store_true", help="skip the perfect-foresight solve")


def config_from_args(args: argparse.Namespace) -> Config:
    d = Config()
    return Config(
        battery_kwh=args.battery_kwh,
        battery_kw=args.battery_kw,
        efficiency=getattr(args, "efficiency", d.efficiency),
        charge_kw=getattr(args, "charge_kw", None),
        discharge_kw=getattr(args, "discharge_kw", None),
        charge_efficiency=getattr(args, "charge_efficiency", None),
        discharge_efficiency=getattr(args, "discharge_efficiency", None),
        soc_min=getattr(args, "soc_min", d.soc_min),
        soc_max=getattr(args, "soc_max", d.soc_max),
        soc_initial=getattr(args, "soc_initial", d.soc_initial),
        cycle_cost=getattr(args, "cycle_cost", d.cycle_cost),
        grid_import_kw=getattr(args, "grid_import_kw", d.grid_import_kw),
        grid_export_kw=getattr(args, "grid_export_kw", d.grid_export_kw),
        replan_hours=args.replan_hours,
        horizon_hours=args.horizon_hours,
        fine_hours=getattr(args, "fine_hours", d.fine_hours),
        lat=getattr(args, "lat", d.lat),
        lon=getattr(args, "lon", d.lon),
        pv_kwp=getattr(args, "pv_kwp", d.pv_kwp),
        tilt_deg=getattr(args, "tilt", d.tilt_deg),
        azimuth_deg=getattr(args, "azimuth", d.azimuth_deg),
        tz=getattr(args, "tz", d.tz),
        infer_site=_infer_site(args),
        infer_tz=_infer_site(args) and not hasattr(args, "tz"),
        price_publication=getattr(args, "price_publication", d.price_publication),
        execution=Execution(getattr(args, "execution", d.execution.value)),
        forecast=Forecast(getattr(args, "forecast", d.forecast.value)),
        truth_from_hours=getattr(args, "truth_from_hours", d.truth_from_hours),
        truth_until_hours=getattr(args, "truth_until_hours", None),
        load_model=LoadModel(getattr(args, "load_model", d.load_model.value)),
        pv_model=PvModel(getattr(args, "pv_model", d.pv_model.value)),
        pv_shape=getattr(args, "pv_shape", d.pv_shape),
        pv_nowcast_max=getattr(args, "pv_nowcast_max", d.pv_nowcast_max),
        holidays=getattr(args, "holidays", None),
        load_refit_days=getattr(args, "load_refit_days", d.load_refit_days),
        load_update=getattr(args, "load_update", d.load_update),
        price_forecast=getattr(args, "price_forecast", False),
        price_model=PriceModel(getattr(args, "price_model", d.price_model.value)),
        price_forecast_hours=getattr(args, "price_forecast_hours", d.price_forecast_hours),
        load_quantile=getattr(args, "load_quantile", None),
        scenarios=getattr(args, "scenarios", d.scenarios),
        load_scenarios=getattr(args, "load_scenarios", d.load_scenarios),
        share_night=getattr(args, "share_night", d.share_night),
        load_persistence=getattr(args, "load_persistence", d.load_persistence),
        load_reserve=getattr(args, "load_reserve", d.load_reserve),
        load_day_kinds=getattr(args, "load_day_kinds", d.load_day_kinds),
        load_day_level=getattr(args, "load_day_level", d.load_day_level),
        load_holidays=getattr(args, "load_holidays", d.load_holidays),
        load_day_level_days=getattr(args, "load_day_level_days", d.load_day_level_days),
        load_kind_weeks=getattr(args, "load_kind_weeks", d.load_kind_weeks),
        pv_persistence=getattr(args, "pv_persistence", d.pv_persistence),
        pv_persistence_days=getattr(args, "pv_persistence_days", d.pv_persistence_days),
        pv_index_lead_hours=getattr(args, "pv_index_lead_hours", d.pv_index_lead_hours),
        pv_spread=PvSpread(getattr(args, "pv_spread", d.pv_spread.value)),
        pv_spread_days=getattr(args, "pv_spread_days", d.pv_spread_days),
        terminal_value=getattr(args, "terminal_value", d.terminal_value),
        terminal_basis=TerminalBasis(getattr(args, "terminal_basis", d.terminal_basis.value)),
        terminal_next_day=getattr(args, "terminal_next_day", d.terminal_next_day),
    )


def _infer_site(args: argparse.Namespace) -> bool:
    """--infer-site as given, else on when no location is registered: the De Bilt default would be a guess."""
    given = getattr(args, "infer_site", None)
    if given is not None:
        return bool(given)
    return not (hasattr(args, "lat") or hasattr(args, "lon"))


def options_problem(args: argparse.Namespace) -> str | None:
    """The first option outside its bound (BOUNDS), or None: checked before anything is read or run."""
    for dest, bound in BOUNDS.items():
        value = getattr(args, dest, None)
        if value is not None and (problem := bound.problem(value)):
            return problem
    return None


def config_problem(cfg: Config) -> str | None:
    """Why a configuration cannot be simulated, or None. Every number within its bound (BOUNDS), then the
    relations between them."""
    for f in fields(cfg):
        bound = BOUNDS.get(FIELD_DEST.get(f.name, f.name))
        value = getattr(cfg, f.name)
        if bound is not None and value is not None and (problem := bound.problem(value)):
            return problem
    if cfg.load_quantile is not None and cfg.load_model is LoadModel.PERSISTENCE:
        return "--load-quantile needs --load-model profile, gbm or gbm_mean"
    partial_truth = cfg.truth_from_hours > 0.0 or cfg.truth_until_hours is not None
    if partial_truth and cfg.forecast is Forecast.MODEL:
        return "--truth-from-hours / --truth-until-hours need --forecast perfect, perfect_pv or perfect_load"
    if cfg.truth_until_hours is not None and not cfg.truth_from_hours < cfg.truth_until_hours:
        return "need --truth-from-hours < --truth-until-hours"
    if not cfg.soc_min < cfg.soc_max or not cfg.soc_min <= cfg.soc_initial <= cfg.soc_max:
        return "need --soc-min <= --soc-initial <= --soc-max and --soc-min < --soc-max"
    try:
        cfg.zone  # noqa: B018 - resolves the name
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {cfg.tz!r}"
    if cfg.holidays:
        import holidays

        country, _, subdiv = cfg.holidays.partition("/")
        try:
            holidays.country_holidays(country, subdiv=subdiv or None)
        except NotImplementedError:
            return f"unknown holiday calendar {cfg.holidays!r}"
    return None


__all__ = [
    "BOUNDS",
    "MAX_CAPACITY_KWH",
    "MAX_POWER_KW",
    "MAX_PRICE_ABS",
    "NO_LIMIT_KW",
    "SITE_KEYS",
    "Bound",
    "Config",
    "Forecast",
    "LoadModel",
    "PvModel",
    "PvSpread",
    "add_arguments",
    "config_from_args",
    "config_problem",
    "options_problem",
]
