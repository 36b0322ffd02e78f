"""Load forecasters, on a regular slot grid with NaN for a missing slot (numpy, cheap enough per re-plan).

* `forecast_load_persistence`: the same slot on the latest measured day, the baseline to beat;
* `forecast_load`: same weekday and time of day over the past weeks (household load is weekly-periodic),
  blended with the recent level: the ratio of the last hours' measured load to what the profile said for
  those hours is applied fully now and fades out with a few hours' time constant (a party tonight says little
  about tomorrow). With `persistence` the recent level is an AR(1) nowcast instead: the last slot's error
  against the profile, fading by the house's own measured persistence (`error_persistence`;
  `forecast_load_nowcast`, the default). The default without a trained model and the cold start of the one
  below;
* `GbmLoadForecaster`: LightGBM on calendar, holidays, lags, recent level and (when known) temperature, with
  quantiles (P10/P50/P90) for risk-aware planning, and a state that can be stored per site (`to_state`).
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import numpy.typing as npt

from cloud.quantile import linear_quantiles

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

QUANTILES: Final = (0.1, 0.5, 0.9)
MAX_STATE_BYTES: Final = 512 * 1024  # a stored model larger than this (compressed) is refused, not truncated
STATE_VERSION: Final = 2  # 2 adds the continuation (updated_at, base_trees, update_gain); 1 is still read
READABLE_VERSIONS: Final = (1, 2)
MAX_UPDATES: Final = 366  # continuations a stored state may record (a daily one for a year without a refit)


def forecast_load(
    history_kw: FloatArray,
    horizon: int,
    slots_per_day: int,
    *,
    weeks: int = 4,
    recent_hours: float = 2.0,
    fade_hours: float = 4.0,
    default_kw: float = 0.5,
    persistence: float | None = None,
) -> FloatArray:
    """Load for the `horizon` slots right after `history_kw` (which ends at now; NaN = missing).

    With `persistence` (0 .. 1, `error_persistence`) the recent level is the last slot's error against the
    profile, added and fading by that factor per slot (an AR(1) nowcast: an EV session of 3 kW over the
    profile is 3 kW, not a ratio capped at 2), instead of the last `recent_hours`' ratio fading over
    `fade_hours`."""
    n = len(history_kw)
    dt_h = 24.0 / slots_per_day
    profile = _seasonal_profile(history_kw, n, horizon, slots_per_day, weeks)
    if persistence is not None and n and not math.isnan(history_kw[-1]):
        last = float(_seasonal_profile(history_kw, n - 1, 1, slots_per_day, weeks)[0])
        if not math.isnan(last):
            filled = np.where(np.isnan(profile), last, profile)
            fade = min(max(persistence, 0.0), 1.0) ** np.arange(1, horizon + 1)
            return np.asarray(np.clip(filled + (history_kw[-1] - last) * fade, 0.0, None), dtype=np.float64)
    r = max(1, round(recent_hours / dt_h))
    recent = history_kw[max(0, n - r) :]
    if n == 0 or np.isnan(recent).all():
        base = float(np.nanmean(history_kw)) if n and not np.isnan(history_kw).all() else default_kw
        return np.where(np.isnan(profile), base, profile)
    recent_level = float(np.nanmean(recent))
    past_profile = _seasonal_profile(history_kw, n - len(recent), len(recent), slots_per_day, weeks)
    expected = float(np.nanmean(past_profile)) if not np.isnan(past_profile).all() else math.nan
    profile = np.where(np.isnan(profile), recent_level, profile)
    if not math.isfinite(expected) or expected <= 1e-6:
        ratio = 1.0
    else:
        ratio = float(np.clip(recent_level / expected, 0.5, 2.0))
    fade = np.exp(-np.arange(horizon) * dt_h / fade_hours)
    return np.asarray(np.clip(profile * (1.0 + (ratio - 1.0) * fade), 0.0, None), dtype=np.float64)


def _seasonal_profile(history: FloatArray, at: int, horizon: int, slots_per_day: int, weeks: int) -> FloatArray:
    """For slots at..at+horizon-1: the mean of the same weekday/time over past weeks, else of past days."""
    idx = at + np.arange(horizon)
    week = 7 * slots_per_day
    out = _lagged_mean(history, at, idx, week, weeks)
    missing = np.isnan(out)
    if missing.any():
        out[missing] = _lagged_mean(history, at, idx[missing], slots_per_day, 7)
    return out


def _lagged_mean(history: FloatArray, at: int, idx: IntArray, lag: int, count: int) -> FloatArray:
    # Lags that reach only into the past: for a slot `k` periods back that still lands after `at`, use an
    # older period instead (a 48 h horizon looks 2 days back for its second day, not 1).
    ks = np.arange(1, count + 3)
    cand = idx[:, None] - ks[None, :] * lag
    valid = (cand >= 0) & (cand < at)
    # keep only the first `count` valid lags of each slot
    valid &= np.cumsum(valid, axis=1) <= count
    if len(history) == 0:
        return np.full(len(idx), np.nan)
    vals = history[np.clip(cand, 0, len(history) - 1)]
    ok = valid & ~np.isnan(vals)
    total = np.where(ok, vals, 0.0).sum(axis=1)
    count = ok.sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def error_persistence(history_kw: FloatArray, slots_per_day: int, *, weeks: int = 4, days: int = 28) -> float:
    """How much of the seasonal profile's error in one slot is still there in the next (0 .. 0.99).

    The lag-one autocorrelation of the last `days` days' one-slot-ahead profile errors: a heat-pump run or a
    car charging that has started goes on for a while, a kettle does not. Measured on the house itself, so the
    nowcast's time constant (`forecast_load(persistence=...)`) is the house's own, not a fitted constant:
    about 0.54 per hour on the Konstanz house (heat pump, EV), 0.57 per half hour on the Ausgrid one
    (docs/cloud-planning.md, fifth pass). 0 until two weeks of profile errors exist.
    """
    n = len(history_kw)
    idx = np.arange(max(0, n - days * slots_per_day), n)
    err = history_kw[idx] - _lagged_mean(history_kw, n, idx, 7 * slots_per_day, weeks)
    a, b = err[:-1], err[1:]
    ok = ~np.isnan(a) & ~np.isnan(b)
    if ok.sum() < 14 * slots_per_day or np.std(a[ok]) < 1e-9 or np.std(b[ok]) < 1e-9:
        return 0.0
    return float(np.clip(np.corrcoef(a[ok], b[ok])[0, 1], 0.0, 0.99))


def forecast_load_nowcast(history_kw: FloatArray, horizon: int, slots_per_day: int) -> FloatArray:
    """`forecast_load` with the AR(1) nowcast at the house's own `error_persistence` (the default for the
    profile forecaster: lower planner cost on all six backtest datasets, docs/cloud-planning.md fifth pass)."""
    rho = error_persistence(history_kw, slots_per_day)
    return forecast_load(history_kw, horizon, slots_per_day, persistence=rho)


def zone_country(tz: str) -> str | None:
    """The ISO country of an IANA time zone (tzdata's zone.tab: Europe/Berlin -> DE, Australia/Sydney -> AU),
    None for a zone without one (UTC, Etc/...). Lets a site that registered only its time zone have its
    country's public holidays (the national ones: a zone does not say the state)."""
    return _zone_countries().get(tz)


def _zone_countries() -> dict[str, str]:
    global _ZONE_COUNTRIES
    if _ZONE_COUNTRIES is None:
        from importlib import resources

        table: dict[str, str] = {}
        try:
            text = resources.files("tzdata").joinpath("zoneinfo", "zone.tab").read_text(encoding="utf-8")
        except (ModuleNotFoundError, FileNotFoundError):
            text = ""
        for line in text.splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and not line.startswith("#") and len(parts[0]) == 2:
                table[parts[2]] = parts[0]
        _ZONE_COUNTRIES = table
    return _ZONE_COUNTRIES


_ZONE_COUNTRIES: dict[str, str] | None = None


def day_types(
    start: datetime,
    step: timedelta,
    n: int,
    tz: str,
    *,
    country: str | None = None,
    subdiv: str | None = None,
    by_weekday: bool = False,
) -> IntArray:
    """Per slot start + k * step (k < n): 1 on a weekend day or a public holiday of `country` (local date,
    the `holidays` package), else 0; with `by_weekday` the local weekday (0 Monday .. 6 Sunday) with a holiday
    as a Sunday. An unknown country or subdivision gives no holidays."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    zone = ZoneInfo(tz)
    local = [(start + step * k).astimezone(zone).date() for k in range(n)]
    hol: Iterable[Any] = ()
    if country:
        import holidays

        try:
            hol = holidays.country_holidays(country, subdiv=subdiv, years=sorted({d.year for d in local}))
        except NotImplementedError:
            hol = ()
    days = set(hol)
    if by_weekday:
        return np.asarray([6 if d in days else d.weekday() for d in local], dtype=np.int64)
    return np.asarray([1 if d.weekday() >= 5 or d in days else 0 for d in local], dtype=np.int64)


def day_type_profile(
    history_kw: FloatArray, kinds: IntArray, at: int, horizon: int, slots_per_day: int, *, weeks: int = 4
) -> FloatArray:
    """For slots at..at+horizon-1: the mean of the same time of day over every day of the same kind (`kinds`:
    0 a working day, 1 a weekend day or holiday; indexed like `history_kw`, reaching past `at` by the horizon)
    in the `weeks` weeks before `at`; the weekday profile (`_seasonal_profile`) where no such day was measured.

    Pooled by kind instead of by weekday: the weekly profile averages 4 values per slot (one per week), so a
    single evening's car charge or a day away is a quarter of next week's forecast; a working day pools ~20,
    a weekend day ~8 (and a holiday is planned like a Sunday, not like the weekday it falls on). Day-ahead
    MAE 7-8 % lower than the weekly profile on all four houses of the bench (docs/cloud-planning.md, loadfc)."""
    spd = slots_per_day
    idx = at + np.arange(horizon)
    ks = np.arange(1, weeks * 7 + horizon // spd + 2)
    cand = idx[:, None] - ks[None, :] * spd
    valid = (cand >= 0) & (cand < at) & (cand >= at - weeks * 7 * spd)
    cc = np.clip(cand, 0, max(len(history_kw) - 1, 0))
    if len(history_kw) == 0:
        return np.full(horizon, np.nan)
    valid &= kinds[cc] == kinds[idx][:, None]
    vals = history_kw[cc]
    ok = valid & ~np.isnan(vals)
    total = np.where(ok, vals, 0.0).sum(axis=1)
    count = ok.sum(axis=1)
    out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    missing = np.isnan(out)
    if missing.any():
        out[missing] = _seasonal_profile(history_kw, at, horizon, spd, weeks)[missing]
    return np.asarray(out, dtype=np.float64)


def forecast_load_daytype(
    history_kw: FloatArray,
    kinds: IntArray,
    horizon: int,
    slots_per_day: int,
    *,
    persistence: float = 0.0,
    weeks: int = 4,
    default_kw: float = 0.5,
) -> FloatArray:
    """`forecast_load`'s AR(1) nowcast on the day-kind profile (`day_type_profile`) instead of the weekly one.

    `kinds` covers `history_kw` and the horizon after it (len(history_kw) + horizon values); `persistence`
    is the house's `error_persistence`. The last slot's error against the same profile (computed as the
    plan before it would have) is added, fading by `persistence` per slot."""
    n = len(history_kw)
    if len(kinds) < n + horizon:
        raise ValueError(f"day kinds cover {len(kinds)} slots, need {n + horizon}")
    profile = day_type_profile(history_kw, kinds, n, horizon, slots_per_day, weeks=weeks)
    fill = default_kw
    if n and not np.isnan(history_kw).all():
        fill = (
            float(np.nanmean(history_kw[-slots_per_day:]))
            if not np.isnan(history_kw[-slots_per_day:]).all()
            else float(np.nanmean(history_kw))
        )
    profile = np.where(np.isnan(profile), fill, profile)
    if n and not math.isnan(history_kw[-1]):
        last = float(day_type_profile(history_kw, kinds, n - 1, 1, slots_per_day, weeks=weeks)[0])
        if not math.isnan(last):
            fade = min(max(persistence, 0.0), 1.0) ** np.arange(1, horizon + 1)
            profile = profile + (history_kw[-1] - last) * fade
    return np.asarray(np.clip(profile, 0.0, None), dtype=np.float64)


def day_level_persistence(ratios: FloatArray) -> float:
    """How much of one day's load level (`day_load_ratios`: a 24 h block's energy over the profile's) is
    still there the next day (0 .. 0.99): the lag-one autocorrelation of consecutive blocks' ratios, the
    house's own (a cold spell, guests, a week away). 0 with fewer than 14 blocks."""
    if len(ratios) < 14:
        return 0.0
    a, b = ratios[1:], ratios[:-1]  # ratios[0] is the latest block: pairs (older, newer)
    if np.std(a) < 1e-9 or np.std(b) < 1e-9:
        return 0.0
    return float(np.clip(np.corrcoef(a, b)[0, 1], 0.0, 0.99))


def day_level_factors(
    history_kw: FloatArray,
    horizon: int,
    slots_per_day: int,
    rho_day: float,
    *,
    weeks: int = 4,
    kinds: IntArray | None = None,
) -> FloatArray:
    """Per slot of the horizon: the profile's scale for the house's current load level, 1 + ρ^(j+1) (r - 1)
    for the j-th 24 h block ahead, where r is the last 24 h's energy over what the profile said for them
    (`day_load_ratios`'s latest block) and ρ the house's day-to-day persistence of that ratio
    (`day_level_persistence`): the AR(1) of the daily level, as cloud/forecast_pv_day.py does for PV. A
    perfect daily level was worth 6.0 of the 15.6 EUR/yr a perfect load forecast saves on the Konstanz house
    (the shape within the day nothing; docs/cloud-planning.md, loadfc). 1 without a measured last day."""
    spd = slots_per_day
    ones = np.ones(horizon)
    n = len(history_kw)
    if rho_day <= 0.0 or n < spd:
        return ones
    block = np.arange(n - spd, n)
    if kinds is None:
        profile = _lagged_mean(history_kw, n - spd, block, 7 * spd, weeks)
    else:
        profile = day_type_profile(history_kw, kinds, n - spd, spd, spd, weeks=weeks)
    actual = history_kw[block]
    expected = float(np.sum(profile))
    if np.isnan(profile).any() or np.isnan(actual).any() or expected <= 1e-6:
        return ones
    r = float(np.clip(np.sum(actual) / expected, 0.2, 5.0))
    j = np.arange(horizon) // spd
    return np.asarray(1.0 + min(rho_day, 0.99) ** (j + 1) * (r - 1.0), dtype=np.float64)


def forecast_load_level(
    history_kw: FloatArray,
    horizon: int,
    slots_per_day: int,
    *,
    persistence: float,
    rho_day: float,
    kinds: IntArray | None = None,
    weeks: int = 4,
) -> FloatArray:
    """`forecast_load`'s AR(1) nowcast (`persistence`) on the weekly profile scaled by the house's day-level
    persistence (`day_level_factors` with `rho_day`): the nowcast's error is the last slot's against the
    scaled profile, so the two do not count the same excess twice. With `kinds` (`day_types`, covering the
    history and the horizon) the profile is `day_type_profile`'s instead of the weekly one."""
    n = len(history_kw)
    if kinds is not None and len(kinds) < n + horizon:
        raise ValueError(f"day kinds cover {len(kinds)} slots, need {n + horizon}")

    def profile_at(at: int, count: int) -> FloatArray:
        if kinds is None:
            return _seasonal_profile(history_kw, at, count, slots_per_day, 4)
        return day_type_profile(history_kw, kinds, at, count, slots_per_day, weeks=weeks)

    profile = profile_at(n, horizon)
    fac = day_level_factors(
        history_kw, horizon, slots_per_day, rho_day, kinds=kinds, weeks=weeks if kinds is not None else 4
    )
    if n == 0 or np.isnan(history_kw).all():
        return np.where(np.isnan(profile), 0.5, profile)
    fill = float(np.nanmean(history_kw[-slots_per_day:])) if not np.isnan(history_kw[-slots_per_day:]).all() else 0.5
    out = np.where(np.isnan(profile), fill, profile) * fac
    if not math.isnan(history_kw[-1]):
        last = float(profile_at(n - 1, 1)[0])
        if not math.isnan(last):
            f0 = float(fac[0]) if horizon else 1.0
            out = out + (history_kw[-1] - last * f0) * min(max(persistence, 0.0), 1.0) ** np.arange(1, horizon + 1)
    return np.asarray(np.clip(out, 0.0, None), dtype=np.float64)


def forecast_load_house(
    history_kw: FloatArray, horizon: int, slots_per_day: int, *, kinds: IntArray | None = None
) -> FloatArray:
    """The default load forecast, for the backtest and the planner worker alike: the profile (by day kind with
    `kinds`, `day_types` over the history and the horizon; else by weekday) scaled by the house's day-level
    persistence, plus the AR(1) nowcast at its slot-to-slot persistence, both read off `history_kw` (56 days:
    the last 28 days' errors against profiles that reach four weeks back). Lower planner cost than the
    nowcast on the weekly profile on all six real backtest years (docs/cloud-planning.md, loadfc)."""
    rho = error_persistence(history_kw, slots_per_day)
    rho_day = day_level_persistence(day_load_ratios(history_kw, slots_per_day))
    return forecast_load_level(history_kw, horizon, slots_per_day, persistence=rho, rho_day=rho_day, kinds=kinds)


def day_load_ratios(history_kw: FloatArray, slots_per_day: int, *, weeks: int = 4, days: int = 28) -> FloatArray:
    """The last `days` whole days' measured load energy over what the seasonal profile said for them the day
    before (empty with fewer than a week of such days).

    A day's load error is largely one error for all its slots (a cold day runs the heat pump all evening, a
    car is charged or not): a whole-day scenario scales the forecast's shape by one ratio, where a per-slot
    quantile at every slot at once would be a day far beyond any P90 day. The days are the 24 h blocks that
    end now; a block with a missing slot is left out.
    """
    n, spd = len(history_kw), slots_per_day
    ratios = []
    for d in range(1, days + 1):
        lo = n - d * spd
        if lo < 0:
            break
        block = np.arange(lo, lo + spd)
        profile = _lagged_mean(history_kw, lo, block, 7 * spd, weeks)
        actual = history_kw[block]
        expected = float(np.sum(profile))
        if np.isnan(profile).any() or np.isnan(actual).any() or expected <= 1e-6:
            continue
        ratios.append(float(np.sum(actual)) / expected)
    return np.asarray(ratios if len(ratios) >= 7 else [], dtype=np.float64)


def load_ratio_spread(
    history_kw: FloatArray, slots_per_day: int, *, weeks: int = 4, days: int = 28
) -> tuple[float, float]:
    """(P10, P90) of `day_load_ratios` ((1, 1) with fewer than a week of days)."""
    ratios = day_load_ratios(history_kw, slots_per_day, weeks=weeks, days=days)
    if not len(ratios):
        return 1.0, 1.0
    p10, p90 = linear_quantiles(ratios, [0.1, 0.9])
    return float(p10), float(p90)


def newsvendor_load(
    load_kw: FloatArray,
    pv_kw: FloatArray,
    import_price: FloatArray,
    export_price: FloatArray,
    ratios: FloatArray,
    ramp: FloatArray,
) -> FloatArray:
    """The load to plan on in the slots the battery serves (forecast load above forecast PV): the point
    forecast scaled by the whole-day ratio's quantile 1 - export / import of that slot.

    The newsvendor's answer: a kWh kept for such a slot and not needed earns about the export price, one
    missing costs the import price, so the energy to hold is the demand's quantile (import - export) /
    import. Bounded to 0.5 .. 0.9 (the median where exporting pays as much as importing costs, or prices
    are negative; no further than the ratios' P90). Surplus slots keep the point forecast: planning more
    load there would tell the plan there is less PV to store. `ramp` (0 .. 1 per slot) lets the nowcast own
    the first hours. No ratios (a new site): the point forecast."""
    if not len(ratios):
        return load_kw
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(import_price > 0, 1.0 - export_price / import_price, 0.5)
    q = np.clip(np.nan_to_num(q, nan=0.5), 0.5, 0.9)
    scale = 1.0 + (linear_quantiles(ratios, q) - 1.0) * ramp
    return np.asarray(np.where(load_kw > pv_kw, np.maximum(load_kw * scale, 0.0), load_kw), dtype=np.float64)


def forecast_load_persistence(history_kw: FloatArray, horizon: int, slots_per_day: int) -> FloatArray:
    """The baseline every load forecaster must beat: the same slot on the most recent day already measured."""
    n = len(history_kw)
    if n < slots_per_day:
        return np.full(horizon, float(np.nanmean(history_kw)) if n and not np.isnan(history_kw).all() else 0.5)
    idx = n + np.arange(horizon)
    back = (np.arange(horizon) // slots_per_day + 1) * slots_per_day
    out = history_kw[idx - back]
    return np.where(np.isnan(out), float(np.nanmean(history_kw)), out)


@dataclass(frozen=True, slots=True)
class LoadQuantiles:
    """P10 / P50 / P90 of the load per slot (kW); p10 <= p50 <= p90 everywhere."""

    p10: FloatArray
    p50: FloatArray
    p90: FloatArray


class Training(StrEnum):
    """What a GBM needs before it forecasts (`GbmLoadForecaster.due`)."""

    REFIT = "refit"  # from scratch on the last `train_days`
    UPDATE = "update"  # continue the boosters with a few trees on the rows measured since the last training


class _State(msgspec.Struct, frozen=True):
    version: int
    step_s: float
    tz: str
    country: str | None
    subdiv: str | None
    objective: str
    fitted_at: str  # ISO 8601 instant of the full fit (the last slot start it saw)
    temperature: bool
    models: dict[str, str]  # "point" and quantile names ("q0.1") -> LightGBM model text
    updated_at: str | None = None  # the last continuation's instant (None: never continued, version 1)
    base_trees: int = 0  # trees of the full fit at the front of the point booster (0: all of them)
    update_gain: list[float] = []  # per continuation: the full fit's mean loss - the continued one's, new rows


class GbmLoadForecaster:
    """Household load from its own history with LightGBM (gradient-boosted trees), refitted per site.

    One model for every lead time ("direct" forecasting with the lead as a feature), trained on the site's
    last `train_days`: for forecast origins every `origin_every` slots and every lead up to `max_lead`, the
    features are what was known at the origin: local time of day, day of week, weekend or public holiday
    (the `holidays` package, when a country is given), the lead, the same slot on the most recent measured
    day and week, the mean of that slot over the last four weeks, the last two hours' mean and the last
    day's mean, and, when the site has a temperature series (measured for the past, forecast for the
    horizon), the temperature of the target slot. Trees need no scaling, take the weekly and daily shape from
    the features and learn how much the recent level matters at each lead. Until `min_days` of history exist
    (a new site), `forecast` falls back to `forecast_load` (the seasonal profile).

    Training (`due`, `train`; the one place that decides it, for the backtest and the planner worker alike):
    a full fit every `refit_days` (two weeks); in between, every `update_days` (daily; 0: never) the
    boosters are continued (LightGBM `init_model`, the same learning rate) with `update_rounds` trees on the
    rows whose target was measured since the last training, so the model follows the house without a
    refit's cost. A full fit comes early when the booster would pass `max_trees` (which bounds the stored
    state) or when the continued model has done worse than the full fit alone (its first `base_trees`) on
    the rows each continuation saw before training on them (out of sample for both; `update_gain`, a
    paired test: `continuation_hurts`).

    Quantile models (pinball loss at 0.1, 0.5 and 0.9) are trained only when `quantiles()` is first asked
    for, on the same rows, and sorted per slot so they never cross.

    Absolute slot indices count from `start` on a grid of `step`; a model depends on the grid only through
    the calendar, so a stored state (`to_state`) is valid on any grid of the same step and time zone.
    """

    def __init__(
        self,
        start: datetime,
        step: timedelta,
        tz: str,
        *,
        country: str | None = None,
        subdiv: str | None = None,
        train_days: int = 56,
        min_days: int = 14,
        refit_days: float = 14,
        update_days: int = 1,
        update_rounds: int = 8,
        max_trees: int = 240,
        max_lead_hours: float = 48.0,
        objective: str = "regression_l1",
        temperature_c: FloatArray | None = None,
        rounds: int = 80,
    ) -> None:
        self.start, self.step = start, step
        self.spd = int(timedelta(days=1) // step)
        self.tz = tz
        self.zone = ZoneInfo(tz)
        self.country, self.subdiv = country, subdiv
        self.train_days, self.min_days, self.refit_days = train_days, min_days, refit_days
        self.update_days, self.update_rounds, self.max_trees = update_days, update_rounds, max_trees
        self.max_lead = max(1, round(max_lead_hours * 3600 / step.total_seconds()))
        self.origin_every = max(1, self.spd // 6)  # every 4 hours
        self.objective = objective  # "regression_l1": the median (best MAE); "regression": the mean
        self.temperature = temperature_c
        self.rounds = rounds
        self.model: Any = None
        self.quantile_models: dict[float, Any] = {}
        self.fitted_at = -(10**9)  # slot index of the last full fit
        self.updated_at = -(10**9)  # slot index of the last training, full or continued
        self.base_trees = 0  # trees of the last full fit (the front of the point booster)
        self.update_gain: list[float] = []  # per continuation: full fit's - continued model's loss, new rows
        self._calendar: dict[int, tuple[float, float, float]] = {}
        self._train: tuple[FloatArray, FloatArray] | None = None

    # --- features ---------------------------------------------------------------------------

    def _cal(self, idx: IntArray) -> FloatArray:
        """Per absolute slot index: (local hour, day of week, weekend or holiday)."""
        out = np.empty((len(idx), 3))
        hol = None
        if self.country:
            import holidays

            hol = holidays.country_holidays(self.country, subdiv=self.subdiv)
        for i, k in enumerate(idx.tolist()):
            row = self._calendar.get(k)
            if row is None:
                local = (self.start + self.step * k).astimezone(self.zone)
                off = local.weekday() >= 5 or (hol is not None and local.date() in hol)
                row = (local.hour + local.minute / 60.0, float(local.weekday()), float(off))
                self._calendar[k] = row
            out[i] = row
        return out

    def _features(self, load: FloatArray, origin: int, leads: IntArray) -> FloatArray:
        """Features for targets origin + leads, from load[:origin] only (absolute indices)."""
        spd = self.spd
        t = origin + leads
        day_back = (leads // spd + 1) * spd
        week_back = (leads // (7 * spd) + 1) * 7 * spd
        last_day = _at(load, t - day_back)
        last_week = _at(load, t - week_back)
        weeks = [_at(load, t - week_back - w * 7 * spd) for w in range(4)]
        with np.errstate(all="ignore"), _quiet():
            four = np.nanmean(np.vstack(weeks), axis=0)
        recent = load[max(0, origin - max(1, spd // 12)) : origin]
        day = load[max(0, origin - spd) : origin]
        with _quiet():
            level = float(np.nanmean(recent)) if len(recent) else math.nan
            daily = float(np.nanmean(day)) if len(day) else math.nan
        cols = [self._cal(t), leads.astype(np.float64), last_day, last_week, four]
        cols += [np.full(len(t), level), np.full(len(t), daily)]
        if self.temperature is not None:
            temp = self.temperature
            cols.append(np.where(t < len(temp), temp[np.clip(t, 0, len(temp) - 1)], math.nan))
        return np.column_stack(cols)

    def _rows(self, load: FloatArray, now: int) -> tuple[FloatArray, FloatArray] | None:
        lo = max(0, now - self.train_days * self.spd)
        first = lo + 7 * self.spd  # a week of lags before the first origin
        origins = range(max(first, now - self.train_days * self.spd), now - 1, self.origin_every)
        return self._stack(load, ((o, np.arange(min(self.max_lead, now - o))) for o in origins))

    def _new_rows(self, load: FloatArray, now: int) -> tuple[FloatArray, FloatArray] | None:
        """The training rows whose target was measured in updated_at .. now-1 (from load[:now] only): every
        origin (on the absolute grid of `origin_every`) and lead of a target in that span, so each
        (origin, lead) pair is learned from once, whether by the fit or a continuation."""
        since = max(self.updated_at, now - self.train_days * self.spd)
        o0 = max(7 * self.spd, since - self.max_lead + 1)
        o0 += (-o0) % self.origin_every
        pairs = (
            (o, np.arange(max(0, since - o), min(self.max_lead, now - o))) for o in range(o0, now, self.origin_every)
        )
        rows = self._stack(load, pairs)
        return rows if rows is not None and len(rows[1]) else None

    def _stack(
        self, load: FloatArray, pairs: Iterable[tuple[int, npt.NDArray[np.int64]]]
    ) -> tuple[FloatArray, FloatArray] | None:
        """The feature rows and targets of each (origin, leads) pair, the targets not yet measured left out."""
        xs, ys = [], []
        for o, leads in pairs:
            if len(leads):
                xs.append(self._features(load, o, leads))
                ys.append(load[o + leads])
        if not xs:
            return None
        x, y = np.vstack(xs), np.concatenate(ys)
        ok = ~np.isnan(y)
        return x[ok], y[ok]

    def _train_one(
        self,
        x: FloatArray,
        y: FloatArray,
        objective: str,
        alpha: float | None = None,
        *,
        init: Any = None,
        rounds: int | None = None,
    ) -> Any:
        import lightgbm

        params: dict[str, Any] = {
            "objective": objective,
            "learning_rate": 0.05,
            "num_leaves": 31,
            "min_data_in_leaf": 40,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "verbose": -1,
            "num_threads": 1,
            "seed": 1,
        }
        if alpha is not None:
            params["alpha"] = alpha
        dataset = lightgbm.Dataset(x, y)
        return lightgbm.train(params, dataset, num_boost_round=rounds or self.rounds, init_model=init)

    def fit(self, load: FloatArray, now: int) -> None:
        """Train from scratch on load[:now] now (forecasts also train by themselves when `due`)."""
        rows = self._rows(load, now)
        self.quantile_models = {}
        self._train = rows
        self.update_gain = []
        if rows is None:
            return
        self.model = self._train_one(*rows, self.objective)
        self.fitted_at = self.updated_at = now
        self.base_trees = int(self.model.num_trees())

    def update(self, load: FloatArray, now: int) -> None:
        """Continue the fitted boosters on the rows measured since the last training (from load[:now]).

        Before training on them, the rows score the continued model against the full fit alone
        (`update_gain`): new to both, so an honest test of whether continuing helps."""
        if self.model is None:
            raise ValueError("update needs a fitted model")
        rows = self._new_rows(load, now)
        self.updated_at = now
        if rows is None or len(rows[1]) < 2 * 40:  # fewer rows than two leaves' worth: nothing to learn
            return
        x, y = rows
        base = self._loss(y, self.model.predict(x, num_iteration=self.base_trees or None))
        self.update_gain.append((base - self._loss(y, self.model.predict(x))) / len(y))
        self.model = self._train_one(x, y, self.objective, init=self.model, rounds=self.update_rounds)
        self.quantile_models = {
            q: self._train_one(x, y, "quantile", q, init=m, rounds=self.update_rounds)
            for q, m in self.quantile_models.items()
        }
        if self._train is not None:  # the rows quantile models not yet trained will learn from
            self._train = (np.vstack([self._train[0], x]), np.concatenate([self._train[1], y]))

    def update_history(self, now: int) -> int:
        """The slots before `now` a continuation at `now` reads (the planner worker loads no more): its rows'
        origins reach a lead before the last training, their features four weeks before an origin."""
        since = max(self.updated_at, now - self.train_days * self.spd)
        return now - since + self.max_lead + 28 * self.spd

    def _loss(self, y: FloatArray, pred: FloatArray) -> float:
        err = np.asarray(pred, dtype=np.float64) - y
        return float(np.sum(np.abs(err)) if self.objective == "regression_l1" else np.sum(err * err))

    def due(self, now: int) -> Training | None:
        """The training the model needs before forecasting from slot `now`, or None (use it as it is)."""
        if self.model is None or not self.fitted_at <= self.updated_at <= now:  # a fit "from the future"
            return Training.REFIT
        if now - self.fitted_at >= self.refit_days * self.spd:
            return Training.REFIT
        if self.update_days <= 0 or now - self.updated_at < self.update_days * self.spd:
            return None
        if continuation_hurts(self.update_gain) or int(self.model.num_trees()) + self.update_rounds > self.max_trees:
            return Training.REFIT  # continuing did worse than the full fit alone, or the booster is full
        return Training.UPDATE

    def train(self, load: FloatArray, now: int) -> Training | None:
        """Whatever training is `due` at `now`, on load[:now]; returns what was done."""
        what = self.due(now)
        if what is Training.REFIT:
            self.fit(load[:now], now)
        elif what is Training.UPDATE:
            self.update(load[:now], now)
        return what

    # --- forecasts --------------------------------------------------------------------------

    def forecast(self, load: FloatArray, now: int, horizon: int) -> FloatArray:
        """Load for slots now..now+horizon-1 given the measured load[:now] (absolute slot indices), after
        whatever training is `due`."""
        if now >= self.min_days * self.spd:
            self.train(load, now)
        return self.predict(load, now, horizon)

    def predict(self, load: FloatArray, now: int, horizon: int) -> FloatArray:
        """`forecast` with the model as it is (no training; the planner worker trains on a longer series)."""
        history = load[:now]
        if now < self.min_days * self.spd or self.model is None:
            return forecast_load(history, horizon, self.spd)
        pred = self.model.predict(self._features(history, now, np.arange(horizon)))
        return np.asarray(np.clip(pred, 0.0, None), dtype=np.float64)

    def quantiles(self, load: FloatArray, now: int, horizon: int) -> LoadQuantiles:
        """P10/P50/P90 for slots now..now+horizon-1 from load[:now]; on a cold start the profile for all
        three (no spread is known yet, so none is invented)."""
        history = load[:now]
        if now < self.min_days * self.spd:
            p = forecast_load(history, horizon, self.spd)
            return LoadQuantiles(p, p.copy(), p.copy())
        self.train(load, now)
        if self.model is None:
            p = forecast_load(history, horizon, self.spd)
            return LoadQuantiles(p, p.copy(), p.copy())
        if not self.quantile_models:
            rows = self._train if self._train is not None else self._rows(history, self.fitted_at)
            if rows is None:
                p = self.forecast(load, now, horizon)
                return LoadQuantiles(p, p.copy(), p.copy())
            self.quantile_models = {q: self._train_one(*rows, "quantile", q) for q in QUANTILES}
        x = self._features(history, now, np.arange(horizon))
        preds = np.sort(np.vstack([self.quantile_models[q].predict(x) for q in QUANTILES]), axis=0)
        p10, p50, p90 = (np.asarray(np.clip(p, 0.0, None), dtype=np.float64) for p in preds)
        return LoadQuantiles(p10, p50, p90)

    # --- stored state -----------------------------------------------------------------------

    def to_state(self) -> bytes | None:
        """The fitted models, compressed, for storing per site; None if nothing is fitted or it is too big."""
        if self.model is None:
            return None
        models = {"point": self.model.model_to_string()}
        models.update({f"q{q}": m.model_to_string() for q, m in self.quantile_models.items()})
        state = _State(
            version=STATE_VERSION,
            step_s=self.step.total_seconds(),
            tz=self.tz,
            country=self.country,
            subdiv=self.subdiv,
            objective=self.objective,
            fitted_at=(self.start + self.step * self.fitted_at).isoformat(),
            temperature=self.temperature is not None,
            models=models,
            updated_at=(self.start + self.step * self.updated_at).isoformat(),
            base_trees=self.base_trees,
            update_gain=self.update_gain,
        )
        blob = zlib.compress(msgspec.json.encode(state), 6)
        return blob if len(blob) <= MAX_STATE_BYTES else None

    def load_state(self, blob: bytes) -> datetime:
        """Adopt a stored model (raises ValueError if it does not fit this forecaster); returns its fit time.

        `fitted_at` becomes the slot index of the stored fit time on this forecaster's grid, so the refit
        schedule carries on where it was.
        """
        import lightgbm

        if len(blob) > MAX_STATE_BYTES:
            raise ValueError(f"stored load model too large ({len(blob)} bytes)")
        try:
            state = msgspec.json.decode(zlib.decompress(blob), type=_State)
            fitted = datetime.fromisoformat(state.fitted_at)
            updated = fitted if state.updated_at is None else datetime.fromisoformat(state.updated_at)
        except (zlib.error, msgspec.DecodeError, ValueError) as exc:
            raise ValueError(f"stored load model unreadable: {exc}") from None
        if fitted.tzinfo is None or updated.tzinfo is None:
            raise ValueError("stored load model: fit time without offset")
        gains = state.update_gain
        if updated < fitted or state.base_trees < 0 or len(gains) > MAX_UPDATES or not all(map(math.isfinite, gains)):
            raise ValueError("stored load model: continuation out of range")
        mine = (self.step.total_seconds(), self.tz, self.country, self.subdiv, self.objective)
        theirs = (state.step_s, state.tz, state.country, state.subdiv, state.objective)
        known = state.version in READABLE_VERSIONS
        if not known or mine != theirs or state.temperature != (self.temperature is not None):
            raise ValueError("stored load model was made for another grid, calendar or feature set")
        try:
            self.model = lightgbm.Booster(model_str=state.models["point"])
            self.quantile_models = {
                q: lightgbm.Booster(model_str=state.models[f"q{q}"]) for q in QUANTILES if f"q{q}" in state.models
            }
        except (KeyError, lightgbm.basic.LightGBMError) as exc:
            raise ValueError(f"stored load model unreadable: {exc}") from None
        if state.base_trees > self.model.num_trees():
            raise ValueError("stored load model: more base trees than trees")
        self.fitted_at = math.floor((fitted - self.start) / self.step)
        self.updated_at = math.floor((updated - self.start) / self.step)
        self.base_trees = state.base_trees or int(self.model.num_trees())
        self.update_gain = list(gains)
        self._train = None
        return fitted


def continuation_hurts(gains: list[float]) -> bool:
    """Whether continuing has done worse than the full fit alone beyond day-to-day noise (a paired test).

    `gains`: per continuation, the full fit's mean loss minus the continued model's on the rows that
    continuation was about to learn from. The first is 0 by construction (the models are still the same)
    and left out; of the rest (at least two), a mean below zero by more than two standard errors says
    the continuation hurts. A single bad day does not: a strict comparison refitted the Konstanz house's
    model every third day (docs/cloud-planning.md, incremental training)."""
    g = np.asarray(gains[1:], dtype=np.float64)
    if len(g) < 2:
        return False
    mean = float(np.mean(g))
    return mean < 0 and mean < -2.0 * float(np.std(g, ddof=1)) / math.sqrt(len(g))


def _at(values: FloatArray, idx: IntArray) -> FloatArray:
    """values[idx], NaN where idx is before the first value (a lag older than the history is unknown)."""
    return np.where(idx >= 0, values[np.clip(idx, 0, None)], np.nan)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silences numpy's 'mean of empty slice' (an all-NaN column is a legitimate unknown here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        yield


__all__ = [
    "MAX_STATE_BYTES",
    "QUANTILES",
    "FloatArray",
    "GbmLoadForecaster",
    "LoadQuantiles",
    "Training",
    "continuation_hurts",
    "day_level_factors",
    "day_level_persistence",
    "day_load_ratios",
    "day_type_profile",
    "day_types",
    "error_persistence",
    "forecast_load",
    "forecast_load_daytype",
    "forecast_load_house",
    "forecast_load_level",
    "forecast_load_nowcast",
    "forecast_load_persistence",
    "load_ratio_spread",
    "newsvendor_load",
    "zone_country",
]
