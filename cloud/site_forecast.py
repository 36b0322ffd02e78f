"""Per-site forecasters trained in the planner worker, their state stored per site (cloud/forecast_models.py).

Each plan of a site loads the site's stored models; a model older than its schedule (PV geometry: a week;
load: two weeks) is refitted from the site's telemetry and stored again, so training is spread over
whichever workers plan the site. In between, the load GBM is continued daily on the rows measured since
its last training (a few trees; `GbmLoadForecaster.due` decides, the same code as the backtest's), and the
PV model's typical factor is relearned every plan. A site with too little telemetry (a new site) gets
the cold-start default: the registered arrays for PV, the seasonal profile for load. A stored model that
cannot be read (a newer format, a corrupt row) is logged, counted and replaced by a refit, never fatal.

Fitting and predicting run in a worker thread (`asyncio.to_thread`), never on the serve worker's event loop:
a GBM fit on 64 half-hourly days is ~0.45 s of CPU, a daily continuation a tenth of that (the PV fit
and its pvlib grid add more), and
the loop meanwhile serves ingest, the live channel and /healthz (LightGBM trains in C, called through ctypes
without the GIL).

`ModelChoice` selects the forecasters; the defaults are the ones that won in money on every backtest
dataset (docs/cloud-planning.md has the table).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import numpy as np
import structlog

from cloud.assets import SiteAssets
from cloud.db import Database
from cloud.forecast import FloatArray, GbmLoadForecaster, forecast_load
from cloud.forecast_load import Training, day_types, forecast_load_house, forecast_load_nowcast, zone_country
from cloud.forecast_models import get_model, put_model
from cloud.forecast_pv import FitInput, PvSiteModel, SkyGrid, fit_pv_site, relearn_typical
from cloud.site_series import SiteSeries, load_series

log = structlog.get_logger("zapcloud.forecast")

UNREADABLE_MODELS: dict[str, int] = {"pv": 0, "load": 0}  # stored models that failed to load, per kind


class PvChoice(StrEnum):
    FACTOR = "factor"  # clear sky on the registered arrays x the 14-day median factor
    FIT = "fit"  # the site model fitted to the PV telemetry


class LoadChoice(StrEnum):
    PROFILE = "profile"
    GBM = "gbm"


@dataclass(frozen=True, slots=True)
class ModelChoice:
    pv: PvChoice = PvChoice.FACTOR
    load: LoadChoice = LoadChoice.PROFILE
    pv_refit: timedelta = timedelta(days=7)
    pv_fit_days: int = 28
    load_refit: timedelta = timedelta(days=14)  # the load GBM's full refit
    load_update: timedelta = timedelta(days=1)  # its continuation on the new rows (zero: never)
    load_train_days: int = 56
    # the profile scaled by the site's day-level persistence (cloud.forecast_load.forecast_load_house; needs
    # 56 days of history, PlannerOptions.load_history_days); off: the AR(1) nowcast on the profile alone
    load_day_level: bool = True
    # with it, the profile pooled by day kind (working day / weekend or public holiday of the time zone's country)
    load_day_kinds: bool = True


def _stale(fitted_at: datetime, now: datetime, every: timedelta) -> bool:
    return now - fitted_at >= every or fitted_at > now  # a fit "from the future" (clock jump) is redone


async def site_pv_model(
    db: Database, site_id: str, assets: SiteAssets, series: SiteSeries, now: datetime, choice: ModelChoice
) -> PvSiteModel:
    """The site's PV model: stored if fresh, else refitted on the telemetry in `series` (and stored); the
    typical factor is relearned every plan from the last 14 days (cheap, and the weather moves on)."""
    arrays = assets.pv_arrays()
    stored = await get_model(db, site_id, "pv")
    model: PvSiteModel | None = None
    if stored is not None:
        try:
            model = PvSiteModel.from_json(stored.state)
        except ValueError as exc:
            UNREADABLE_MODELS["pv"] += 1
            log.warning("forecast.model_unreadable", site_id=site_id, kind="pv", error=str(exc))
    spd = int(timedelta(days=1) // series.step)
    days = min(series.n // spd, choice.pv_fit_days)
    sky = await asyncio.to_thread(SkyGrid.compute, assets.pv_location(), series.start, series.step, series.n)
    if model is None or stored is None or _stale(stored.fitted_at, now, choice.pv_refit):
        a = series.n - days * spd
        fitted = await asyncio.to_thread(fit_pv_site, sky, FitInput(series.pv_kw[a:], a, arrays))
        if fitted.days > 0:
            await put_model(db, site_id, "pv", now, fitted.to_json())
            log.info("forecast.model_fitted", site_id=site_id, kind="pv", days=fitted.days, kwp=fitted.kwp)
            model = fitted
    if model is None:
        return PvSiteModel.default(arrays)
    a = max(0, series.n - 14 * spd)
    return await asyncio.to_thread(relearn_typical, model, sky, series.pv_kw[a:], a)


async def site_load_forecast(
    db: Database,
    site_id: str,
    assets: SiteAssets,
    series: SiteSeries,
    horizon: int,
    now: datetime,
    choice: ModelChoice,
    *,
    history_days: int = 56,
) -> FloatArray:
    """Load kW for the horizon after `series` (which ends at the plan's start)."""
    spd = int(timedelta(days=1) // series.step)
    recent = series.load_kw[-history_days * spd :]
    if choice.load is LoadChoice.PROFILE:
        if choice.load_day_level:
            kinds = None
            if choice.load_day_kinds:
                first = series.start + series.step * (series.n - len(recent))
                tz = assets.timezone
                kinds = day_types(first, series.step, len(recent) + horizon, tz, country=zone_country(tz))
            return forecast_load_house(recent, horizon, spd, kinds=kinds)
        return forecast_load_nowcast(recent, horizon, spd)
    end = series.start + series.step * series.n
    gbm = _gbm(series.start, series.step, assets.timezone, choice)
    stored = await get_model(db, site_id, "load")
    what: Training | None = Training.REFIT
    if stored is not None:
        try:
            await asyncio.to_thread(gbm.load_state, stored.state)
            what = gbm.due(series.n)
        except ValueError as exc:
            UNREADABLE_MODELS["load"] += 1
            log.warning("forecast.model_unreadable", site_id=site_id, kind="load", error=str(exc))
    if what is not None:
        # a refit needs more history than a plan: the training window plus a week of lags; a continuation
        # only the days since the last training and their lags (half the telemetry query of a refit, none
        # when the plan's own series reaches that far back)
        days = choice.load_train_days + 8
        if what is Training.UPDATE:
            days = min(days, math.ceil(gbm.update_history(series.n) / spd))
        if what is Training.UPDATE and series.n >= days * spd:
            train = series
        else:
            train = await load_series(
                db,
                site_id,
                end - timedelta(days=days),
                end,
                series.step,
                has_battery=assets.battery is not None,
                has_ev=assets.ev is not None,
            )
        trainer = _gbm(train.start, train.step, assets.timezone, choice)
        if what is Training.UPDATE and stored is not None:
            await asyncio.to_thread(trainer.load_state, stored.state)  # read above: the same bytes
        elif np.isfinite(train.load_kw).sum() < trainer.min_days * spd:
            return forecast_load(recent, horizon, spd)  # cold start: too little telemetry for a model
        state = await asyncio.to_thread(_train_state, trainer, train)
        if state is None:
            if gbm.model is None:
                return forecast_load(recent, horizon, spd)
        else:
            await put_model(db, site_id, "load", now, state)
            log.info("forecast.model_trained", site_id=site_id, kind="load", training=str(what), bytes=len(state))
            await asyncio.to_thread(gbm.load_state, state)
    return await asyncio.to_thread(gbm.predict, series.load_kw, series.n, horizon)


def _train_state(trainer: GbmLoadForecaster, train: SiteSeries) -> bytes | None:
    """Train as due on the training series and serialize (in a worker thread)."""
    trainer.train(train.load_kw, train.n)
    return trainer.to_state()


def _gbm(start: datetime, step: timedelta, tz: str, choice: ModelChoice) -> GbmLoadForecaster:
    day = timedelta(days=1)
    return GbmLoadForecaster(
        start,
        step,
        tz,
        train_days=choice.load_train_days,
        refit_days=max(1, choice.load_refit // day),
        update_days=choice.load_update // day,
    )


__all__ = [
    "UNREADABLE_MODELS",
    "LoadChoice",
    "ModelChoice",
    "PvChoice",
    "site_load_forecast",
    "site_pv_model",
]
