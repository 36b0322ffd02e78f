"""The planner's clear-sky day cache (cloud/sky_cache.py): the same numbers as pvlib over the whole window,
computed once per day, so a re-plan 15 minutes later (or a DR re-plan) costs at most one new day of pvlib."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pvlib
import pytest

from cloud import sky_cache
from cloud.forecast import Location, PvArray, clear_sky
from cloud.sky_cache import clear_sky_cached

STEP = timedelta(minutes=15)
LOC = Location(52.1, 5.18, 2.0)
ARRAYS = (PvArray(4.0), PvArray(2.5, tilt_deg=20.0, azimuth_deg=95.0))


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    sky_cache.cache_clear()


@pytest.mark.parametrize(
    ("start", "n"),
    [
        (datetime(2026, 6, 1, 12, 0, tzinfo=UTC), 14 * 96 + 130),  # the planner's window: 14 days + horizon
        (datetime(2026, 12, 31, 23, 45, tzinfo=UTC), 200),  # across the year's end
        (datetime(2026, 3, 29, 0, 15, tzinfo=UTC), 5),  # a few slots inside one day (DST day in Europe)
    ],
)
def test_cached_window_equals_pvlib_over_the_whole_window_bit_for_bit(start: datetime, n: int) -> None:
    direct = clear_sky(LOC, ARRAYS, start, STEP, n)
    for _ in range(2):  # cold, then from the cache
        cached = clear_sky_cached(LOC, ARRAYS, start, STEP, n)
        assert len(cached.pv_kw) == n and len(cached.ghi) == n
        assert np.array_equal(cached.pv_kw, direct.pv_kw)
        assert np.array_equal(cached.ghi, direct.ghi)
    assert direct.pv_kw.max() > 0 or n < 10


def test_a_replan_15_minutes_later_computes_no_day_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = pvlib.location.Location.get_solarposition

    def counting(self: pvlib.location.Location, times: object, *args: object, **kwargs: object) -> object:
        calls.append(len(times))  # type: ignore[arg-type]
        return real(self, times, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pvlib.location.Location, "get_solarposition", counting)
    start = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    clear_sky_cached(LOC, ARRAYS, start - STEP * 14 * 96, STEP, 14 * 96 + 130)
    first = sum(calls)
    assert first <= 17 * 96 * 2  # whole days only (clear sky and transposition each ask once per day)
    calls.clear()
    later = start + STEP
    clear_sky_cached(LOC, ARRAYS, later - STEP * 14 * 96, STEP, 14 * 96 + 130)
    assert calls == []  # the same days: nothing recomputed
    clear_sky_cached(LOC, ARRAYS, start + timedelta(days=1) - STEP * 14 * 96, STEP, 14 * 96 + 130)
    assert sum(calls) <= 2 * 96  # a day later: one new day
    info = sky_cache.cache_info()
    assert info.hits > 0 and info.currsize <= sky_cache.SKY_CACHE_DAYS


def test_other_location_or_arrays_are_other_days() -> None:
    start = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)
    a = clear_sky_cached(LOC, ARRAYS, start, STEP, 96)
    b = clear_sky_cached(Location(40.4, -3.7), ARRAYS, start, STEP, 96)
    c = clear_sky_cached(LOC, ARRAYS[:1], start, STEP, 96)
    assert not np.array_equal(a.pv_kw, b.pv_kw) and not np.array_equal(a.pv_kw, c.pv_kw)
    assert np.array_equal(b.pv_kw, clear_sky(Location(40.4, -3.7), ARRAYS, start, STEP, 96).pv_kw)
    assert sky_cache.cache_info().currsize == 3


def test_callers_own_their_arrays_and_cannot_change_the_cache() -> None:
    start = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)
    first = clear_sky_cached(LOC, ARRAYS, start, STEP, 96)
    first.pv_kw[:] = -1.0
    again = clear_sky_cached(LOC, ARRAYS, start, STEP, 96)
    assert np.array_equal(again.pv_kw, clear_sky(LOC, ARRAYS, start, STEP, 96).pv_kw)


def test_a_grid_that_does_not_tile_a_day_goes_uncached() -> None:
    start = datetime(2026, 6, 1, 0, 7, tzinfo=UTC)  # off the 15-minute grid
    off = clear_sky_cached(LOC, ARRAYS, start, STEP, 50)
    assert np.array_equal(off.pv_kw, clear_sky(LOC, ARRAYS, start, STEP, 50).pv_kw)
    odd = timedelta(minutes=7)  # does not divide a day
    assert np.array_equal(
        clear_sky_cached(LOC, ARRAYS, start, odd, 50).pv_kw, clear_sky(LOC, ARRAYS, start, odd, 50).pv_kw
    )
    assert sky_cache.cache_info().currsize == 0
