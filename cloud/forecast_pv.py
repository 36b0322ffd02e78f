"""A PV site model fitted to the site's own telemetry (pvlib), and the PV forecaster built on it.

The registered arrays (kWp, tilt, azimuth) are what the installer typed, often wrong or missing. The
telemetry knows better: on clear days the measured output has the shape of the clear-sky irradiance on the
real plane, scaled by the real effective kWp, cut by the inverter's limit and dented where a chimney or a tree
shades the modules. `fit_pv_site` recovers those from history:

* **orientation**: for every candidate plane (tilt 0-60 degrees, any azimuth; a 10° x 30° grid, then two finer
  grids around the best, down to 1° x 2.5°) the clear-sky plane-of-array irradiance (pvlib: Ineichen
  clear sky, isotropic sky diffuse, ground reflection) is fitted to each day by one scale factor; the plane
  whose clear days (the brightest 40 %, and of those the better-fitting half) are fitted best wins. A
  cloudy day fits no plane well, so it never decides; the shape of a clear day does (east shifts the peak
  to the morning, tilt widens or narrows the day and moves energy between seasons);
* **effective kWp**: the median scale factor of those clear days (soiling, module temperature, wiring and
  inverter losses included);
* **clipping**: a plateau at the top of the measured values (the inverter's AC limit) becomes a cap, and the
  plateau's slots are left out of the orientation fit;
* **shading by hour**: per solar hour of day, the median of measured / clear-sky model on the clear days
  (0..1.2; 1 where there is too little data);
* **typical factor**: the median daily ratio of measured to modelled clear-sky energy, the expected
  cloudiness when no weather forecast is configured (like `learn_pv_factor`).

Forecast: kWp x POA_clear / 1000 x shade(hour) x (typical factor, or the weather forecast's dimming),
capped at the clipping limit. Cold start (`PvSiteModel.default`): the registered arrays with the default
factors, no shading, no cap. The model is a handful of numbers (`to_json`/`from_json`), so it is cheap to
store per site.

Fitting uses numpy broadcasting over all candidate planes at once (pvlib's vectorised irradiance functions),
about 20 ms for two weeks of 15-minute slots, so the backtest can refit it every week of a year.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

import msgspec
import numpy as np
import numpy.typing as npt
import pandas as pd
import pvlib

from cloud.forecast import (
    DEFAULT_FACTOR_CLEAR,
    DEFAULT_FACTOR_TYPICAL,
    FloatArray,
    Location,
    PvArray,
)

ALBEDO: Final = 0.2
_MIN_POA: Final = 60.0  # W/m²: slots below this are dawn/dusk noise for the fit
_MIN_DAY_SLOTS: Final = 6  # a day needs this many sunny slots to be fitted
_MIN_DAYS: Final = 4  # fewer usable days than this: keep the default model
_SHADE_BOUNDS: Final = (0.0, 1.2)
_SHADE_REFIT: Final = 0.15  # an hour this far from 1 is left out of a second orientation fit
_TYPICAL_BOUNDS: Final = (0.05, 1.2)
_KWP_PER_REGISTERED: Final = (0.05, 3.0)  # a fitted kWp outside this x the registered one is not believed
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
TILTS: Final = tuple(range(0, 61, 10))
AZIMUTHS: Final = tuple(range(0, 360, 30))


@dataclass(frozen=True, slots=True)
class SkyGrid:
    """Sun and clear sky at the midpoints of a regular slot grid (computed once, sliced per forecast)."""

    start: datetime
    step: timedelta
    zenith: FloatArray  # apparent zenith, degrees
    azimuth: FloatArray  # sun azimuth, degrees (pvlib: 180 = south)
    ghi: FloatArray
    dni: FloatArray
    dhi: FloatArray
    solar_hour: IntArray  # 0..23, hour of the local solar day (longitude, not the clock: no DST jumps)

    @classmethod
    def compute(cls, location: Location, start: datetime, step: timedelta, n: int) -> SkyGrid:
        times = pd.date_range(start.astimezone(UTC) + step / 2, periods=n, freq=step)
        site = pvlib.location.Location(location.lat, location.lon, tz="UTC", altitude=location.altitude_m)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*dayofyear is deprecated")
            sky = site.get_clearsky(times, model="ineichen")
            sun = site.get_solarposition(times)
        hours = (times.hour + times.minute / 60.0 + location.lon / 15.0) % 24.0

        def col(frame: pd.DataFrame, name: str) -> FloatArray:
            return np.asarray(np.nan_to_num(frame[name].to_numpy(dtype=np.float64)), dtype=np.float64)

        return cls(
            start=start,
            step=step,
            zenith=col(sun, "apparent_zenith"),
            azimuth=col(sun, "azimuth"),
            ghi=np.clip(col(sky, "ghi"), 0.0, None),
            dni=np.clip(col(sky, "dni"), 0.0, None),
            dhi=np.clip(col(sky, "dhi"), 0.0, None),
            solar_hour=np.asarray(np.floor(hours), dtype=np.int64) % 24,
        )

    @property
    def n(self) -> int:
        return len(self.ghi)

    @property
    def slots_per_day(self) -> int:
        return int(timedelta(days=1) // self.step)

    def poa(self, tilt: FloatArray | float, azimuth: FloatArray | float, a: int, b: int) -> FloatArray:
        """Clear-sky plane-of-array irradiance (W/m²) for slots a..b-1; tilt/azimuth may be (C, 1) arrays."""
        z, s = self.zenith[a:b], self.azimuth[a:b]
        proj = np.clip(pvlib.irradiance.aoi_projection(tilt, azimuth, z, s), 0.0, None)
        beam = self.dni[a:b] * proj * (z < 90.0)
        diffuse = pvlib.irradiance.isotropic(tilt, self.dhi[a:b])
        ground = pvlib.irradiance.get_ground_diffuse(tilt, self.ghi[a:b], albedo=ALBEDO)
        return np.asarray(np.clip(beam + diffuse + ground, 0.0, None), dtype=np.float64)


class PvSiteModel(msgspec.Struct, frozen=True):
    """One fitted plane standing for the whole installation (what the site behaves like, not its drawing)."""

    tilt_deg: float
    azimuth_deg: float
    kwp: float  # effective: kW at 1000 W/m² on the plane, all losses included
    clip_kw: float | None = None
    shade: list[float] = msgspec.field(default_factory=lambda: [1.0] * 24)
    typical: float = DEFAULT_FACTOR_TYPICAL
    days: int = 0  # days of telemetry the fit used (0: the default from the registration)
    residual: float = math.nan  # relative RMS residual on the clear days (fit quality)

    @classmethod
    def default(cls, arrays: list[PvArray]) -> PvSiteModel:
        """Cold start: the registered arrays as one plane (kWp-weighted), the default clear-day factor."""
        total = sum(a.kwp for a in arrays)
        if total <= 0:
            return cls(tilt_deg=30.0, azimuth_deg=180.0, kwp=0.0)
        tilt = sum(a.tilt_deg * a.kwp for a in arrays) / total
        # mean direction of the azimuths (a south-east and a south-west array average to south)
        x = sum(a.kwp * math.cos(math.radians(a.azimuth_deg)) for a in arrays)
        y = sum(a.kwp * math.sin(math.radians(a.azimuth_deg)) for a in arrays)
        az = math.degrees(math.atan2(y, x)) % 360.0 if abs(x) + abs(y) > 1e-9 else 180.0
        return cls(tilt_deg=tilt, azimuth_deg=az, kwp=total * DEFAULT_FACTOR_CLEAR)

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def from_json(cls, data: bytes) -> PvSiteModel:
        model = msgspec.json.decode(data, type=cls)
        numbers = [model.tilt_deg, model.azimuth_deg, model.kwp, model.typical, *model.shade]
        if len(model.shade) != 24 or not all(math.isfinite(x) for x in numbers) or model.kwp < 0:
            raise ValueError("stored PV model out of range")
        return model

    def clear_kw(self, sky: SkyGrid, a: int, b: int) -> FloatArray:
        """Clear-sky output of the site for slots a..b-1 (shading and clipping included, no clouds)."""
        poa = sky.poa(self.tilt_deg, self.azimuth_deg, a, b)
        out = self.kwp * poa / 1000.0 * np.asarray(self.shade)[sky.solar_hour[a:b]]
        if self.clip_kw is not None:
            out = np.minimum(out, self.clip_kw)
        return np.asarray(out, dtype=np.float64)

    def forecast(self, sky: SkyGrid, a: int, b: int, dimming: FloatArray | None = None) -> FloatArray:
        """PV kW for slots a..b-1: clear sky x the typical factor, or x the weather forecast's dimming."""
        poa = sky.poa(self.tilt_deg, self.azimuth_deg, a, b)
        factor = self.typical if dimming is None else dimming
        out = self.kwp * poa / 1000.0 * np.asarray(self.shade)[sky.solar_hour[a:b]] * factor
        if self.clip_kw is not None:
            out = np.minimum(out, self.clip_kw)
        return np.asarray(np.clip(out, 0.0, None), dtype=np.float64)


@dataclass(slots=True)
class _DayFit:
    k: FloatArray  # (C, D) per candidate and day: the scale factor
    err: FloatArray  # (C, D) relative RMS residual (inf for an unusable day)


def _fit_days(m: FloatArray, poa: FloatArray, use: BoolArray, spd: int) -> _DayFit:
    """m (S,), poa (C, S), use (S,) bool; S = D * spd. Least-squares scale per candidate and day."""
    c, s = poa.shape
    d = s // spd
    mm = np.where(use, m, 0.0).reshape(d, spd)
    pp = np.where(use[None, :], poa, 0.0).reshape(c, d, spd)
    count = use.reshape(d, spd).sum(axis=1)
    num = np.einsum("cds,ds->cd", pp, mm)
    den = np.einsum("cds,cds->cd", pp, pp)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = num / den
        resid = mm[None, :, :] - k[:, :, None] * pp
        sq = np.where(use.reshape(d, spd)[None, :, :], resid**2, 0.0).sum(axis=2)
        mean_m = mm.sum(axis=1) / np.maximum(count, 1)
        err = np.sqrt(sq / np.maximum(count, 1)) / mean_m[None, :]
    bad = (count < _MIN_DAY_SLOTS) | (mean_m <= 0)
    err = np.where(bad[None, :] | ~np.isfinite(err) | (k <= 0), np.inf, err)
    return _DayFit(k=k, err=err)


def _clear_days(k: FloatArray, err: FloatArray) -> BoolArray:
    """(C, D) mask of each candidate's clear days: the brightest days (top 40 % by scale), and of those the
    better-fitting half. Brightness alone would take a hazy bright day, shape alone a uniformly overcast one."""
    usable = np.isfinite(err)
    n_use = usable.sum(axis=1, keepdims=True)
    kk = np.where(usable, k, -np.inf)
    rank_k = np.argsort(np.argsort(-kk, axis=1), axis=1)  # 0 = brightest
    bright = usable & (rank_k < np.maximum(1, np.ceil(n_use * 0.4)))
    ee = np.where(bright, err, np.inf)
    rank_e = np.argsort(np.argsort(ee, axis=1), axis=1)
    n_bright = bright.sum(axis=1, keepdims=True)
    return np.asarray(bright & (rank_e < np.maximum(1, np.ceil(n_bright * 0.5))), dtype=np.bool_)


def _score(fit: _DayFit) -> FloatArray:
    """Per candidate: the mean relative residual over its clear days."""
    clear = _clear_days(fit.k, fit.err)
    return np.asarray(np.where(clear, fit.err, 0.0).sum(axis=1) / np.maximum(clear.sum(axis=1), 1), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class FitInput:
    """Aligned history: measured PV kW per slot of `sky` slots a..a+len(measured)-1 (whole days, NaN = none)."""

    measured_kw: FloatArray
    a: int
    registered: list[PvArray] = field(default_factory=list)


def fit_pv_site(sky: SkyGrid, history: FitInput) -> PvSiteModel:
    """Fit orientation, effective kWp, clipping, hourly shading and the typical factor (see the module doc)."""
    default = PvSiteModel.default(history.registered)
    spd = sky.slots_per_day
    days = len(history.measured_kw) // spd
    if days < _MIN_DAYS:
        return default
    a = history.a
    b = a + days * spd
    m = np.asarray(history.measured_kw[-days * spd :], dtype=np.float64)
    known = np.isfinite(m)
    m = np.where(known, m, 0.0)
    daylight = (sky.ghi[a:b] > _MIN_POA) & (sky.zenith[a:b] < 85.0)
    # a day counts if every daylight slot was measured (inverters go quiet at night: NaN there is fine)
    day_complete = np.repeat((known | ~daylight).reshape(days, spd).all(axis=1), spd)
    sunny = daylight & day_complete
    if m[sunny].max(initial=0.0) <= 0.0:
        return default
    clip = _clip_level(m[sunny])
    use = sunny & (m < 0.95 * clip if clip is not None else True)  # near the cap the truth is hidden

    hours = sky.solar_hour[a:b]
    registered = sum(x.kwp for x in history.registered)
    plane = _fit_plane(sky, m, use, spd, a, b)
    if plane is None:
        return default
    shade = _hourly_shade(m, plane.model_kw, plane.unclipped(use, clip), plane.clear_days, spd, hours)
    # A shadow bends the orientation fit towards planes that are dark at that hour: fit again without the
    # shaded hours, then measure the shading against the clean plane.
    shaded_hours = [h for h, f in enumerate(shade) if abs(f - 1.0) > _SHADE_REFIT]
    if shaded_hours:
        again = _fit_plane(sky, m, use & ~np.isin(hours, shaded_hours), spd, a, b)
        if again is not None:
            plane = again
            shade = _hourly_shade(m, plane.model_kw, plane.unclipped(use, clip), plane.clear_days, spd, hours)
    if registered > 0 and not _KWP_PER_REGISTERED[0] <= plane.kwp / registered <= _KWP_PER_REGISTERED[1]:
        return default
    shaded = plane.model_kw * np.asarray(shade)[hours]
    if clip is not None:
        shaded = np.minimum(shaded, clip)
    typical = _typical(m, shaded, sunny, spd)
    return PvSiteModel(
        tilt_deg=round(plane.tilt, 1),
        azimuth_deg=round(plane.azimuth % 360.0, 1),
        kwp=round(plane.kwp, 4),
        clip_kw=None if clip is None else round(clip, 4),
        shade=[round(x, 3) for x in shade],
        typical=round(typical, 4),
        days=int(plane.ok.sum()),
        residual=round(float(np.mean(plane.err[plane.clear_days])), 4),
    )


@dataclass(frozen=True, slots=True)
class _Plane:
    tilt: float
    azimuth: float
    kwp: float
    model_kw: FloatArray  # unshaded, unclipped clear-sky kW on the history slots
    err: FloatArray  # per day
    ok: BoolArray  # per day: usable
    clear_days: IntArray

    def unclipped(self, use: BoolArray, clip: float | None) -> BoolArray:
        return use if clip is None else use & (self.model_kw < 0.95 * clip)


def _fit_plane(sky: SkyGrid, m: FloatArray, use: BoolArray, spd: int, a: int, b: int) -> _Plane | None:
    """The best plane (coarse to fine: every 10° of tilt and 30° of azimuth, then two finer grids around
    the best) and its effective kWp from the clear days; None when too few days are usable."""
    mt, ma = np.meshgrid(np.asarray(TILTS, dtype=np.float64), np.asarray(AZIMUTHS, dtype=np.float64), indexing="ij")
    best_t, best_a = _best(sky, m, use, spd, a, b, mt.ravel()[:, None], ma.ravel()[:, None])
    for dt, da in ((3.0, 10.0), (1.0, 2.5)):
        ft = np.unique(np.clip(best_t + dt * np.arange(-3.0, 4.0), 0.0, 90.0))
        fa = (best_a + da * np.arange(-3.0, 4.0)) % 360.0
        mt, ma = np.meshgrid(ft, fa, indexing="ij")
        best_t, best_a = _best(sky, m, use, spd, a, b, mt.ravel()[:, None], ma.ravel()[:, None])
    poa = sky.poa(best_t, best_a, a, b)
    fit = _fit_days(m, poa[None, :], use, spd)
    ok = np.isfinite(fit.err[0])
    if ok.sum() < _MIN_DAYS:
        return None
    clear_days = np.flatnonzero(_clear_days(fit.k, fit.err)[0])
    kwp = 1000.0 * float(np.median(fit.k[0, clear_days]))  # k is kW per W/m²
    return _Plane(best_t, best_a, kwp, kwp * poa / 1000.0, fit.err[0], ok, clear_days)


def _best(
    sky: SkyGrid, m: FloatArray, use: BoolArray, spd: int, a: int, b: int, cand_t: FloatArray, cand_a: FloatArray
) -> tuple[float, float]:
    poa = sky.poa(cand_t, cand_a, a, b)
    score = _score(_fit_days(m, poa, use, spd))
    i = int(np.argmin(score))
    return float(cand_t[i, 0]), float(cand_a[i, 0])


def _clip_level(sunny_m: FloatArray) -> float | None:
    """The inverter limit if the top of the measured values is a plateau: many slots within 1.5 % of the top
    (the 99.5th percentile, so that one spike of a cloud edge does not set the level)."""
    if len(sunny_m) < 50:
        return None
    top = float(np.quantile(sunny_m, 0.995))
    near = int((np.abs(sunny_m - top) <= 0.015 * top).sum())
    # an unclipped array touches its maximum in a few slots; a clipped one sits on it for hours
    return top if near >= max(8, 0.02 * len(sunny_m)) else None


def _hourly_shade(
    m: FloatArray,
    model_kw: FloatArray,
    use: BoolArray,
    clear_days: IntArray,
    spd: int,
    hours: IntArray,
) -> list[float]:
    days = len(m) // spd
    on_clear = np.zeros(days, dtype=bool)
    on_clear[clear_days] = True
    sel = use & np.repeat(on_clear, spd) & (model_kw > 0)
    lo, hi = _SHADE_BOUNDS
    out = []
    for h in range(24):
        s = sel & (hours == h)
        if s.sum() < 3:
            out.append(1.0)
            continue
        out.append(float(np.clip(np.median(m[s] / model_kw[s]), lo, hi)))
    return out


def _typical(m: FloatArray, clear_kw: FloatArray, sunny: BoolArray, spd: int) -> float:
    days = len(m) // spd
    mm = np.where(sunny, m, 0.0).reshape(days, spd).sum(axis=1)
    cc = np.where(sunny, clear_kw, 0.0).reshape(days, spd).sum(axis=1)
    ok = cc > 0
    if not ok.any():
        return DEFAULT_FACTOR_TYPICAL
    lo, hi = _TYPICAL_BOUNDS
    return float(np.clip(np.median(mm[ok] / cc[ok]), lo, hi))


def relearn_typical(model: PvSiteModel, sky: SkyGrid, measured_kw: FloatArray, a: int) -> PvSiteModel:
    """The model with its typical factor learned again from `measured_kw` (whole days, sky slots a..),
    against the model's own clear-sky output: the weather regime moves faster than the geometry."""
    spd = sky.slots_per_day
    days = len(measured_kw) // spd
    if model.days == 0 or days == 0:
        return model
    b = a + days * spd
    m = measured_kw[len(measured_kw) - days * spd :]
    sunny = (sky.ghi[a:b] > _MIN_POA) & np.isfinite(m)
    typical = _typical(np.nan_to_num(m), model.clear_kw(sky, a, b), sunny, spd)
    return msgspec.structs.replace(model, typical=round(typical, 4))


class PvSiteForecaster:
    """Rolling use of the site model (the backtest; the planner stores the model per site instead).

    The geometry (orientation, kWp, clipping, shading) is refitted from the last `history_days` every
    `refit_days`: it changes only when the site does. The typical factor (the weather the site usually has)
    is relearned every day from the last `typical_days` against the fitted clear-sky model, as the weather
    regime moves faster. `forecast(measured, now, horizon)` sees measured[:now] only (absolute slot indices
    of `sky`); until `min_days` of history exist it forecasts with the default model of the registration.
    """

    def __init__(
        self,
        sky: SkyGrid,
        registered: list[PvArray],
        *,
        history_days: int = 28,
        refit_days: int = 7,
        min_days: int = 7,
        typical_days: int = 14,
    ) -> None:
        self.sky = sky
        self.registered = registered
        self.history_days, self.refit_days, self.min_days = history_days, refit_days, min_days
        self.typical_days = typical_days
        self.model = PvSiteModel.default(registered)
        self.fitted_day = -(10**9)
        self.typical_day = -(10**9)

    def refit(self, measured: FloatArray, now: int) -> PvSiteModel:
        spd = self.sky.slots_per_day
        end = (now // spd) * spd  # whole days only
        start = max(0, end - self.history_days * spd)
        if (end - start) // spd >= self.min_days:
            self.model = fit_pv_site(self.sky, FitInput(measured[start:end], start, self.registered))
        self.fitted_day = now // spd
        return self.model

    def _relearn_typical(self, measured: FloatArray, now: int) -> None:
        spd = self.sky.slots_per_day
        end = (now // spd) * spd
        start = max(0, end - self.typical_days * spd)
        self.typical_day = now // spd
        self.model = relearn_typical(self.model, self.sky, measured[start:end], start)

    def forecast(self, measured: FloatArray, now: int, horizon: int, dimming: FloatArray | None = None) -> FloatArray:
        day = now // self.sky.slots_per_day
        if day - self.fitted_day >= self.refit_days:
            self.refit(measured, now)
        if day != self.typical_day:
            self._relearn_typical(measured, now)
        b = min(now + horizon, self.sky.n)
        out = np.zeros(horizon)
        out[: b - now] = self.model.forecast(self.sky, now, b, None if dimming is None else dimming[: b - now])
        return out


__all__ = ["FitInput", "PvSiteForecaster", "PvSiteModel", "SkyGrid", "fit_pv_site", "relearn_typical"]
