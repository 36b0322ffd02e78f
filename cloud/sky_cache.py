"""Clear-sky PV per UTC day, cached across sites and plans (bounded LRU).

Why: the planner asks `cloud.forecast.clear_sky` for the PV history window (14 days) plus the horizon on
every plan, and a DR event re-plans every site again minutes after its routine plan. pvlib's solar
position and Ineichen clear sky over those ~1,700 slots were about 75 % of a DR re-plan's CPU (bench/fleet.py,
cProfile of one worker). Each of those values depends only on the location, the arrays and the instant,
so the window is cut into whole UTC days on the slot grid, each day computed once by `clear_sky` itself
and kept: the next plan of the same site (15 min later, or the DR re-plan) computes at most the new day,
and sites at the same location with the same arrays share their days. The result is the same numbers
`clear_sky` gives for the whole window (pvlib is elementwise in time; tests/unit/test_sky_cache.py checks
equality bit for bit), so no plan changes.

Bound: SKY_CACHE_DAYS entries of one day each (96 slots × 2 float64 + key ≈ 2 kB): ≈ 32 MB at most, which
holds the working set of ~1,000 distinct site locations (17 days each). Grids that do not tile a day
(a step that does not divide 24 h, or a start off the grid) go to `clear_sky` uncached.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import numpy as np

from cloud.forecast import ClearSky, Location, PvArray, clear_sky

SKY_CACHE_DAYS: Final = 16_384
_DAY: Final = timedelta(days=1)


@functools.lru_cache(maxsize=SKY_CACHE_DAYS)
def _day(location: Location, arrays: tuple[PvArray, ...], day: datetime, step: timedelta) -> ClearSky:
    sky = clear_sky(location, arrays, day, step, _DAY // step)
    sky.pv_kw.setflags(write=False)  # shared between callers: nobody may change a cached day
    sky.ghi.setflags(write=False)
    return sky


def clear_sky_cached(
    location: Location, arrays: Sequence[PvArray], start: datetime, step: timedelta, n: int
) -> ClearSky:
    """`clear_sky(location, arrays, start, step, n)`, from cached whole days where the grid tiles them."""
    start = start.astimezone(UTC)
    midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
    if n <= 0 or step <= timedelta(0) or _DAY % step or (start - midnight) % step:
        return clear_sky(location, arrays, start, step, n)
    per_day = _DAY // step
    offset = (start - midnight) // step
    days = math.ceil((offset + n) / per_day)
    parts = [_day(location, tuple(arrays), midnight + _DAY * k, step) for k in range(days)]
    pv = np.concatenate([p.pv_kw for p in parts])[offset : offset + n]  # concatenate copies: callers own it
    ghi = np.concatenate([p.ghi for p in parts])[offset : offset + n]
    return ClearSky(pv_kw=pv, ghi=ghi)


def cache_info() -> functools._CacheInfo:
    """Hits, misses and size of the day cache (for tests and the bench)."""
    return _day.cache_info()


def cache_clear() -> None:
    _day.cache_clear()


__all__ = ["SKY_CACHE_DAYS", "cache_clear", "cache_info", "clear_sky_cached"]
