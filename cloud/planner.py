"""The rolling planner: turn a site's assets, telemetry, forecasts and prices into a signed plan.

`plan_site(db, site_id, now, signing_key)` plans one site once; `run_planner` is the loop in each
`zapcloud serve` worker. The loop keeps nothing in the process: which site is due, who is planning it and
what telemetry the last plan saw all live in `plan_jobs` (cloud/store.py), so any worker can plan any site
and a worker that dies mid-plan only delays that site by one lease.

A site becomes due (a) 15 minutes after its last plan (the rolling horizon must move on even when nothing
arrives, because forecasts and the SoC drift from the plan), (b) when telemetry arrived after its last plan
(at most every 5 minutes, so a chatty Zap does not keep a worker busy), (c) when new spot prices for its
zone are stored, (d) on a demand-response event.

The horizon is 48 h of 15-minute slots where prices reach that far: day-ahead prices for tomorrow appear
around 12:00 UTC, so the horizon is 12-36 h in the morning and 36-48 h after publication. A tariff without
spot prices is known arbitrarily far ahead.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np
import structlog
from nacl.signing import SigningKey
from sqlalchemy.exc import SQLAlchemyError

from cloud.assets import AssetsError, SiteAssets, decode_assets
from cloud.db import Database, PlanVersionConflictError
from cloud.db import planning as store
from cloud.execution import (
    DEFAULT_EXECUTION,
    Execution,
    absorb_for,
    plan_values,
    slot_intent,
    slot_mode,
)
from cloud.external_pv import KIND as EXTERNAL_PV
from cloud.external_pv import external_pv_on_grid, place
from cloud.forecast import (
    NOWCAST_RECENT_H,
    FloatArray,
    OpenMeteoClient,
    PvFactor,
    WeatherDataError,
    WeatherError,
    forecast_pv,
    learn_pv_factor,
    mae,
    pv_nowcast,
    pv_ratio_spread,
    weather_dimming,
)
from cloud.forecast_price import forecast_prices, terminal_value
from cloud.forecast_pv import SkyGrid
from cloud.forecast_pv_day import (
    PV_MEAN_DAYS,
    PV_PERSISTENCE_DAYS,
    PV_SPREAD_DAYS,
    PvDayOutlook,
    pv_day_outlook_from_series,
    pv_day_spread_from_series,
)
from cloud.forecast_pv_index import (
    INDEX_RATIO_DAYS,
    INDEX_SPREAD_DAYS,
    index_days,
    index_outlook,
    index_ratios,
    plan_levels,
)
from cloud.optimizer import solve
from cloud.optimizer_io import Battery, Ev, Grid, Problem, Solution
from cloud.peak_limit import NO_TARGET, TARGET_HISTORY_DAYS, PeakTarget, month_target, peak_import_limit_w, round_up_w
from cloud.plan_grid import FINE_HOURS, coarse_problem, coarse_slots, far_grid, fine_solution, ratios_on_grid
from cloud.plan_risk import (
    LOAD_RISK_HISTORY_DAYS,
    NEUTRAL,
    NO_LOAD_RISK,
    LoadRisk,
    PvRatios,
    checked_pv_ratios,
    checked_spread,
    learn_load_risk,
    night_shared_slots,
    pv_scenario_ratios,
    reserve_load,
    solve_two_stage,
)
from cloud.prices import EntsoeClient, NoPriceData, PriceSourceError
from cloud.pv_index_store import KIND as PV_INDEX
from cloud.pv_index_store import pv_index_on_grid
from cloud.server.metrics import PV_REGISTRATION_MISMATCH, WEATHER_FAILURES
from cloud.server.service import next_plan_version, publish_plan
from cloud.site_forecast import LoadChoice, ModelChoice, PvChoice, site_load_forecast, site_pv_model
from cloud.site_infer import registration_warnings
from cloud.site_series import SiteSeries, load_series
from cloud.sky_cache import clear_sky_cached
from cloud.tariffs import Tariff, TariffError, billing_period_start, decode_tariff, demand_charge, price_arrays
from cloud_sync.wire import WireError
from zapd.model import Intent, IntentMode, Plan, PlanSlot

log = structlog.get_logger("zapcloud.planner")

STEP: Final = timedelta(minutes=15)
SLOTS_PER_DAY: Final = 96
ENTSOE_TOKEN_ENV: Final = "ZAPCLOUD_ENTSOE_TOKEN"
ENTSOE_SOURCE: Final = "ENTSO-E Transparency A44 day-ahead"


@dataclass(frozen=True, slots=True)
class PlannerOptions:
    horizon_slots: int = 192
    min_slots: int = 4  # plan at least an hour, or not at all
    replan_every: timedelta = timedelta(minutes=15)
    telemetry_min_interval: timedelta = timedelta(minutes=5)
    retry_after_error: timedelta = timedelta(minutes=5)
    lease: timedelta = timedelta(minutes=2)
    plan_valid_for: timedelta = timedelta(hours=24)
    load_history_days: int = 56  # the load forecast's day-level persistence reads 28 days' errors on 4-week profiles
    pv_history_days: int = 14
    forecast_score_slots: int = SLOTS_PER_DAY  # MAE over the first day of each forecast
    solve_time_limit_s: float = 10.0
    weather: OpenMeteoClient | None = None
    execution: Execution = DEFAULT_EXECUTION
    # plan past the published day-ahead prices with forecast ones (flagged in the flows: price_forecast)
    price_forecast: bool = False
    models: ModelChoice = field(default_factory=ModelChoice)  # which forecasters; trained per site (site_forecast)
    # the factor forecast's day-to-day part from the site's own clear/cloudy-day persistence (cloud.forecast_pv_day)
    pv_persistence: bool = False
    # plan each day on the site's ratio to its uploaded regional day-ahead PV forecast, where it has one
    # (cloud/pv_index_store.py, cloud.forecast_pv_index; the backtest's --pv-index)
    pv_index: bool = True
    # the two-stage plan over a dark and a bright day (cloud.plan_risk), where the PV is the factor forecast
    # without weather or an external forecast; the battery decision of the first `scenario_shared` is one for
    # all scenarios (an hour: the backtest's re-plan interval, where it was measured; docs/decisions.md)
    scenarios: bool = True
    scenario_shared: timedelta = timedelta(hours=1)
    # and at night every decision up to the first sunlit slot: no PV information arrives before it
    # (cloud.plan_risk.night_shared_slots, the backtest's --share-night)
    scenario_share_night: bool = True
    # the newsvendor load reserve in the slots the battery serves (cloud.plan_risk)
    load_reserve: bool = True
    # the plan's slots at the 15-minute step for this many hours (to the next clock hour), then an hour each
    # (cloud.plan_grid; the backtest's --fine-hours); a demand-response window keeps the step throughout
    fine_hours: float = FINE_HOURS

    def for_site(self, assets: SiteAssets) -> PlannerOptions:
        """These options with the site's own choices (`assets.planning`) where it made one."""
        p = assets.planning
        if p is None:
            return self
        models = replace(
            self.models,
            pv=self.models.pv if p.pv_model is None else PvChoice(p.pv_model),
            load=self.models.load if p.load_model is None else LoadChoice(p.load_model),
        )
        return replace(
            self,
            models=models,
            price_forecast=self.price_forecast if p.price_forecast is None else p.price_forecast,
            execution=self.execution if p.execution is None else Execution(p.execution),
            scenarios=self.scenarios if p.scenarios is None else p.scenarios,
            load_reserve=self.load_reserve if p.load_reserve is None else p.load_reserve,
        )


class PlanError(Exception):
    """This site cannot be planned now (no prices yet, no assets, infeasible); the message says why."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """Everything the planner derived for one site at one instant, before solving."""

    site_id: str
    now: datetime
    start: datetime
    assets: SiteAssets
    tariff: Tariff
    problem: Problem
    series: SiteSeries
    pv_forecast: FloatArray
    load_forecast: FloatArray
    pv_factor: PvFactor
    soc_source: str
    incentive: FloatArray  # per slot, already added to the problem's prices
    base_import_price: list[float] = field(default_factory=list)
    price_known_slots: int | None = None  # slots with published prices; past them the prices are a forecast
    base_export_price: list[float] = field(default_factory=list)
    execution: Execution = DEFAULT_EXECUTION  # the site's (PlannerOptions.for_site)
    # the two-stage plan's dark / bright PV ratios: per slot from the conditional spread (`_pv_scenario_spread`),
    # or one (P10, P90) pair where it has too few days; NEUTRAL: one deterministic plan (scenarios off, or a
    # weather or external forecast shaped the PV, or too little history)
    pv_spread: PvRatios = NEUTRAL
    scenario_shared_slots: int = 4
    load_risk: LoadRisk = NO_LOAD_RISK  # the whole-day load ratios the reserve was planned on (none: off)

    @property
    def starts(self) -> list[datetime]:
        return [self.start + STEP * i for i in range(self.problem.horizon)]


@dataclass(frozen=True, slots=True)
class PlanResult:
    site_id: str
    version: int
    slots: int
    cost: float
    solve_ms: float
    soc_source: str
    planned_through_seq: int
    two_stage: bool = False  # the plan came from the two-stage solve over the PV scenarios


def floor_slot(ts: datetime) -> datetime:
    ts = ts.astimezone(UTC)
    return ts.replace(minute=ts.minute - ts.minute % 15, second=0, microsecond=0)


# --- building the problem -------------------------------------------------------------------


async def prepare(
    db: Database,
    site_id: str,
    now: datetime,
    options: PlannerOptions,
    *,
    extra_incentives: list[store.Incentive] | None = None,
    prices: store.SpotPrices | None = None,
) -> Prepared:
    """The site's problem now; `prices` shares one read of the prices among a batch of sites (a DR turn)."""
    site = await db.get_site(site_id)
    if site is None:
        raise PlanError(f"unknown site {site_id!r}")
    try:
        assets = decode_assets(site.assets)
        tariff = decode_tariff(site.tariff)
    except (AssetsError, TariffError) as exc:
        raise PlanError(str(exc)) from None
    options = options.for_site(assets)
    start = floor_slot(now)
    spot = await _spot(db, tariff, start, options.horizon_slots, prices)
    horizon = known = _known_slots(spot, options.horizon_slots)
    if horizon < options.min_slots:
        raise PlanError(f"prices known for {horizon} slots only (spot area {tariff.spot_area})")
    if spot is not None and options.price_forecast and known < options.horizon_slots:
        spot = await _spot_with_forecast(db, tariff, start, known, options.horizon_slots)
        horizon = options.horizon_slots
    starts = [start + STEP * i for i in range(horizon)]
    imp, exp = price_arrays(tariff, starts, None if spot is None else spot[:horizon])

    history_days = max(options.load_history_days, LOAD_RISK_HISTORY_DAYS if options.load_reserve else 0)
    if options.scenarios and assets.pv and assets.battery is not None:  # the conditional PV spread's days
        history_days = max(history_days, PV_SPREAD_HISTORY_DAYS)
    if assets.pv and options.pv_index and not options.pv_persistence:  # a regional PV forecast's days
        history_days = max(history_days, PV_INDEX_HISTORY_DAYS)
    history_start = min(start - timedelta(days=history_days), billing_period_start(tariff, now))
    series = await load_series(
        db, site_id, history_start, start, STEP, has_battery=assets.battery is not None, has_ev=assets.ev is not None
    )
    pv_fc, factor, pv_spread = await _pv_forecast(db, site_id, assets, series, start, horizon, now, options)
    if assets.pv:  # a site's own forecast service, where it uploaded one (cloud/external_pv.py), wins
        external = await external_pv_on_grid(db, site_id, start, horizon, now)
        pv_fc = np.where(np.isnan(external), pv_fc, external)
        if not np.isnan(external).all():  # its errors are not the factor forecast's (docs/decisions.md)
            pv_spread = NEUTRAL
    load_fc = await site_load_forecast(
        db, site_id, assets, series, horizon, now, options.models, history_days=options.load_history_days
    )
    incentives = await store.site_incentives(db, site_id, start, starts[-1] + STEP)
    incentive = _incentive_per_slot(starts, [*incentives, *(extra_incentives or [])])
    load_risk = NO_LOAD_RISK
    planned_load = load_fc
    if options.load_reserve and assets.battery is not None:
        load_risk = learn_load_risk(series.load_kw[-LOAD_RISK_HISTORY_DAYS * SLOTS_PER_DAY :], SLOTS_PER_DAY)
        imp_i, exp_i = np.asarray(imp) + incentive, np.asarray(exp) + incentive  # the prices the plan sees
        planned_load = reserve_load(load_fc, pv_fc, imp_i, exp_i, load_risk, STEP.total_seconds() / 3600.0)
    # a forecast must not make it infeasible
    load_fc = np.minimum(load_fc, assets.grid.max_import_kw + pv_fc)
    planned_load = np.minimum(planned_load, assets.grid.max_import_kw + pv_fc)
    soc, soc_source = await _initial_soc(db, site_id, series, assets, now)
    month_start = billing_period_start(tariff, now)
    # The peak already set this billing period (history starts at or before the period's start).
    in_month = series.grid_kw[max(0, int((month_start - series.start) // STEP)) :]
    peak = float(np.nanmax(in_month)) if len(in_month) and not np.isnan(in_month).all() else 0.0
    target = await _month_target(db, site_id, assets, tariff, month_start)
    reserve = target.reserve_for(int((start - month_start) // STEP), horizon)
    problem = Problem(
        start=start,
        step_minutes=15.0,
        import_price=[p + i for p, i in zip(imp, incentive, strict=True)],
        export_price=[p + i for p, i in zip(exp, incentive, strict=True)],
        load_kw=[round(float(x), 4) for x in planned_load],
        pv_kw=[round(float(x), 4) for x in pv_fc],
        battery=_battery(assets, soc, np.asarray(imp, dtype=np.float64)),
        grid=Grid(max_import_kw=assets.grid.max_import_kw, max_export_kw=assets.grid.max_export_kw),
        demand_charge=demand_charge(tariff, max(peak, target.level_kw, 0.0), reserve),
        ev=_ev_session(assets, series, starts, now),
    )
    return Prepared(
        site_id=site_id,
        now=now,
        start=start,
        assets=assets,
        tariff=tariff,
        problem=problem,
        series=series,
        pv_forecast=pv_fc,
        load_forecast=load_fc,
        pv_factor=factor,
        soc_source=soc_source,
        incentive=incentive,
        base_import_price=imp,
        base_export_price=exp,
        price_known_slots=known,
        execution=options.execution,
        pv_spread=pv_spread if assets.battery is not None else NEUTRAL,
        scenario_shared_slots=await _scenario_shared_slots(assets, start, horizon, pv_spread, options),
        load_risk=load_risk,
    )


async def _scenario_shared_slots(
    assets: SiteAssets, start: datetime, horizon: int, pv_spread: PvRatios, options: PlannerOptions
) -> int:
    """The first slots whose battery decision the scenarios share: `scenario_shared`, and with
    `scenario_share_night` at night up to the first sunlit slot of the horizon (cloud.plan_risk)."""
    shared = max(1, round(options.scenario_shared / STEP))
    if not options.scenario_share_night or is_neutral(pv_spread) or not assets.pv:
        return shared
    sky = await asyncio.to_thread(clear_sky_cached, assets.pv_location(), assets.pv_arrays(), start, STEP, horizon)
    return night_shared_slots(sky.pv_kw, assets.pv_kwp, shared)


async def _spot(
    db: Database, tariff: Tariff, start: datetime, n: int, prices: store.SpotPrices | None = None
) -> list[float | None] | None:
    if not tariff.needs_spot:
        return None
    assert tariff.spot_area is not None  # decode_tariff checks it
    if prices is not None:
        return await prices.get(db, tariff.spot_area, start, n)
    return await store.get_spot_prices(db, tariff.spot_area, start, n)


async def _spot_with_forecast(db: Database, tariff: Tariff, start: datetime, known: int, n: int) -> list[float | None]:
    """The published spot prices, then a forecast (cloud/forecast_price.py) up to n slots, made from the
    published prices of the last 8 days only (the newest unbroken run of them)."""
    assert tariff.spot_area is not None
    back = 8 * SLOTS_PER_DAY
    history = await store.get_spot_prices(db, tariff.spot_area, start - STEP * back, back + known)
    gap = max((i for i, v in enumerate(history) if v is None), default=-1)
    published = np.asarray(history[gap + 1 :], dtype=np.float64)
    fc = forecast_prices(published, n - known, SLOTS_PER_DAY)
    return [*history[back:], *(float(x) for x in fc)]


def _known_slots(spot: list[float | None] | None, n: int) -> int:
    if spot is None:
        return n
    for i, v in enumerate(spot):
        if v is None:
            return i
    return n


async def _pv_forecast(
    db: Database,
    site_id: str,
    assets: SiteAssets,
    series: SiteSeries,
    start: datetime,
    horizon: int,
    now: datetime,
    options: PlannerOptions,
) -> tuple[FloatArray, PvFactor, PvRatios]:
    """PV kW for the horizon: dimmed by the weather forecast where the site has one configured and it has a
    value for the slot; elsewhere (no forecast, the service down or answering nonsense, slots past its end) the
    forecast without weather: the site model's typical day, or the factor forecast corrected by the nowcast.

    With `options.scenarios`, the factor forecast without weather also gives the two-stage plan's dark and
    bright day: per slot, the conditional spread of the last PV_SPREAD_DAYS (`_pv_scenario_spread`, the
    backtest's default), or where that has too few days the (P10, P90) daily ratio of the days the factor
    learnt from (cloud.forecast.pv_ratio_spread); NEUTRAL otherwise (a weather forecast's errors are not the
    weather's day-to-day spread; the `fit` model was not measured with scenarios)."""
    if not assets.pv:
        return np.zeros(horizon), PvFactor(), NEUTRAL
    past = options.pv_history_days * SLOTS_PER_DAY
    # cached per UTC day across sites and plans (cloud/sky_cache.py): the same numbers, computed once
    sky = await asyncio.to_thread(
        clear_sky_cached, assets.pv_location(), assets.pv_arrays(), start - STEP * past, STEP, past + horizon
    )
    _check_pv_registration(site_id, series.pv_kw[-past:], sky.pv_kw[:past], start, now)
    weather = await _weather(site_id, assets, start, horizon, options)
    if options.models.pv is PvChoice.FIT:
        model = await site_pv_model(db, site_id, assets, series, now, options.models)
        grid = await asyncio.to_thread(SkyGrid.compute, assets.pv_location(), start, STEP, horizon)
        typical = model.forecast(grid, 0, horizon)
        factor = PvFactor(model.typical, 1.0, model.days)
        if weather is None:
            return typical, factor, NEUTRAL
        dimmed = model.forecast(grid, 0, horizon, weather_dimming(grid.ghi, **weather))
        return _with_weather(weather, dimmed, typical), factor, NEUTRAL
    measured = series.pv_kw[-past:]
    factor = learn_pv_factor(measured, sky.pv_kw[past - len(measured) : past], SLOTS_PER_DAY, assets.pv_kwp)
    # no weather forecast: the last hours' measured PV against their own forecast corrects the next hours
    recent = min(len(measured), round(NOWCAST_RECENT_H * SLOTS_PER_DAY / 24))
    recent_fc = forecast_pv(sky.pv_kw[past - recent : past], factor)
    pv = forecast_pv(sky.pv_kw[past:], factor)
    levels = np.ones(horizon)  # the point forecast's level over the mean day, per slot (the backtest's pv_levels)
    index_pairs = None
    if options.pv_persistence:  # today and the next days on the site's own day-to-day persistence
        outlook, left_today = await _pv_day_outlook(assets, series, start, factor.typical)
        recent_fc = sky.pv_kw[past - recent : past] * outlook.level(0)
        day_levels = outlook.factors(horizon, left_today, SLOTS_PER_DAY)
        pv = sky.pv_kw[past:] * day_levels
        levels = day_levels / max(factor.typical, 1e-9)
    elif options.pv_index and (
        by_index := await _pv_index_levels(db, site_id, assets, series, start, horizon, now, factor.typical)
    ):
        index_levels, index_pairs = by_index  # each day on the site's ratio to its uploaded regional forecast
        recent_fc = recent_fc * index_levels[0]
        pv = pv * index_levels[1:]
        levels = index_levels[1:]
    nowcast = pv_nowcast(pv, measured[len(measured) - recent :], recent_fc, 24 / SLOTS_PER_DAY, assets.pv_kwp)
    if weather is None:
        spread: PvRatios = NEUTRAL
        if options.scenarios:  # the fallback: the days learn_pv_factor learnt from, as the backtest's
            clear = sky.pv_kw[past - len(measured) : past]
            spread = checked_spread(*pv_ratio_spread(measured, clear, SLOTS_PER_DAY, assets.pv_kwp))
            spread = await _pv_scenario_spread(assets, series, start, horizon, factor.typical, spread, levels)
            if index_pairs is not None:  # the days the index scales: its own residuals' dark / bright day
                spread = index_ratios(checked_pv_ratios(spread, horizon), index_pairs[1:])
        return nowcast, factor, spread
    dimmed = forecast_pv(sky.pv_kw[past:], factor, weather_dimming(sky.ghi[past:], **weather))
    return _with_weather(weather, dimmed, nowcast), factor, NEUTRAL


# when each site's disagreeing registration was last logged: once a day, not every plan (every 15 minutes)
_PV_REGISTRATION_LOGGED: dict[str, datetime] = {}
PV_REGISTRATION_LOG_EVERY: Final = timedelta(days=1)


def _check_pv_registration(
    site_id: str, measured: FloatArray, clear_kw: FloatArray, start: datetime, now: datetime
) -> None:
    """Log (`planner.pv_registration_mismatch`) and count (`zapcloud_pv_registration_mismatch_total{kind}`) a
    site whose registered location or arrays disagree strongly with the PV it measured over the history the
    forecast learns from (cloud.site_infer.registration_warnings): its forecasts have the wrong daily shape
    or size until the registration is corrected. At most once a day per site; the plan goes on."""
    last = _PV_REGISTRATION_LOGGED.get(site_id)
    if last is not None and timedelta(0) <= now - last < PV_REGISTRATION_LOG_EVERY:
        return
    n = min(len(measured), len(clear_kw))
    problems = registration_warnings(
        measured[len(measured) - n :], clear_kw[len(clear_kw) - n :], start - STEP * n, STEP
    )
    if not problems:
        return
    _PV_REGISTRATION_LOGGED[site_id] = now
    for kind, message in problems:
        PV_REGISTRATION_MISMATCH[kind] += 1
        log.warning("planner.pv_registration_mismatch", site_id=site_id, kind=kind, problem=message)


def solar_day_start(start: datetime, lon: float) -> datetime:
    """The slot of the last solar midnight at or before `start` (a day boundary where the sun is down
    everywhere on the site's meridian: UTC midnight would cut an Australian day at 10:00)."""
    shift = timedelta(hours=lon / 15.0)
    solar = start.astimezone(UTC) + shift
    return floor_slot(solar.replace(hour=0, minute=0, second=0, microsecond=0) - shift)


async def _pv_day_outlook(
    assets: SiteAssets, series: SiteSeries, start: datetime, mean: float
) -> tuple[PvDayOutlook, int]:
    """The PV day persistence (cloud.forecast_pv_day) from the site's telemetry before `start`, and how many
    of the plan's slots are left of today (solar days; the history is the series' whole days before today)."""
    location = assets.pv_location()
    today_start = solar_day_start(start, location.lon)
    today = int((today_start - series.start) // STEP)
    left_today = SLOTS_PER_DAY - int((start - today_start) // STEP)
    first = max(0, today - PV_PERSISTENCE_DAYS * SLOTS_PER_DAY)
    if today <= first:
        return PvDayOutlook(mean), left_today
    measured = series.pv_kw[first:]
    sky = await asyncio.to_thread(
        clear_sky_cached,
        location,
        assets.pv_arrays(),
        series.start + STEP * first,
        STEP,
        today - first + SLOTS_PER_DAY,
    )
    outlook = pv_day_outlook_from_series(measured, sky.pv_kw, today - first, SLOTS_PER_DAY, mean, assets.pv_kwp)
    return outlook, left_today


# the telemetry a regional PV forecast is learnt from: its residuals' days, each on the ratio of the days before
PV_INDEX_HISTORY_DAYS: Final = INDEX_SPREAD_DAYS + INDEX_RATIO_DAYS + 1


async def _pv_index_levels(
    db: Database,
    site_id: str,
    assets: SiteAssets,
    series: SiteSeries,
    start: datetime,
    horizon: int,
    now: datetime,
    mean: float,
) -> tuple[FloatArray, FloatArray] | None:
    """With a regional day-ahead PV forecast uploaded for the site (cloud/pv_index_store.py): the level over
    the mean day of the slot before `start` (the nowcast's window) and of each horizon slot, and the scenarios'
    (dark, bright) pairs, as the backtest's `--pv-index` (cloud.forecast_pv_index.plan_levels) on the solar
    days of the last PV_INDEX_HISTORY_DAYS and those the horizon reaches; None without an upload there. Only
    what was uploaded by `now` is read, and no PV measured from `start` on."""
    location = assets.pv_location()
    today_start = solar_day_start(start, location.lon)
    first = today_start - timedelta(days=PV_INDEX_HISTORY_DAYS)
    ahead = math.ceil((start + STEP * horizon - today_start) / timedelta(days=1))
    n = (PV_INDEX_HISTORY_DAYS + ahead) * SLOTS_PER_DAY
    index = await pv_index_on_grid(db, site_id, first, n, now)
    if np.isnan(index).all():
        return None
    sky = await asyncio.to_thread(clear_sky_cached, location, assets.pv_arrays(), first, STEP, n)
    now_slot = int((start - first) // STEP)
    measured = np.full(now_slot, np.nan)  # the series may start after the first day (a new site)
    place(measured, first, series.start, series.pv_kw)
    days = index_days(measured, sky.pv_kw, index, SLOTS_PER_DAY, assets.pv_kwp)
    outlook = index_outlook(days, PV_INDEX_HISTORY_DAYS)
    slots = np.arange(now_slot - 1, now_slot + horizon)
    return plan_levels(days, outlook, slots, np.ones(len(slots), dtype=bool), SLOTS_PER_DAY, mean)


# the telemetry the conditional PV spread reads: its PV_SPREAD_DAYS residual days, each on the mean day of the
# PV_MEAN_DAYS before it, and the day before the first (learn_spread_history's days + mean_days + 1)
PV_SPREAD_HISTORY_DAYS: Final = PV_SPREAD_DAYS + PV_MEAN_DAYS + 1


def conditional_pv_ratios(
    measured_kw: FloatArray,
    clear_kw: FloatArray,
    today: int,
    horizon: int,
    mean: float,
    kwp: float,
    fallback: tuple[float, float],
    levels: FloatArray,
) -> PvRatios:
    """The two-stage plan's dark / bright ratio per slot from the conditional spread, as the backtest's
    `--pv-spread conditional` (cloud.forecast_pv_day.pv_day_spread_from_series, cloud.plan_risk.pv_scenario_ratios):
    `measured_kw` up to now, `clear_kw` from its first slot through the end of today, `today` the index of
    today's first slot, `mean` the factor's mean day, `levels` the point forecast's level over it per slot.
    The unconditional `fallback` pair where the spread has too few usable days or a ratio fails
    plan_risk.checked_pv_ratios (not finite, dark > bright, out of range)."""
    left_today = SLOTS_PER_DAY - (len(measured_kw) - today)
    spread = pv_day_spread_from_series(measured_kw, clear_kw, today, SLOTS_PER_DAY, mean, kwp)
    if spread is None:
        return fallback
    ratios = pv_scenario_ratios(spread, fallback, horizon, left_today, SLOTS_PER_DAY, levels)
    checked = checked_pv_ratios(ratios, horizon)
    # checked_pv_ratios answers NEUTRAL everywhere for a bad ratio: keep the fallback rather than no scenarios
    kept = np.array_equal(checked[0], ratios[0]) and np.array_equal(checked[1], ratios[1])
    return checked if kept else fallback


async def _pv_scenario_spread(
    assets: SiteAssets,
    series: SiteSeries,
    start: datetime,
    horizon: int,
    mean: float,
    fallback: tuple[float, float],
    levels: FloatArray,
) -> PvRatios:
    """`conditional_pv_ratios` on the site's telemetry before `start`: the last PV_SPREAD_HISTORY_DAYS solar
    days before today (as `_pv_day_outlook`) and today so far. Re-learnt each plan: 75 days x 96 slots of
    numpy, and the clear sky is cached per UTC day (cloud/sky_cache.py)."""
    location = assets.pv_location()
    today_start = solar_day_start(start, location.lon)
    today = int((today_start - series.start) // STEP)
    now = int((start - series.start) // STEP)
    first = max(0, today - PV_SPREAD_HISTORY_DAYS * SLOTS_PER_DAY)
    if today <= first or now > len(series.pv_kw):
        return fallback
    sky = await asyncio.to_thread(
        clear_sky_cached,
        location,
        assets.pv_arrays(),
        series.start + STEP * first,
        STEP,
        today - first + SLOTS_PER_DAY,
    )
    measured = series.pv_kw[first:now]
    return conditional_pv_ratios(measured, sky.pv_kw, today - first, horizon, mean, assets.pv_kwp, fallback, levels)


def is_neutral(ratios: PvRatios) -> bool:
    """Whether the PV ratios are 1 everywhere (one deterministic plan)."""
    return all(bool(np.all(np.asarray(r, dtype=np.float64) == 1.0)) for r in ratios)


def first_slot_ratios(ratios: PvRatios) -> tuple[float, float]:
    """The (dark, bright) pair of the plan's first slot: the one pair of an unconditional spread, the rest
    of today's of a conditional one (the ratios the shared first hour's battery decision is made against)."""
    dark, bright = (np.atleast_1d(np.asarray(r, dtype=np.float64)) for r in ratios)
    return (float(dark[0]), float(bright[0])) if len(dark) and len(bright) else NEUTRAL


def _with_weather(weather: dict[str, FloatArray], dimmed: FloatArray, without: FloatArray) -> FloatArray:
    """`dimmed` where the weather forecast has a value for the slot, `without` where it has none (NaN)."""
    (values,) = weather.values()
    return np.where(np.isnan(values), without, dimmed)


async def _weather(
    site_id: str, assets: SiteAssets, start: datetime, horizon: int, options: PlannerOptions
) -> dict[str, FloatArray] | None:
    """The weather forecast on the plan's grid as weather_dimming's keyword, if configured and answering.

    A failure is logged and counted (`zapcloud_weather_failures_total{reason}` on /metrics): `unavailable`
    (down, slow, an HTTP error), `invalid` (not JSON, values out of range, wrong lengths), `no_coverage` (an
    answer that covers none of the plan's slots); the plan is then made without the weather."""
    if assets.weather is None or options.weather is None:
        return None
    try:
        wx = await options.weather.forecast(assets.pv_location())
    except WeatherError as exc:
        reason = "invalid" if isinstance(exc, WeatherDataError) else "unavailable"
        WEATHER_FAILURES[reason] += 1
        log.warning("planner.weather_unavailable", site_id=site_id, reason=reason, error=str(exc)[:300])
        return None
    grid = wx.on_grid(start, STEP, horizon, assets.weather.use)
    if np.isnan(grid).all():
        WEATHER_FAILURES["no_coverage"] += 1
        log.warning("planner.weather_unavailable", site_id=site_id, reason="no_coverage", error="no slot covered")
        return None
    return {"ghi": grid} if assets.weather.use == "ghi" else {"cloud_cover_pct": grid}


def _incentive_per_slot(starts: list[datetime], incentives: list[store.Incentive]) -> FloatArray:
    out = np.zeros(len(starts))
    for inc in incentives:
        for i, s in enumerate(starts):
            if inc.start <= s < inc.end:
                out[i] += inc.per_kwh
    return out


async def _initial_soc(
    db: Database, site_id: str, series: SiteSeries, assets: SiteAssets, now: datetime
) -> tuple[float, str]:
    """Measured SoC if fresh; else where the last plan expected it to be; else mid-range."""
    if assets.battery is None:
        return 0.5, "none"
    if series.soc is not None:
        return min(max(series.soc, 0.0), 1.0), "telemetry"
    flows = await store.latest_flows(db, site_id)
    if flows is not None and "soc" in flows.flows:
        k = int((floor_slot(now) - flows.start) // flows.step)
        socs = flows.flows["soc"]
        if 0 <= k < len(socs):
            return float(socs[k]), "plan"
    b = assets.battery
    return (b.soc_min + b.soc_max) / 2, "default"


async def _month_target(
    db: Database, site_id: str, assets: SiteAssets, tariff: Tariff, month_start: datetime
) -> PeakTarget:
    """The billing month's peak target (cloud/peak_limit.py `month_target`) from the site's measured load and
    PV of the TARGET_HISTORY_DAYS before the month; NO_TARGET without a capacity charge or a battery.
    Its reserve's time of day counts from `month_start` (the history ends there, a whole number of days)."""
    b = assets.battery
    if b is None or tariff.capacity is None or tariff.capacity.price_per_kw == 0.0:
        return NO_TARGET
    history = await load_series(
        db,
        site_id,
        month_start - timedelta(days=TARGET_HISTORY_DAYS),
        month_start,
        STEP,
        has_battery=True,
        has_ev=assets.ev is not None,
    )
    return month_target(
        np.asarray(history.load_kw - history.pv_kw, dtype=np.float64),
        STEP.total_seconds() / 3600.0,
        b.capacity_kwh * (b.soc_max - b.soc_min),
        b.max_charge_kw,
        b.max_discharge_kw,
        b.charge_efficiency,
        b.discharge_efficiency,
        SLOTS_PER_DAY,
        -len(history.load_kw),
        floor_kw=tariff.capacity.min_kw,
    )


def _battery(assets: SiteAssets, soc: float, import_price: FloatArray | None = None) -> Battery:
    """The optimizer's battery; with `import_price` (the plan's), the energy left at the horizon's end is
    valued (cloud.forecast_price.terminal_value) instead of counting for nothing."""
    b = assets.battery
    if b is None:  # the optimizer always has a battery: give it one that can do nothing
        return Battery(
            capacity_kwh=1e-3,
            soc_initial=0.5,
            soc_min=0.0,
            soc_max=1.0,
            max_charge_kw=0.0,
            max_discharge_kw=0.0,
            charge_efficiency=1.0,
            discharge_efficiency=1.0,
            cycle_cost_per_kwh=0.0,
        )
    return Battery(
        capacity_kwh=b.capacity_kwh,
        soc_initial=soc,
        soc_min=b.soc_min,
        soc_max=b.soc_max,
        max_charge_kw=b.max_charge_kw,
        max_discharge_kw=b.max_discharge_kw,
        charge_efficiency=b.charge_efficiency,
        discharge_efficiency=b.discharge_efficiency,
        cycle_cost_per_kwh=b.cycle_cost_per_kwh,
        terminal_value_per_kwh=(
            0.0
            if import_price is None
            else terminal_value(import_price, SLOTS_PER_DAY, b.discharge_efficiency, b.cycle_cost_per_kwh)
        ),
    )


def _next_local(after: datetime, clock: str, zone: ZoneInfo) -> datetime:
    """The next instant (>= after) when the local clock shows `clock`."""
    hh, mm = (int(x) for x in clock.split(":"))
    local = after.astimezone(zone)
    candidate = datetime.combine(local.date(), time(hh, mm), tzinfo=zone)
    if candidate < local:
        candidate = datetime.combine(local.date() + timedelta(days=1), time(hh, mm), tzinfo=zone)
    return candidate.astimezone(UTC)


def _ev_session(assets: SiteAssets, series: SiteSeries, starts: list[datetime], now: datetime) -> Ev | None:
    """The next (or current) charging session inside the horizon, from the schedule and the charger.

    A session that ends past the horizon gets the share of its energy target that is due by the horizon's
    end, so the plan neither rushes the whole charge into tonight nor forgets it.
    """
    ev = assets.ev
    if ev is None:
        return None
    zone = assets.zone
    horizon = len(starts)
    end = starts[0] + STEP * horizon
    if series.ev_connected:
        arrival = starts[0]
    else:
        arrival = _next_local(now, ev.arrival, zone)
        # inside the scheduled window and the charger cannot tell: assume the car is there
        departure_before = _next_local(now, ev.departure, zone)
        if series.ev_connected is None and departure_before < arrival:
            arrival = starts[0]
    departure = _next_local(arrival + timedelta(minutes=1), ev.departure, zone)
    a = max(0, math.ceil((arrival - starts[0]) / STEP))
    d = min(horizon, int((departure - starts[0]) // STEP))
    if a >= horizon or d <= a:
        return None
    soc0 = series.ev_soc if series.ev_connected and series.ev_soc is not None else ev.soc_at_arrival
    target = ev.soc_target
    if departure > end:
        total = max(1, int((departure - starts[0]) // STEP) - a)
        target = soc0 + max(0.0, target - soc0) * (d - a) / total
    return Ev(
        capacity_kwh=ev.capacity_kwh,
        soc_initial=soc0,
        soc_target=min(max(target, soc0), 1.0),
        arrival_slot=a,
        departure_slot=d,
        max_charge_kw=ev.max_charge_kw,
        efficiency=ev.efficiency,
    )


# --- turning a solution into a plan ---------------------------------------------------------


def to_plan(prepared: Prepared, solution: Solution, version: int, options: PlannerOptions) -> Plan:
    """One slot per optimizer slot: mode (slot_mode), battery setpoint, EV power, grid limits to hold.

    battery_w is set in every slot, also in SELF_CONSUMPTION ones, where it is what the plan expects the
    self-consumption rule to do (the edge may show it; it does not follow it).

    Grid limits are the connection's, except where the plan has a reason to be stricter: in a negative
    export-price slot the export limit is the planned export (PV is curtailed beyond it), and inside a
    demand-response window the import limit is the planned import, so the edge keeps the promise even if
    the load turns out higher than forecast. Where the tariff has a capacity charge the import limit is the
    level the LP treats as paid for (the billing month's peak so far or its target, whichever is higher) or
    the slot's planned import, whichever is higher (cloud/peak_limit.py), in every slot of the horizon, as
    the LP charges the whole horizon's peak against this month's.
    """
    p = prepared.problem
    slots: list[PlanSlot] = []
    values = plan_values(solution, p, p.horizon)
    for t, start in enumerate(prepared.starts):
        imp_w = solution.grid_import_kw[t] * 1000.0
        exp_w = solution.grid_export_kw[t] * 1000.0
        import_limit = p.grid.max_import_kw * 1000.0
        export_limit = p.grid.max_export_kw * 1000.0
        if (dc := p.demand_charge) is not None:  # a capacity charge: no new peak the plan did not choose
            import_limit = peak_import_limit_w(dc.peak_already_kw, solution.grid_import_kw[t], import_limit)
        if prepared.incentive[t] > 0:
            import_limit = min(import_limit, round_up_w(imp_w))
        if prepared.base_export_price[t] < 0:
            export_limit = min(export_limit, round_up_w(exp_w))
        ev_w = round(solution.ev_charge_kw[t] * 1000.0, 1) if p.ev is not None else None
        if prepared.assets.battery is not None:
            intent = slot_intent(
                solution.grid_import_kw[t],
                solution.grid_export_kw[t],
                solution.battery_charge_kw[t],
                solution.battery_discharge_kw[t],
                prepared.execution,
                values[t],
                ev_w=ev_w,
                grid_import_limit_w=import_limit,
                grid_export_limit_w=export_limit,
                target_soc=round(solution.soc[t + 1], 4),
            )
        else:
            intent = Intent(
                mode=IntentMode.SETPOINT,
                ev_w=ev_w,
                grid_import_limit_w=import_limit,
                grid_export_limit_w=export_limit,
            )
        slots.append(PlanSlot(start=start, end=start + STEP, intent=intent))
    horizon_end = prepared.starts[-1] + STEP
    return Plan(
        site_id=prepared.site_id,
        version=version,
        issued_at=prepared.now,
        valid_until=min(horizon_end, prepared.now + options.plan_valid_for),
        slots=tuple(slots),
    )


def true_cost(prepared: Prepared, solution: Solution) -> float:
    """The plan's cost at the site's real prices (without demand-response incentives)."""
    p = prepared.problem
    dt = p.dt_hours
    imp = np.asarray(solution.grid_import_kw)
    exp = np.asarray(solution.grid_export_kw)
    energy = dt * float(np.dot(prepared.base_import_price, imp) - np.dot(prepared.base_export_price, exp))
    cycling = (
        p.battery.cycle_cost_per_kwh
        * dt
        * float(np.sum(solution.battery_charge_kw) + np.sum(solution.battery_discharge_kw))
    )
    demand = 0.0
    if p.demand_charge is not None and len(imp):
        demand = p.demand_charge.price_per_kw * max(0.0, float(imp.max()) - p.demand_charge.peak_already_kw)
    return energy + cycling + demand


async def solve_prepared(prepared: Prepared, options: PlannerOptions) -> tuple[Solution, bool]:
    """(the plan, whether it is two-stage): the two-stage plan over the PV scenarios where the site has a
    spread (`Prepared.pv_spread`) and cloud.optimizer_scenarios accepts the problem (no EV session, no
    capacity charge, no negative import price, no export dearer than import); the deterministic plan otherwise."""
    steps = plan_grid(prepared, options)
    problem = coarse_problem(prepared.problem, steps)
    if not is_neutral(prepared.pv_spread):
        spread = ratios_on_grid(prepared.pv_spread, prepared.problem.pv_kw, steps)
        shared = coarse_slots(prepared.scenario_shared_slots, steps)
        two = await asyncio.to_thread(solve_two_stage, problem, spread, NEUTRAL, shared)
        if two is not None:
            return fine_solution(two, steps), True
    solution = await asyncio.to_thread(solve, problem, time_limit_s=options.solve_time_limit_s)
    if solution.status != "optimal" and not solution.grid_import_kw:
        raise PlanError(f"optimizer {solution.status}: {solution.message}")
    return fine_solution(solution, steps), False


def plan_grid(prepared: Prepared, options: PlannerOptions) -> list[int]:
    """The plan's slots in steps (cloud.plan_grid.far_grid): the fine hours reach past the last slot of a
    demand-response window (its import limit is each slot's planned import, a promise made per step); a
    plan with an EV session stays on the step (its arrival and departure are steps)."""
    p = prepared.problem
    if p.ev is not None:
        return []
    fine_hours = options.fine_hours
    paid = np.flatnonzero(prepared.incentive > 0.0)
    if len(paid):
        fine_hours = max(fine_hours, (int(paid[-1]) + 1) * p.dt_hours)
    return far_grid(prepared.start.timestamp(), p.step_minutes, p.horizon, fine_hours)


async def publish(
    db: Database,
    signing_key: SigningKey,
    prepared: Prepared,
    solution: Solution,
    options: PlannerOptions,
) -> int:
    """Sign, store and version the plan (one retry if another worker took the version); returns it."""
    for attempt in (1, 2):
        version = await next_plan_version(db, prepared.site_id)
        plan = to_plan(prepared, solution, version, options)
        try:
            await publish_plan(db, signing_key, plan, now=prepared.now)
        except PlanVersionConflictError:
            if attempt == 2:
                raise
            continue
        except WireError as exc:
            raise PlanError(f"plan rejected: {exc}") from None
        await store.save_flows(db, prepared.site_id, version, prepared.start, STEP, plan_flows(prepared, solution))
        return version
    raise AssertionError("unreachable")


def plan_flows(prepared: Prepared, solution: Solution) -> dict[str, list[float]]:
    """The optimizer's flows stored beside a plan (store.save_flows): what the fleet views read."""
    known = prepared.problem.horizon if prepared.price_known_slots is None else prepared.price_known_slots
    return {
        "import_kw": solution.grid_import_kw,
        "export_kw": solution.grid_export_kw,
        "battery_kw": [c - d for c, d in zip(solution.battery_charge_kw, solution.battery_discharge_kw, strict=True)],
        "ev_kw": solution.ev_charge_kw,
        "soc": solution.soc,
        "load_kw": prepared.problem.load_kw,
        "pv_kw": prepared.problem.pv_kw,
        "import_price": prepared.base_import_price,
        "export_price": prepared.base_export_price,
        # 1 where the price is a forecast (past the published day-ahead prices), 0 where it is published
        "price_forecast": [float(i >= known) for i in range(prepared.problem.horizon)],
    }


async def record_forecasts(db: Database, prepared: Prepared, options: PlannerOptions) -> None:
    """Store this run's forecasts and score the older ones whose first day is now in the past."""
    sid, series = prepared.site_id, prepared.series
    for kind, values in (("pv", prepared.pv_forecast), ("load", prepared.load_forecast)):
        await store.save_forecast(db, sid, kind, prepared.now, prepared.start, STEP, [float(v) for v in values])
    window = STEP * options.forecast_score_slots
    for f in await store.unscored_forecasts(db, sid, prepared.start - window + STEP):
        if f.kind == PV_INDEX:  # a region's forecast, not the site's: nothing of the site to score it against
            await store.set_forecast_mae(db, sid, f.kind, f.issued_at, None, 0)
            continue
        actual_all = series.pv_kw if f.kind in ("pv", EXTERNAL_PV) else series.load_kw
        offset = int((f.start - series.start) // STEP)
        k = min(len(f.values), options.forecast_score_slots)
        if offset < 0 or offset + k > series.n or f.step != STEP:
            await store.set_forecast_mae(db, sid, f.kind, f.issued_at, None, 0)
            continue
        scored = mae(np.asarray(f.values[:k], dtype=np.float64), actual_all[offset : offset + k])
        err, n = scored if scored is not None else (None, 0)
        await store.set_forecast_mae(db, sid, f.kind, f.issued_at, err, n)


async def plan_site(
    db: Database,
    site_id: str,
    now: datetime,
    signing_key: SigningKey,
    *,
    options: PlannerOptions | None = None,
) -> PlanResult:
    """Plan one site now: build the problem, solve it, publish the signed plan, record the forecasts."""
    options = options or PlannerOptions()
    prepared = await prepare(db, site_id, now, options)
    solution, two_stage = await solve_prepared(prepared, options)
    version = await publish(db, signing_key, prepared, solution, options)
    await record_forecasts(db, prepared, options)
    log.info(
        "planner.site_planned",
        site_id=site_id,
        version=version,
        slots=prepared.problem.horizon,
        cost=round(true_cost(prepared, solution), 4),
        solve_ms=round(solution.solve_ms, 1),
        soc_source=prepared.soc_source,
        two_stage=two_stage,
        # the first slot's (dark, bright): the rest of today's with the conditional spread (`first_slot_ratios`)
        pv_spread=[round(x, 3) for x in first_slot_ratios(prepared.pv_spread)],
        load_reserve=len(prepared.load_risk.ratios) > 0,
        shared_slots=prepared.scenario_shared_slots if two_stage else 0,
    )
    return PlanResult(
        site_id=site_id,
        version=version,
        slots=prepared.problem.horizon,
        cost=true_cost(prepared, solution),
        solve_ms=solution.solve_ms,
        soc_source=prepared.soc_source,
        planned_through_seq=prepared.series.last_seq,
        two_stage=two_stage,
    )


# --- the loop -------------------------------------------------------------------------------


async def plan_next(
    db: Database, signing_key: SigningKey, owner: str, now: datetime, options: PlannerOptions
) -> str | None:
    """Claim one due site and plan it; returns its id, or None if nothing was due."""
    site_id = await store.claim_site(db, owner, now, options.lease)
    if site_id is None:
        return None
    stored = await db.stored_through(site_id)
    try:
        result = await plan_site(db, site_id, now, signing_key, options=options)
    except (PlanError, PlanVersionConflictError) as exc:
        log.warning("planner.plan_failed", site_id=site_id, error=str(exc))
        error = str(exc)
    except SQLAlchemyError:
        raise  # the lease runs out; the loop logs and backs off
    except Exception as exc:  # a bug for one site's data must not block its queue row until the lease ends
        log.exception("planner.plan_crashed", site_id=site_id, error=type(exc).__name__)
        error = f"internal error: {type(exc).__name__}: {exc}"
    else:
        error = ""
    if error:
        await store.finish_site(
            db, site_id, owner, now, next_due=now + options.retry_after_error, planned_through_seq=None, error=error
        )
        return site_id
    await store.finish_site(
        db,
        site_id,
        owner,
        now,
        next_due=now + options.replan_every,
        planned_through_seq=max(result.planned_through_seq, stored or 0),
        error=None,
    )
    return site_id


async def refresh_prices(db: Database, client: EntsoeClient, now: datetime) -> None:
    """Fetch today's and tomorrow's day-ahead prices for every spot area in use."""
    areas: set[str] = set()
    for site_id in await store.planned_sites(db):
        site = await db.get_site(site_id)
        if site is not None and isinstance(site.tariff, dict) and site.tariff.get("spot_area"):
            areas.add(str(site.tariff["spot_area"]))
    day = datetime.combine(now.astimezone(UTC).date(), time(0), tzinfo=UTC)
    for area in sorted(areas):
        try:
            series = await client.day_ahead(area, day - timedelta(hours=2), day + timedelta(days=2))
        except NoPriceData as exc:
            log.info("planner.prices_not_published", area=area, detail=str(exc))
            continue
        except PriceSourceError as exc:
            log.warning("planner.prices_fetch_failed", area=area, error=str(exc))
            continue
        stored = await store.put_spot_prices(db, area, series, now, source=ENTSOE_SOURCE)
        log.info("planner.prices_stored", area=area, rows=stored, until=series.known_until().isoformat())


def worker_id() -> str:
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def run_planner(
    db: Database,
    signing_key: SigningKey,
    *,
    clock: Callable[[], datetime],
    options: PlannerOptions | None = None,
    idle_s: float = 5.0,
    price_client: EntsoeClient | None = None,
    price_every: timedelta = timedelta(minutes=30),
    urgent: Callable[[str, datetime], Awaitable[bool]] | None = None,
    wake: asyncio.Event | None = None,
) -> None:
    """Plan due sites forever. A database outage or a site that fails to plan never ends the loop.

    `urgent(owner, now)` is work that goes before routine planning (demand response, cloud/fleet_work.py):
    it returns True when it did something. `wake` cuts the idle sleep short (a new event in this worker).
    The only process state is when this worker last asked ENTSO-E: a politeness throttle, not data; with
    several workers each asks at most every `price_every`, and the stored rows are idempotent.
    """
    options = options or PlannerOptions()
    owner = worker_id()
    last_price_fetch: datetime | None = None
    log.info("planner.started", owner=owner)
    while True:
        try:
            now = clock()
            if price_client is not None and (last_price_fetch is None or now - last_price_fetch >= price_every):
                last_price_fetch = now
                await refresh_prices(db, price_client, now)
            if urgent is not None and await urgent(owner, now):
                continue
            await store.ensure_jobs(db, now)
            await store.mark_due_on_telemetry(db, now, options.telemetry_min_interval)
            planned = await plan_next(db, signing_key, owner, now, options)
        except SQLAlchemyError as exc:
            log.error("planner.database_error", error=type(exc).__name__)
            planned = None
        except Exception as exc:  # one site's bug must not stop planning for the fleet
            log.exception("planner.error", error=type(exc).__name__)
            planned = None
        if planned is None:
            if wake is None:
                await asyncio.sleep(idle_s)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), idle_s)
            wake.clear()


def price_client_from_env() -> EntsoeClient | None:
    token = os.environ.get(ENTSOE_TOKEN_ENV)
    return EntsoeClient(token) if token else None


__all__ = [
    "DEFAULT_EXECUTION",
    "Execution",
    "PlanError",
    "PlanResult",
    "PlannerOptions",
    "Prepared",
    "absorb_for",
    "floor_slot",
    "plan_flows",
    "plan_next",
    "plan_site",
    "prepare",
    "price_client_from_env",
    "publish",
    "run_planner",
    "slot_intent",
    "slot_mode",
    "solve_prepared",
    "to_plan",
    "true_cost",
]
