"""The PV forecast's day level from a day-ahead forecast the site does not make itself: a regional PV forecast.

Without weather the day-ahead PV forecast is clear sky × the mean day of the last two weeks (climatology). A
transmission system operator publishes, the day before, its forecast of the whole control area's PV output
(ENTSO-E Transparency, article 14.1.D: by 18:00 the day before). That is a weather forecast already turned into
PV: its day energy over the site's clear-sky day energy is an index of how bright the day will be, and the site
learns how its own PV follows it. A grid-power index of this kind costs nothing and exists for every European
control area; a weather service's irradiance forecast fits the same slot (its day energy is the index too).

Model (`IndexOutlook`): the site's day energy is proportional to the index's day energy,

    E_site(d) ≈ β × E_index(d),   β = Σ E_site / Σ E_index over the last `days` usable days

so the day's clearness (over the site's clear sky) is k̂_d = β × E_index(d) / E_clear(d). Proportional, not an
affine regression: the index is zero when the region is dark, and so is the site; the ratio re-learnt over two
weeks follows the season (the region's and the site's clear-sky days differ in length and angle). The
scenarios' dark / bright day is the P10 / P90 of how past days came out against their own k̂ (each day's β
from the days before it only).

Only what was published before the plan is used: day d's index is known from `published_before_h` hours before
the day's first slot (18:00 the day before for a day starting at midnight, `DEFAULT_PUBLISHED_BEFORE_H`).
"""

from __future__ import annotations

import csv
import itertools
import math
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import numpy as np
import numpy.typing as npt

from cloud.forecast_load import FloatArray
from cloud.forecast_pv_day import SUNNY_SHARE_OF_KWP
from cloud.plan_risk import MAX_DAY_RATIO
from cloud.quantile import linear_quantiles

MAX_INDEX_VALUE: Final = 1e6  # the index's unit is free (MW of a control area, W/m²); a larger value is an error
DEFAULT_PUBLISHED_BEFORE_H: Final = 6.0  # 18:00 the day before (ENTSO-E 14.1.D day-ahead wind and solar)
INDEX_RATIO_DAYS: Final = 14  # β's window: the mean day's (cloud.forecast.learn_pv_factor)
INDEX_SPREAD_DAYS: Final = 60  # the residuals' window (the conditional spread's, cloud.forecast_pv_day)
MIN_INDEX_DAYS: Final = 7  # fewer usable days: no index forecast (the mean day as without one)
_MIN_CLEAR_KWH_PER_KWP: Final = 0.5  # a day with less clear-sky energy says nothing (learn_pv_factor's)
_LEVEL_BOUNDS: Final = (0.02, 1.5)  # the factor's own bounds (cloud.forecast._FACTOR_BOUNDS)
_SPREAD_QUANTILES: Final = (0.1, 0.9)


@dataclass(frozen=True, slots=True)
class IndexDays:
    """Per whole day of aligned series (oldest first): the site's measured, clear-sky and index energy over the
    day's sunlit slots (NaN where the day is unusable: a telemetry or index gap in a sunlit slot, or too little
    clear sky), and β and k̂ as each day's own plan would have had them (from the days before it)."""

    measured: FloatArray
    clear: FloatArray
    index: FloatArray
    beta: FloatArray  # β_d from the `ratio_days` usable days before d; NaN with fewer than MIN_INDEX_DAYS
    residual: FloatArray  # k_d / k̂_d (NaN where either is unknown)


def index_days(
    measured_kw: FloatArray,
    clear_kw: FloatArray,
    index: FloatArray,
    slots_per_day: int,
    kwp: float,
    *,
    ratio_days: int = INDEX_RATIO_DAYS,
) -> IndexDays:
    """`IndexDays` of aligned series that start at a day boundary; `measured_kw` may be shorter than the others
    (the days not yet measured are NaN). Only the past of each day goes into its β."""
    spd = max(1, slots_per_day)
    days = len(clear_kw) // spd
    c = clear_kw[: days * spd].reshape(days, spd)
    i = index[: days * spd].reshape(days, spd)
    flat = np.full(days * spd, np.nan)
    flat[: min(len(measured_kw), days * spd)] = measured_kw[: days * spd]
    m = flat.reshape(days, spd)
    sunny = c > SUNNY_SHARE_OF_KWP * kwp
    c_e = np.where(sunny, c, 0.0).sum(axis=1)
    enough = c_e * 24.0 / spd >= _MIN_CLEAR_KWH_PER_KWP * kwp
    i_ok = (~np.isnan(i) | ~sunny).all(axis=1) & enough
    m_ok = (~np.isnan(m) | ~sunny).all(axis=1) & i_ok
    i_e = np.where(i_ok, np.where(sunny, np.nan_to_num(i), 0.0).sum(axis=1), np.nan)
    m_e = np.where(m_ok, np.where(sunny, np.nan_to_num(m), 0.0).sum(axis=1), np.nan)
    c_e = np.where(enough, c_e, np.nan)
    beta = np.full(days, np.nan)
    both = np.isfinite(m_e) & np.isfinite(i_e) & (np.nan_to_num(i_e) > 0.0)
    for d in range(days):
        past = np.flatnonzero(both[:d])[-ratio_days:]
        if len(past) >= MIN_INDEX_DAYS:
            den = float(np.sum(i_e[past]))
            beta[d] = float(np.sum(m_e[past])) / den if den > 0.0 else math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        residual = m_e / (beta * i_e)
    residual = np.where(np.isfinite(residual), residual, np.nan)
    return IndexDays(m_e, c_e, i_e, beta, residual)


@dataclass(frozen=True, slots=True)
class IndexOutlook:
    """Today's β and the residuals' P10 / P90: a day's level k̂ = β × index energy / clear-sky energy."""

    beta: float
    spread: tuple[float, float]

    def level(self, index_energy: float, clear_energy: float) -> float:
        """k̂ for a day (NaN when its index is unknown or it has no clear sky to scale)."""
        if not (math.isfinite(index_energy) and math.isfinite(clear_energy) and clear_energy > 0.0):
            return math.nan
        lo, hi = _LEVEL_BOUNDS
        return float(np.clip(self.beta * index_energy / clear_energy, lo, hi))


def index_outlook(days: IndexDays, today: int, *, spread_days: int = INDEX_SPREAD_DAYS) -> IndexOutlook | None:
    """The outlook of a plan made on day `today` (its β from the days before it; the residuals of the last
    `spread_days` completed days), or None with too few usable days."""
    if not 0 <= today < len(days.beta) or not math.isfinite(days.beta[today]):
        return None
    r = days.residual[max(0, today - spread_days) : today]
    r = r[np.isfinite(r)]
    if len(r) < MIN_INDEX_DAYS:
        return None
    lo, hi = (float(np.clip(q, 0.0, MAX_DAY_RATIO)) for q in linear_quantiles(r, _SPREAD_QUANTILES))
    return IndexOutlook(float(days.beta[today]), (lo, max(hi, lo)))


class PvIndexError(ValueError):
    """The index file cannot be used; the message names the file and line."""


def read_pv_index(path: str, start: datetime, step: timedelta, n: int) -> FloatArray:
    """The index file (`ts,value`; `#` lines are comments; ts with a UTC offset, in time order, one step apart)
    on the n slots of a trace from `start` by `step`: each slot takes the index value of the index step it
    starts in (an hourly index holds for the quarter-hours of its hour), NaN where the file has none. Every
    value must be finite and within 0..MAX_INDEX_VALUE; an empty value is a gap (NaN)."""
    stamps: list[datetime] = []
    values: list[float] = []
    try:
        with open(path, newline="") as fh:
            lines = [(no, text) for no, text in enumerate(fh, start=1) if not text.startswith("#")]
            reader = csv.DictReader(text for _, text in lines)
            if not reader.fieldnames or not {"ts", "value"} <= set(reader.fieldnames):
                raise PvIndexError(f"{path}: the header must name the columns ts,value")
            for row in reader:
                line = lines[reader.line_num - 1][0]
                try:
                    ts = datetime.fromisoformat(row["ts"] or "")
                    value = float(row["value"]) if row["value"] else math.nan
                except (TypeError, ValueError) as exc:
                    raise PvIndexError(f"{path}: line {line}: {exc}") from None
                if ts.tzinfo is None:
                    raise PvIndexError(f"{path}: line {line}: ts {row['ts']} without UTC offset (write Z or +hh:mm)")
                if row["value"] and not (math.isfinite(value) and 0.0 <= value <= MAX_INDEX_VALUE):
                    bound = f"0..{MAX_INDEX_VALUE:g}"
                    raise PvIndexError(
                        f"{path}: line {line}: value = {row['value']!r} is not a finite number within {bound}"
                    )
                if stamps and ts.astimezone(UTC) <= stamps[-1]:
                    raise PvIndexError(f"{path}: line {line}: {row['ts']} is not after the previous row")
                stamps.append(ts.astimezone(UTC))
                values.append(value)
    except OSError as exc:
        raise PvIndexError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PvIndexError(f"{path}: not a text file") from None
    except csv.Error as exc:
        raise PvIndexError(f"{path}: {exc}") from None
    if len(stamps) < 2:
        raise PvIndexError(f"{path}: need at least two rows")
    gaps = Counter(b - a for a, b in itertools.pairwise(stamps))
    index_step = max(gaps, key=lambda gap: gaps[gap])
    if not timedelta(minutes=1) <= index_step <= timedelta(days=1):
        raise PvIndexError(f"{path}: step {index_step} is not between a minute and a day")
    by_time = dict(zip(stamps, values, strict=True))
    first = stamps[0]
    out = np.full(n, np.nan)
    for i in range(n):
        t = start + step * i
        if t < first:
            continue
        out[i] = by_time.get(first + index_step * ((t - first) // index_step), math.nan)
    return out


def plan_levels(
    days: IndexDays,
    outlook: IndexOutlook | None,
    slots: npt.NDArray[np.int64],
    published: npt.NDArray[np.bool_],
    slots_per_day: int,
    mean: float,
) -> tuple[FloatArray, FloatArray]:
    """Per slot (`slots`: indices on the days' grid, whose day `slot // slots_per_day` is an `IndexDays` day):
    its PV level over the mean day `mean`, 1 where its day's index is not `published` at plan time, unknown
    or unscalable; and the scenarios' (dark, bright) pair where it is scaled (NaN elsewhere). The backtest and
    the planner worker both plan on these."""
    levels = np.ones(len(slots))
    pairs = np.full((len(slots), 2), np.nan)
    if outlook is None or not (math.isfinite(mean) and mean > 0.0):
        return levels, pairs
    day_level: dict[int, float] = {}
    for j, slot in enumerate(slots):
        d = max(int(slot), 0) // max(1, slots_per_day)
        if not published[j] or d >= len(days.index):
            continue
        if d not in day_level:
            day_level[d] = outlook.level(float(days.index[d]), float(days.clear[d]))
        if math.isfinite(day_level[d]):
            levels[j] = day_level[d] / mean
            pairs[j] = outlook.spread
    return levels, pairs


def index_ratios(ratios: tuple[FloatArray, FloatArray], pairs: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The scenarios' (dark, bright) ratios with each slot that has a pair (`pairs[j]`, not NaN: its day is
    scaled by the index) taking that pair; the other slots keep theirs."""
    dark, bright = ratios[0].copy(), ratios[1].copy()
    n = min(len(dark), len(pairs))
    known = np.zeros(len(dark), dtype=bool)
    known[:n] = np.isfinite(pairs[:n, 0]) & np.isfinite(pairs[:n, 1])
    dark[known], bright[known] = pairs[:n][known[:n], 0], pairs[:n][known[:n], 1]
    return dark, bright


__all__ = [
    "DEFAULT_PUBLISHED_BEFORE_H",
    "INDEX_RATIO_DAYS",
    "INDEX_SPREAD_DAYS",
    "MAX_INDEX_VALUE",
    "IndexDays",
    "IndexOutlook",
    "PvIndexError",
    "index_days",
    "index_outlook",
    "index_ratios",
    "plan_levels",
    "read_pv_index",
]
