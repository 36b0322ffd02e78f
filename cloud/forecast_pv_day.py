"""The PV forecast's day-to-day part: the site's own persistence of clear and cloudy days.

Without a weather forecast the day-ahead PV forecast is clear sky × the mean day of the last two weeks
(`cloud.forecast.learn_pv_factor`: climatology), and yesterday's PV (persistence) does about as badly: two
poor predictors whose errors are correlated but not the same. The MSE-optimal blend of the two is the AR(1)
of the daily clearness k_d = measured / clear-sky day energy:

    E[k_{d+1}] = m + ρ (k_d − m)

with m the mean day and ρ the lag-1 autocorrelation of k_d, measured on the site's own history (no fitted
constant; the same idea as the load forecaster's AR(1) nowcast, `cloud.forecast_load.error_persistence`).
ρ came out about 0.3 on the Konstanz and Ausgrid houses over rolling four-week windows
(docs/cloud-planning.md, "PV day persistence").

A plan made during a day knows the completed days and today's partial day. Today's expected deviation from
the mean is read from both, weighted by how much of today's clear-sky energy has passed (w):

    dev_today = w (k_today_so_far − m) + (1 − w) ρ (k_yesterday − m)

(at dawn the AR prior from yesterday, at dusk today's own clearness); a slot j ≥ 1 days after today is
planned on m + ρ^j dev_today. Today's remaining slots stay on the mean day m, corrected by the intraday
nowcast (`cloud.forecast.pv_nowcast`), which already carries today's own evidence into the next hours
(`PvDayOutlook`).

Opt-in (`zapcloud backtest --pv-persistence`, `zapcloud serve --pv-persistence`): it cuts the day-ahead energy
error by 2-4 % on the real houses, and that is worth well under a euro a year either way in the backtest
(docs/cloud-planning.md, "PV day persistence").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from cloud.forecast_load import FloatArray
from cloud.quantile import linear_quantiles

PV_PERSISTENCE_DAYS: Final = 28  # the window ρ is measured over (four weeks, like the load's error_persistence)
MIN_PERSISTENCE_PAIRS: Final = 10  # fewer pairs of consecutive usable days: ρ = 0 (today's behaviour)
MAX_PERSISTENCE: Final = 0.99  # ρ < 1: a deviation always fades
SUNNY_SHARE_OF_KWP: Final = 0.02  # a slot counts as sunlit above 2 % of kWp clear sky (learn_pv_factor's)
_MIN_CLEAR_KWH_PER_KWP: Final = 0.5  # a day with less clear-sky energy says nothing (learn_pv_factor's)
_LEVEL_BOUNDS: Final = (0.02, 1.5)  # the factor's own bounds (cloud.forecast._FACTOR_BOUNDS)


def day_clearness(measured_kw: FloatArray, clear_kw: FloatArray, slots_per_day: int, kwp: float) -> FloatArray:
    """k per whole day of aligned series that start at a day boundary (oldest first): measured over clear-sky
    energy of the sunlit slots; NaN for a day with a telemetry gap in its sunlit slots (it would look dark)
    or too little clear-sky energy to measure against. Keeps every day, so consecutive entries are
    consecutive days."""
    days = len(measured_kw) // slots_per_day
    if days == 0 or kwp <= 0:
        return np.zeros(0)
    m = measured_kw[: days * slots_per_day].reshape(days, slots_per_day)
    c = clear_kw[: days * slots_per_day].reshape(days, slots_per_day)
    sunny = c > SUNNY_SHARE_OF_KWP * kwp
    complete = (~np.isnan(m) | ~sunny).all(axis=1)
    c_energy = np.where(sunny, c, 0.0).sum(axis=1)
    m_energy = np.where(sunny, np.nan_to_num(m), 0.0).sum(axis=1)
    ok = complete & (c_energy * 24.0 / slots_per_day >= _MIN_CLEAR_KWH_PER_KWP * kwp)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = m_energy / c_energy
    return np.asarray(np.where(ok, k, np.nan), dtype=np.float64)


def clearness_persistence(k: FloatArray, *, days: int = PV_PERSISTENCE_DAYS) -> float:
    """ρ: the lag-1 autocorrelation of the last `days` days' clearness (pairs of consecutive usable days),
    in [0, MAX_PERSISTENCE]; 0 with fewer than MIN_PERSISTENCE_PAIRS pairs or no spread (today's forecast)."""
    recent = k[-days:] if days > 0 else k[:0]
    a, b = recent[:-1], recent[1:]
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < MIN_PERSISTENCE_PAIRS:
        return 0.0
    mean = float(np.mean(recent[np.isfinite(recent)]))
    x, y = a[ok] - mean, b[ok] - mean
    var = float(np.sum(x * x) + np.sum(y * y)) / 2.0
    if var < 1e-12:
        return 0.0
    rho = float(np.sum(x * y)) / var
    return float(np.clip(rho, 0.0, MAX_PERSISTENCE)) if math.isfinite(rho) else 0.0


@dataclass(frozen=True, slots=True)
class PvDayOutlook:
    """The clearness a plan puts on today and the days after.

    Day j ≥ 1 (tomorrow on): `mean` + ρ^j `deviation`, today's expected deviation from yesterday and today so
    far. Today (j = 0): the mean day, as without persistence; today's own evidence reaches today's remaining
    slots through the intraday nowcast (the last 2 h, fading). Measured in money (docs/cloud-planning.md):
    fading the nowcast to today's updated level instead raised the Konstanz house's cost, and fading it to the
    AR prior from yesterday alone did no better over the four real years."""

    mean: float
    rho: float = 0.0
    deviation: float = 0.0

    def level(self, day: int) -> float:
        lo, hi = _LEVEL_BOUNDS
        shift = 0.0 if day <= 0 else self.rho**day * self.deviation
        return float(np.clip(self.mean + shift, lo, hi))

    def factors(self, horizon: int, slots_left_today: int, slots_per_day: int) -> FloatArray:
        """The clearness each of the next `horizon` slots is planned on (today's for its remaining slots)."""
        day = np.where(
            np.arange(horizon) < slots_left_today,
            0,
            1 + (np.arange(horizon) - slots_left_today) // max(1, slots_per_day),
        )
        levels = np.array([self.level(d) for d in range(int(day.max(initial=0)) + 1)])
        return np.asarray(levels[day], dtype=np.float64)


def pv_day_outlook(
    history_k: FloatArray,
    today_measured_kw: FloatArray,
    today_clear_kw: FloatArray,
    today_clear_total_kw: float,
    mean: float,
    kwp: float,
    *,
    rho: float | None = None,
    days: int = PV_PERSISTENCE_DAYS,
) -> PvDayOutlook:
    """Today's expected deviation from `mean` (the factor's mean day) and the persistence it fades with.

    `history_k`: the completed days' clearness (`day_clearness`, oldest first, yesterday last);
    `today_measured_kw` / `today_clear_kw`: today's slots so far (aligned; NaN = missing);
    `today_clear_total_kw`: the sum of today's clear-sky kW over all its slots (the sky is known ahead);
    `rho`: the persistence if already measured today (else measured from `history_k`).
    Only the past goes in: the plan-time caller passes nothing after now."""
    if not (math.isfinite(mean) and mean > 0.0) or kwp <= 0:
        return PvDayOutlook(mean if math.isfinite(mean) else 0.0)
    r = clearness_persistence(history_k, days=days) if rho is None else float(np.clip(rho, 0.0, MAX_PERSISTENCE))
    if r <= 0.0:
        return PvDayOutlook(mean)
    last = float(history_k[-1]) if len(history_k) else math.nan
    prior = r * (last - mean) if math.isfinite(last) else 0.0
    ok = ~np.isnan(today_measured_kw) & ~np.isnan(today_clear_kw)
    sunny = ok & (today_clear_kw > SUNNY_SHARE_OF_KWP * kwp)
    clear_so_far = float(np.sum(today_clear_kw[sunny]))
    deviation = prior
    if today_clear_total_kw > 0.0 and clear_so_far > 0.0:
        w = float(np.clip(clear_so_far / today_clear_total_kw, 0.0, 1.0))
        k_today = float(np.sum(today_measured_kw[sunny])) / clear_so_far
        deviation = w * (k_today - mean) + (1.0 - w) * prior
    return PvDayOutlook(mean, r, deviation)


def pv_day_outlook_from_series(
    measured_kw: FloatArray,
    clear_kw: FloatArray,
    today: int,
    slots_per_day: int,
    mean: float,
    kwp: float,
    *,
    days: int = PV_PERSISTENCE_DAYS,
) -> PvDayOutlook:
    """`pv_day_outlook` from aligned series: `measured_kw` up to now (its last slot is the one before the
    plan), `clear_kw` from the same first slot through at least the end of today; `today` the index of
    today's first slot (a day boundary at night). The days before `today` are the completed days (at most
    `days` of them); nothing of `measured_kw` past its end is read, so a plan uses only what it knew.
    The backtest and the planner worker both call this."""
    now = len(measured_kw)
    today = int(np.clip(today, 0, now))
    first = today - min(today // max(1, slots_per_day), days) * slots_per_day
    history = day_clearness(measured_kw[first:today], clear_kw[first:today], slots_per_day, kwp)
    return pv_day_outlook(
        history,
        measured_kw[today:now],
        clear_kw[today:now],
        float(np.sum(clear_kw[today : today + slots_per_day])),
        mean,
        kwp,
        days=days,
    )


PV_SPREAD_DAYS: Final = 60  # the window of the conditional spread's residuals (docs: 14 days are too few)
PV_MEAN_DAYS: Final = 14  # the mean day's window (`cloud.forecast.learn_pv_factor` in the backtest and worker)
_SPREAD_QUANTILES: Final = (0.1, 0.9)  # the dark and bright scenarios (as `cloud.forecast.pv_ratio_spread`)


@dataclass(frozen=True, slots=True)
class PvDaySpread:
    """The dark / bright day of the two-stage plan, conditioned on what the site just saw.

    In units of the mean day m (a ratio 1 is the point forecast's level). The rest of today: today's expected
    deviation from m (`deviation`: `pv_day_outlook`'s, over m) plus the P10 / P90 of how the rest of a day came
    out against that same estimate at this time of day (`today`). Tomorrow: ρ × `deviation` plus the P10 / P90
    of the AR(1) forecast's residual made at this time of day (`tomorrow`). Day j ≥ 2: ρ^j × `deviation`, the
    spread widening from tomorrow's towards the unconditional P10 / P90 (`unconditional`) as ρ^(j−1) fades.
    With ρ = 0 tomorrow's spread is the unconditional one."""

    rho: float
    deviation: float
    today: tuple[float, float]
    tomorrow: tuple[float, float]
    unconditional: tuple[float, float]
    ceiling: float = math.inf  # the highest ratio a day can have (the factor's bound over m)

    def day(self, j: int) -> tuple[float, float]:
        """(dark, bright) ratio of day j over the mean day (0: the rest of today)."""
        centre = self.rho ** max(j, 0) * self.deviation
        if j <= 0:
            lo, hi = self.today
        else:
            fade = self.rho ** (j - 1)
            lo = fade * self.tomorrow[0] + (1.0 - fade) * self.unconditional[0]
            hi = fade * self.tomorrow[1] + (1.0 - fade) * self.unconditional[1]
        dark = float(np.clip(1.0 + centre + lo, 0.0, self.ceiling))
        return dark, float(np.clip(1.0 + centre + hi, dark, self.ceiling))

    def ratios(self, horizon: int, slots_left_today: int, slots_per_day: int) -> tuple[FloatArray, FloatArray]:
        """(dark, bright) ratio for each of the next `horizon` slots (today's for its remaining slots)."""
        day = np.where(
            np.arange(horizon) < slots_left_today,
            0,
            1 + (np.arange(horizon) - slots_left_today) // max(1, slots_per_day),
        )
        pairs = np.array([self.day(d) for d in range(int(day.max(initial=0)) + 1)])
        return np.asarray(pairs[day, 0], dtype=np.float64), np.asarray(pairs[day, 1], dtype=np.float64)


def _quantiles(x: FloatArray) -> tuple[float, float] | None:
    x = x[np.isfinite(x)]
    if len(x) < MIN_PERSISTENCE_PAIRS:
        return None
    lo, hi = linear_quantiles(x, _SPREAD_QUANTILES)
    return float(lo), float(hi)


@dataclass(frozen=True, slots=True)
class PvSpreadHistory:
    """The completed days a conditional spread is read from (`learn_spread_history`), once a day: per day its
    clearness `k`, its own mean day `base` (m_t: the `mean_days` before it) and the running sums of its sunlit
    measured and clear-sky kW and of its sunlit gaps by slot of the day (so each plan of the day replays the
    past days at its own time of day without summing them again); ρ over them; `recent` the last `days`."""

    k: FloatArray
    base: FloatArray
    measured_sum: FloatArray  # (days, slots + 1): column h = the sunlit slots before slot h
    clear_sum: FloatArray
    gap_sum: FloatArray
    rho: float
    recent: npt.NDArray[np.bool_]
    kwp: float

    def spread(self, today_measured_kw: FloatArray, today_clear_kw: FloatArray, mean: float) -> PvDaySpread | None:
        """The spread of a plan made `len(today_measured_kw)` slots into today (`today_clear_kw`: all of today's
        clear sky, known ahead; `mean`: the point forecast's mean day), or None with too few usable days."""
        spd = self.measured_sum.shape[1] - 1
        if not (math.isfinite(mean) and mean > 0.0) or len(today_clear_kw) < spd:
            return None
        h = min(len(today_measured_kw), spd)
        rho, k, base = self.rho, self.k, self.base
        cm, cc, cg = self.measured_sum, self.clear_sum, self.gap_sum
        with np.errstate(divide="ignore", invalid="ignore"):
            m_so, c_so = np.where(cg[:, h] > 0, np.nan, cm[:, h]), cc[:, h]
            m_rest = np.where(cg[:, spd] - cg[:, h] > 0, np.nan, cm[:, spd] - cm[:, h])
            c_rest, c_day = cc[:, spd] - cc[:, h], cc[:, spd]
            prev = np.concatenate([[np.nan], k[:-1]])
            prior = np.where(np.isfinite(prev), rho * (prev / base - 1.0), 0.0)
            w = np.where(c_day > 0.0, c_so / c_day, 0.0)
            so_far = np.where(c_so > 0.0, m_so / c_so / base - 1.0, 0.0)
            dev = w * so_far + (1.0 - w) * prior
            rest = np.where(c_rest > 0.0, m_rest / c_rest / base - 1.0, np.nan)
            nxt = np.concatenate([k[1:] / base[:-1] - 1.0, [np.nan]])
        dev_ok = self.recent & np.isfinite(dev) & np.isfinite(base) & np.isfinite(m_so)
        uncond = _quantiles(np.where(dev_ok, nxt, np.nan))
        tomorrow = _quantiles(np.where(dev_ok, nxt - rho * dev, np.nan))
        if uncond is None or tomorrow is None:
            return None
        rest_q = _quantiles(np.where(dev_ok, rest - dev, np.nan))
        # today, read as each past day was above (pv_day_outlook's blend, over the mean day the forecast uses)
        sunny = today_clear_kw[:spd] > SUNNY_SHARE_OF_KWP * self.kwp
        c_total = float(np.sum(today_clear_kw[:spd][sunny]))
        now_sunny = sunny[:h]
        c_now = float(np.sum(today_clear_kw[:h][now_sunny]))
        seen = today_measured_kw[:h][now_sunny]
        last = float(k[-1])
        deviation = rho * (last / mean - 1.0) if math.isfinite(last) else 0.0
        if c_now > 0.0 and c_total > 0.0 and not np.isnan(seen).any():
            share = float(np.clip(c_now / c_total, 0.0, 1.0))
            deviation = share * (float(np.sum(seen)) / c_now / mean - 1.0) + (1.0 - share) * deviation
        return PvDaySpread(rho, deviation, rest_q or (0.0, 0.0), tomorrow, uncond, _LEVEL_BOUNDS[1] / mean)


def learn_spread_history(
    measured_kw: FloatArray,
    clear_kw: FloatArray,
    slots_per_day: int,
    kwp: float,
    *,
    days: int = PV_SPREAD_DAYS,
    mean_days: int = PV_MEAN_DAYS,
) -> PvSpreadHistory | None:
    """The history of aligned series of completed whole days ending at today's first slot (oldest first; the
    last `days + mean_days + 1` of them are used), or None with fewer than two days or no kWp."""
    spd = max(1, slots_per_day)
    n = min(len(measured_kw) // spd, days + mean_days + 1)
    if n < 2 or kwp <= 0:
        return None
    past_m = measured_kw[len(measured_kw) - n * spd :].reshape(n, spd)
    past_c = clear_kw[len(measured_kw) - n * spd : len(measured_kw)].reshape(n, spd)
    k = day_clearness(past_m.ravel(), past_c.ravel(), spd, kwp)
    sunny = past_c > SUNNY_SHARE_OF_KWP * kwp
    zero = np.zeros((n, 1))
    cm = np.hstack([zero, np.cumsum(np.where(sunny, np.nan_to_num(past_m), 0.0), axis=1)])
    cc = np.hstack([zero, np.cumsum(np.where(sunny, past_c, 0.0), axis=1)])
    cg = np.hstack([zero, np.cumsum(np.isnan(past_m) & sunny, axis=1)])
    ok = np.isfinite(k)
    run_m = np.concatenate([[0.0], np.cumsum(np.where(ok, cm[:, spd], 0.0))])
    run_c = np.concatenate([[0.0], np.cumsum(np.where(ok, cc[:, spd], 0.0))])
    t = np.arange(n)
    lo = np.maximum(0, t - mean_days)
    with np.errstate(divide="ignore", invalid="ignore"):
        den = run_c[t] - run_c[lo]
        base = np.where(den > 0.0, (run_m[t] - run_m[lo]) / den, np.nan)  # m_t
    rho = clearness_persistence(k, days=days + 1)
    return PvSpreadHistory(k, base, cm, cc, cg.astype(np.float64), rho, t >= n - days, kwp)


def pv_day_spread_from_series(
    measured_kw: FloatArray,
    clear_kw: FloatArray,
    today: int,
    slots_per_day: int,
    mean: float,
    kwp: float,
    *,
    days: int = PV_SPREAD_DAYS,
    mean_days: int = PV_MEAN_DAYS,
) -> PvDaySpread | None:
    """The conditional dark / bright days from aligned series (as `pv_day_outlook_from_series`: `measured_kw`
    up to now, `clear_kw` from the same first slot through at least the end of today, `today` the index of
    today's first slot, `mean` the factor's mean day the point forecast is made on), or None with fewer than
    MIN_PERSISTENCE_PAIRS usable past days (the caller keeps the unconditional `pv_ratio_spread`).

    Each of the last `days` completed days t is replayed at the time of day of now, on its own mean day m_t
    (the `mean_days` before it): its expected deviation dev_t as `pv_day_outlook` read it then (its day so far
    and the AR prior from day t − 1, over m_t); how its rest came out against dev_t (today's spread); how day
    t + 1 came out against ρ dev_t (tomorrow's); and day t + 1 over m_t alone (the unconditional spread). ρ is
    the clearness' lag-1 autocorrelation over the same days (`clearness_persistence`). Only the past goes in:
    nothing of `measured_kw` past its end is read, and the replayed days are all complete before today. Why
    60 days, not the mean day's 14: a P10 of 13 residuals is the second-lowest of them, and the persistence
    over 28 days is often 0 (docs/cloud-planning.md). A caller planning many times a day keeps the day's
    `learn_spread_history` and calls its `spread` (the backtest does)."""
    now = len(measured_kw)
    today = int(np.clip(today, 0, now))
    spd = max(1, slots_per_day)
    history = learn_spread_history(measured_kw[:today], clear_kw[:today], spd, kwp, days=days, mean_days=mean_days)
    if history is None:
        return None
    return history.spread(measured_kw[today:now], clear_kw[today : today + spd], mean)


__all__ = [
    "MAX_PERSISTENCE",
    "MIN_PERSISTENCE_PAIRS",
    "PV_MEAN_DAYS",
    "PV_PERSISTENCE_DAYS",
    "PV_SPREAD_DAYS",
    "SUNNY_SHARE_OF_KWP",
    "PvDayOutlook",
    "PvDaySpread",
    "PvSpreadHistory",
    "clearness_persistence",
    "day_clearness",
    "learn_spread_history",
    "pv_day_outlook",
    "pv_day_outlook_from_series",
    "pv_day_spread_from_series",
]
