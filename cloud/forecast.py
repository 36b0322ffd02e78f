"""Forecasts of a site's PV output and load, on the planner's slot grid.

PV = clear-sky output of the site's arrays (pvlib: Ineichen clear sky, isotropic transposition onto each
array's plane) × a per-site factor learned from the site's own telemetry × (optionally) a weather dimming.
The factor absorbs what a site model never knows exactly: real kWp, shading, soiling, inverter clipping,
a wrong tilt in the registration. It is learned as the ratio of measured to clear-sky daily energy:

* `typical` (the days' measured energy over their clear-sky energy, i.e. the mean day): the expected output
  when no weather forecast is configured; it already contains the site's usual cloudiness, so it must not be
  combined with a weather forecast. The mean, not the median: a plan's costs add up over the days, so it
  must plan on the average day. Daily ratios are skewed (in winter a few bright days among dark ones lift
  the mean above the median): planned on the median, the forecast was 6.6 % below the measured PV of the
  Konstanz house over a year (docs/cloud-planning.md);
* `clear` (80th percentile of the daily ratios): the output on a clear day, which a weather forecast's
  dimming then scales down. Using the median there would count the clouds twice.

Only complete days count (a meter gap is left out, it would look like a dark day); a day of snow or an
outage with the meter running is real output and counts.

Load = same weekday and time of day over the past weeks (household load is weekly-periodic), blended with
the recent level: the ratio of the last hours' measured load to what the profile said for those hours is
applied fully now and fades out with a few hours' time constant (a party tonight says little about
tomorrow).

Everything here is numpy on regular grids, with NaN for a missing slot, so the backtest can call it for
every hourly re-plan of a year.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

import httpx
import msgspec
import numpy as np
import pandas as pd
import pvlib

from cloud.forecast_load import (
    FloatArray,
    GbmLoadForecaster,
    LoadQuantiles,
    forecast_load,
    forecast_load_persistence,
)
from cloud.planner_settings import DEFAULT_WEATHER_TIMEOUT_S as DEFAULT_TIMEOUT_S
from cloud.planner_settings import OPEN_METEO_URL
from cloud.quantile import linear_quantiles

# Daily ratios are only meaningful on days with real sun to measure against.
_MIN_CLEAR_KWH_PER_KWP: Final = 0.5
_FACTOR_BOUNDS: Final = (0.02, 1.5)
DEFAULT_FACTOR_TYPICAL: Final = 0.6
DEFAULT_FACTOR_CLEAR: Final = 0.85
_MIN_GHI_CLEAR: Final = 20.0  # W/m²: below this the weather ratio is noise (dawn, dusk)


@dataclass(frozen=True, slots=True)
class Location:
    lat: float
    lon: float
    altitude_m: float = 0.0


@dataclass(frozen=True, slots=True)
class PvArray:
    """One plane of modules. azimuth in pvlib's convention: 180 = south, 90 = east."""

    kwp: float
    tilt_deg: float = 30.0
    azimuth_deg: float = 180.0


@dataclass(frozen=True, slots=True)
class PvFactor:
    typical: float = DEFAULT_FACTOR_TYPICAL
    clear: float = DEFAULT_FACTOR_CLEAR
    days: int = 0  # days the factor was learned from (0: defaults)


# --- clear sky ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClearSky:
    """Clear-sky PV power (kW, before the learned factor) and GHI (W/m²) per slot."""

    pv_kw: FloatArray
    ghi: FloatArray


def clear_sky(location: Location, arrays: Sequence[PvArray], start: datetime, step: timedelta, n: int) -> ClearSky:
    """Evaluated at slot midpoints, so a slot's value is (close to) its mean power."""
    times = pd.date_range(start.astimezone(UTC) + step / 2, periods=n, freq=step)
    site = pvlib.location.Location(location.lat, location.lon, tz="UTC", altitude=location.altitude_m)
    with warnings.catch_warnings():
        # pvlib 0.16 on pandas 3 uses a deprecated DatetimeIndex attribute; harmless and not ours to fix.
        warnings.filterwarnings("ignore", message=".*dayofyear is deprecated")
        sky = site.get_clearsky(times, model="ineichen")
    ghi = sky["ghi"].to_numpy(dtype=np.float64)
    total = np.zeros(n, dtype=np.float64)
    if arrays:
        sun = site.get_solarposition(times)
        for a in arrays:
            poa = pvlib.irradiance.get_total_irradiance(
                surface_tilt=a.tilt_deg,
                surface_azimuth=a.azimuth_deg,
                solar_zenith=sun["apparent_zenith"],
                solar_azimuth=sun["azimuth"],
                dni=sky["dni"],
                ghi=sky["ghi"],
                dhi=sky["dhi"],
                model="isotropic",
            )
            total += a.kwp * np.nan_to_num(poa["poa_global"].to_numpy(dtype=np.float64)) / 1000.0
    return ClearSky(pv_kw=np.clip(total, 0.0, None), ghi=np.clip(np.nan_to_num(ghi), 0.0, None))


def _daily_energy(
    measured_kw: FloatArray, clear_kw: FloatArray, slots_per_day: int, kwp: float
) -> tuple[FloatArray, FloatArray]:
    """(measured, clear-sky) energy of the usable whole days (oldest first): complete over the sunlit slots
    (a telemetry gap would look like a dark day) and with enough clear-sky energy to measure against."""
    days = len(measured_kw) // slots_per_day
    if days == 0 or kwp <= 0:
        return np.zeros(0), np.zeros(0)
    usable = days * slots_per_day
    m = measured_kw[-usable:].reshape(days, slots_per_day)
    c = clear_kw[-usable:].reshape(days, slots_per_day)
    sunny = c > 0.02 * kwp
    complete = (~np.isnan(m) | ~sunny).all(axis=1)
    c_energy = np.where(sunny, c, 0.0).sum(axis=1)
    m_energy = np.where(sunny, np.nan_to_num(m), 0.0).sum(axis=1)
    ok = complete & (c_energy * 24.0 / slots_per_day >= _MIN_CLEAR_KWH_PER_KWP * kwp)
    return m_energy[ok], c_energy[ok]


def learn_pv_factor(measured_kw: FloatArray, clear_kw: FloatArray, slots_per_day: int, kwp: float) -> PvFactor:
    """Learn the site factor from aligned past series (whole days, oldest first; NaN = missing)."""
    m_energy, c_energy = _daily_energy(measured_kw, clear_kw, slots_per_day, kwp)
    if len(m_energy) == 0:
        return PvFactor()
    lo, hi = _FACTOR_BOUNDS
    typical = float(np.clip(m_energy.sum() / c_energy.sum(), lo, hi))  # the mean day: module docstring
    clear = float(np.clip(linear_quantiles(m_energy / c_energy, 0.8), lo, hi))
    return PvFactor(typical=typical, clear=max(clear, typical), days=len(m_energy))


@dataclass(frozen=True, slots=True)
class PvShape:
    """The site's own hour-of-day correction to the clear-sky shape, one factor per slot of the day.

    `factors[c]` is for the slots c, c + slots_per_day, ... counted from the END of the window it was learned
    on (so slot j after that end, j < 0 before it, takes `factors[j mod slots_per_day]`): the window may end at
    any time of day. 1 everywhere: the clear-sky shape as it is (`flat`)."""

    factors: FloatArray

    @classmethod
    def flat(cls, slots_per_day: int) -> PvShape:
        return cls(np.ones(slots_per_day))

    def at(self, offset: int, n: int) -> FloatArray:
        """Factors for the n slots starting `offset` slots after the learning window's end (negative: inside it)."""
        return np.asarray(self.factors[(offset + np.arange(n)) % len(self.factors)], dtype=np.float64)


_SHAPE_BOUNDS: Final = (0.0, 2.0)  # a slot of the day at most twice its clear-sky share (dawn/dusk noise)


def learn_pv_shape(
    measured_kw: FloatArray, clear_kw: FloatArray, slots_per_day: int, kwp: float, typical: float
) -> PvShape:
    """Per slot of the day: the window's measured energy over its forecast (clear sky x `typical`) energy.

    `learn_pv_factor` makes the forecast right for the window's whole days; a day total says nothing about
    WHEN in the day the energy comes. Where the clear-sky model of the registered arrays has the day's shape
    wrong (a morning shadow, low winter sun, the isotropic sky on a tilted plane, a plane turned further than
    registered), the forecast is too high at some hours and too low at others every day, and the intraday
    nowcast then reads a shaded morning's low ratio as clouds and carries it into the afternoon. Measured on the
    real houses (docs/cloud-planning.md, "PV forecast bias"): Konstanz in winter 6-15 kWh a month too high at
    09-11 h and too low by as much at 13-14 h; the Ausgrid house too high every morning, too low every
    afternoon. Learned from the same whole days as the factor (complete over their sunlit slots), so the
    window's total is unchanged: sum over slots of forecast x factor = measured. A slot of the day that is
    sunlit on fewer than half the days (dawn, dusk) keeps 1."""
    flat = PvShape.flat(slots_per_day)
    days = len(measured_kw) // slots_per_day
    if days == 0 or kwp <= 0 or typical <= 0:
        return flat
    m = measured_kw[len(measured_kw) - days * slots_per_day :].reshape(days, slots_per_day)
    c = clear_kw[len(clear_kw) - days * slots_per_day :].reshape(days, slots_per_day)
    sunny = c > 0.02 * kwp  # as in _daily_energy
    complete = (~np.isnan(m) | ~sunny).all(axis=1)
    enough = np.where(sunny, c, 0.0).sum(axis=1) * 24.0 / slots_per_day >= _MIN_CLEAR_KWH_PER_KWP * kwp
    usable = complete & enough  # the days `learn_pv_factor` uses (_daily_energy)
    m, c, sunny = m[usable], c[usable], sunny[usable]
    if len(m) == 0:
        return flat
    forecast = np.where(sunny, c, 0.0).sum(axis=0) * typical
    measured = np.where(sunny, np.nan_to_num(m), 0.0).sum(axis=0)
    use = (sunny.sum(axis=0) * 2 >= len(m)) & (forecast > 0)
    factors = np.ones(slots_per_day)
    factors[use] = np.clip(measured[use] / forecast[use], *_SHAPE_BOUNDS)
    return PvShape(factors)


def pv_ratio_spread(
    measured_kw: FloatArray, clear_kw: FloatArray, slots_per_day: int, kwp: float
) -> tuple[float, float]:
    """(P10, P90) of the recent days' measured / clear-sky energy, each over their mean (1, 1 without days).

    The day-to-day spread of the weather around `learn_pv_factor`'s typical day, from the same days: how much
    darker or brighter than the forecast a day may come out (the scenarios of cloud.optimizer_scenarios)."""
    m_energy, c_energy = _daily_energy(measured_kw, clear_kw, slots_per_day, kwp)
    mid = float(m_energy.sum() / c_energy.sum()) if len(m_energy) >= 3 else 0.0
    if mid <= 0.0:
        return 1.0, 1.0
    lo, hi = linear_quantiles(m_energy / c_energy, [0.1, 0.9])
    return float(lo) / mid, float(hi) / mid


def weather_dimming(
    clear_ghi: FloatArray, *, ghi: FloatArray | None = None, cloud_cover_pct: FloatArray | None = None
) -> FloatArray:
    """Fraction of clear-sky output the weather forecast lets through, per slot (NaN in input: 1).

    GHI is used when present (the model's own radiative transfer beats any cloud rule); otherwise the
    Kasten-Czeplak relation GHI/GHI_clear = 1 - 0.75 (cloud fraction)^3.4.
    """
    out = np.ones_like(clear_ghi)
    if ghi is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = ghi / clear_ghi
        use = (clear_ghi >= _MIN_GHI_CLEAR) & np.isfinite(ratio)
        out[use] = np.clip(ratio[use], 0.0, 1.2)
        return out
    if cloud_cover_pct is not None:
        cc = np.clip(np.nan_to_num(cloud_cover_pct, nan=0.0) / 100.0, 0.0, 1.0)
        out = 1.0 - 0.75 * cc**3.4
        out[np.isnan(cloud_cover_pct)] = 1.0
    return out


def forecast_pv(clear_kw: FloatArray, factor: PvFactor, dimming: FloatArray | None = None) -> FloatArray:
    if dimming is None:
        return clear_kw * factor.typical
    return clear_kw * factor.clear * dimming


# Intraday PV nowcast: how far back the measured/forecast ratio is taken, and how fast it fades ahead.
NOWCAST_RECENT_H: Final = 2.0
NOWCAST_TAU_H: Final = 3.0
NOWCAST_RATIO_BOUNDS: Final = (0.2, 1.6)
_NOWCAST_MIN_KWH_PER_KWP: Final = 0.05  # forecast energy in the recent window below this: no evidence (dawn, night)


def pv_nowcast(
    forecast_kw: FloatArray,
    recent_measured_kw: FloatArray,
    recent_forecast_kw: FloatArray,
    dt_h: float,
    kwp: float,
    *,
    tau_h: float = NOWCAST_TAU_H,
    ratio_bounds: tuple[float, float] = NOWCAST_RATIO_BOUNDS,
) -> FloatArray:
    """Scale the next hours' PV forecast by how the last hours came out against their own forecast.

    A day's weather is the PV forecast's largest error and a plan is re-made every hour, so what the last
    hours measured says more about the next few than a two-week factor: cloud cover persists for hours. The
    ratio measured / forecast over the recent window (NaN slots left out) is applied fully to the next slot
    and fades to 1 with time constant `tau_h`, like the load forecaster's recent level. No correction at
    night or dawn (too little forecast energy to measure against), or without measurements.

    `ratio_bounds` (lo <= 1 <= hi): the default's 1.6 cuts a bright winter hour, whose ratio to a typical factor
    of 0.3-0.5 is 2-3: most of the factor forecast's winter bias on the Konstanz house (docs/cloud-planning.md,
    "PV forecast bias"); raising it removes the bias but did not lower the cost there, so it stays.
    """
    lo, hi = ratio_bounds
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo <= 1.0 <= hi):
        raise ValueError(f"nowcast ratio bounds {ratio_bounds!r}: need finite 0 <= lo <= 1 <= hi")
    ok = ~np.isnan(recent_measured_kw) & ~np.isnan(recent_forecast_kw)
    expected = float(np.sum(recent_forecast_kw[ok])) * dt_h
    if kwp <= 0 or expected < _NOWCAST_MIN_KWH_PER_KWP * kwp:
        return forecast_kw
    ratio = float(np.clip(np.sum(recent_measured_kw[ok]) * dt_h / expected, lo, hi))
    fade = np.exp(-dt_h * np.arange(len(forecast_kw)) / tau_h)
    return np.asarray(forecast_kw * (1.0 + (ratio - 1.0) * fade), dtype=np.float64)


def mae(forecast: FloatArray, actual: FloatArray) -> tuple[float, int] | None:
    """Mean absolute error over the slots that have an actual value, and how many there were."""
    ok = ~np.isnan(actual) & ~np.isnan(forecast)
    count = int(ok.sum())
    if count == 0:
        return None
    return float(np.mean(np.abs(forecast[ok] - actual[ok]))), count


# --- Open-Meteo ---------------------------------------------------------------------------


class WeatherError(Exception):
    """The weather service failed or answered something unusable."""


class WeatherDataError(WeatherError):
    """The weather service answered, but with values that cannot be right (out of range, wrong length, not JSON)."""


# What an answer may hold: Open-Meteo forecasts at most 16 days of hours; cloud cover is a percentage; no
# irradiance on the ground beats ~1,400 W/m² (the solar constant 1,361 W/m² plus cloud enhancement) by much.
MAX_WEATHER_HOURS: Final = 16 * 24
MAX_WEATHER_BODY_BYTES: Final = 1 << 20
_VALUE_BOUNDS: Final = {"cloud_cover": (0.0, 100.0), "shortwave_radiation": (0.0, 1500.0)}


class _Hourly(msgspec.Struct):
    time: Annotated[list[str], msgspec.Meta(max_length=MAX_WEATHER_HOURS)]
    cloud_cover: list[float | None] | None = None
    shortwave_radiation: list[float | None] | None = None


class _OpenMeteoAnswer(msgspec.Struct):
    utc_offset_seconds: Annotated[int, msgspec.Meta(ge=-14 * 3600, le=14 * 3600)]
    hourly: _Hourly


@dataclass(frozen=True, slots=True)
class WeatherForecast:
    """Hourly values stamped at `times` (UTC). `ghi` is Open-Meteo's mean over the hour BEFORE its stamp."""

    times: tuple[datetime, ...]
    cloud_cover_pct: FloatArray | None
    ghi: FloatArray | None

    def on_grid(self, start: datetime, step: timedelta, n: int, kind: Literal["ghi", "cloud_cover"]) -> FloatArray:
        """Values for the slots of a grid; NaN outside the forecast."""
        values = self.ghi if kind == "ghi" else self.cloud_cover_pct
        out = np.full(n, np.nan)
        if values is None or not self.times:
            return out
        t0 = self.times[0]
        hour = timedelta(hours=1)
        for i in range(n):
            mid = start + step * i + step / 2
            # GHI: the stamp at the END of the hour that contains the slot's midpoint; cloud cover: nearest
            k = math.ceil((mid - t0) / hour) if kind == "ghi" else round((mid - t0) / hour)
            if 0 <= k < len(values):
                out[i] = values[k]
        return out


def parse_open_meteo(body: bytes) -> WeatherForecast:
    """Open-Meteo's forecast answer (https://open-meteo.com/en/docs, "JSON return object"), checked: hourly
    times one hour apart, each variable as long as the times and inside its physical range (null: missing)."""
    try:
        raw: Any = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise WeatherDataError(f"Open-Meteo: not JSON: {exc}") from None
    if isinstance(raw, dict) and raw.get("error"):
        raise WeatherError(f"Open-Meteo: {str(raw.get('reason', 'error'))[:200]}")
    try:
        answer = msgspec.convert(raw, type=_OpenMeteoAnswer)
    except msgspec.ValidationError as exc:
        raise WeatherDataError(f"Open-Meteo: unexpected answer: {exc}") from None
    offset = timedelta(seconds=answer.utc_offset_seconds)
    try:
        times = tuple(datetime.fromisoformat(t).replace(tzinfo=UTC) - offset for t in answer.hourly.time)
    except ValueError as exc:
        raise WeatherDataError(f"Open-Meteo: bad time: {exc}") from None
    if any(b - a != timedelta(hours=1) for a, b in itertools.pairwise(times)):
        raise WeatherDataError("Open-Meteo: hourly.time is not one value per hour")
    n = len(times)

    def arr(values: list[float | None] | None, name: str) -> FloatArray | None:
        if values is None:
            return None
        if len(values) != n:
            raise WeatherDataError(f"Open-Meteo: {name} has {len(values)} values for {n} times")
        out = np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
        lo, hi = _VALUE_BOUNDS[name]
        bad = ~np.isnan(out) & ~((out >= lo) & (out <= hi))  # inf and out of range; NaN only from null
        if bad.any():
            first = float(out[bad][0])
            raise WeatherDataError(f"Open-Meteo: {name} value {first} outside {lo:g}..{hi:g}")
        return out

    return WeatherForecast(
        times=times,
        cloud_cover_pct=arr(answer.hourly.cloud_cover, "cloud_cover"),
        ghi=arr(answer.hourly.shortwave_radiation, "shortwave_radiation"),
    )


class OpenMeteoClient:
    """Open-Meteo's forecast API; with `cache_s` > 0 a location's forecast is fetched at most once per
    `cache_s` (per worker; failures are not kept, so the next plan asks again)."""

    MAX_CACHED: Final = 10_000  # locations

    def __init__(
        self,
        *,
        base_url: str = OPEN_METEO_URL,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        cache_s: float = 0.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._base_url = base_url
        self._timeout_s = timeout_s
        self._timeout = httpx.Timeout(timeout_s)
        self._transport = transport
        self._cache_s = cache_s
        self._cache: dict[tuple[float, float, int], tuple[float, WeatherForecast]] = {}

    async def forecast(self, location: Location, *, days: int = 3) -> WeatherForecast:
        if self._cache_s <= 0:
            return await self._fetch(location, days)
        key = (round(location.lat, 3), round(location.lon, 3), days)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self._cache_s:
            return hit[1]
        wx = await self._fetch(location, days)
        if len(self._cache) >= self.MAX_CACHED:
            self._cache = {k: v for k, v in self._cache.items() if now - v[0] < self._cache_s}
            if len(self._cache) >= self.MAX_CACHED:
                self._cache.clear()
        self._cache[key] = (now, wx)
        return wx

    async def _fetch(self, location: Location, days: int) -> WeatherForecast:
        params: dict[str, str | int | float] = {
            "latitude": location.lat,
            "longitude": location.lon,
            "hourly": "cloud_cover,shortwave_radiation",
            "timezone": "GMT",
            "forecast_days": days,
        }
        try:  # the whole answer within the timeout: a server dripping a byte a second must not hold the plan
            async with (
                asyncio.timeout(self._timeout_s),
                httpx.AsyncClient(timeout=self._timeout, transport=self._transport) as client,
                client.stream("GET", self._base_url, params=params) as response,
            ):
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_WEATHER_BODY_BYTES:
                        raise WeatherDataError(f"Open-Meteo: answer over {MAX_WEATHER_BODY_BYTES} bytes")
        except (httpx.TimeoutException, TimeoutError):
            raise WeatherError(f"Open-Meteo: no answer within {self._timeout_s}s") from None
        except httpx.HTTPError as exc:
            raise WeatherError(f"Open-Meteo: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200 and b'"reason"' not in body[:2000]:
            raise WeatherError(f"Open-Meteo: HTTP {response.status_code}")
        return parse_open_meteo(bytes(body))


__all__ = [
    "NOWCAST_RATIO_BOUNDS",
    "NOWCAST_RECENT_H",
    "NOWCAST_TAU_H",
    "ClearSky",
    "FloatArray",
    "GbmLoadForecaster",
    "LoadQuantiles",
    "Location",
    "OpenMeteoClient",
    "PvArray",
    "PvFactor",
    "PvShape",
    "WeatherDataError",
    "WeatherError",
    "WeatherForecast",
    "clear_sky",
    "forecast_load",
    "forecast_load_persistence",
    "forecast_pv",
    "learn_pv_factor",
    "learn_pv_shape",
    "mae",
    "parse_open_meteo",
    "pv_nowcast",
    "pv_ratio_spread",
    "weather_dimming",
]
