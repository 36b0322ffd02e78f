"""Where a site is and how its PV behaves, from its own PV telemetry: for a site registered badly or not at all.

A trace (or a site) without a location gets De Bilt, 5 kWp, 35° south by default. For a house elsewhere the
clear-sky sun is then at the wrong longitude: a Sydney house's PV peaks at 02:00 UTC, De Bilt's sun at 11:40,
and every PV forecast has the wrong daily shape. The PV measurements carry the answer:

* **longitude** from the measured solar noon: the PV-weighted (circular) mean of the slots' solar clock time
  (UTC plus the equation of time) is the site's solar noon, 12:00 mean solar time at longitude
  15° x (12 h - noon UTC). A south (equator) facing array is symmetric about solar noon; an array turned
  east or west moves the centroid, and that shift lands in the estimate: the forecast's shape is then still
  the measured one, which is what a forecast needs;
* **latitude** from the shape of the clear days: for every candidate latitude (1° steps, -65..65) the
  horizontal clear-sky irradiance (Haurwitz) at that longitude is fitted to each solar day by one scale
  factor; the latitude whose clear days (the brightest 40 %, of those the better-fitting half, as
  cloud.forecast_pv picks them) fit best wins. The day's length and the sun's height carry it. A plane tilted
  by β towards the equator at latitude φ sees the sun as a horizontal one at φ - β (the same beam geometry),
  so the data determine that *equivalent* latitude, not φ and β apart: the estimate is a horizontal plane
  at φ - β, the forecast the same shape;
* **effective kWp**: the median clear-day scale, kW per 1000 W/m² of that horizontal clear sky.

Everything uses only the history it is given (the backtest passes the slots before a plan), so an estimate
is a forecast input like any other. numpy only (Spencer's declination and equation of time from pvlib):
a few milliseconds for four weeks of slots and all 131 candidate latitudes at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import numpy as np
import numpy.typing as npt
import pvlib

from cloud.forecast import FloatArray

LATITUDES: Final = tuple(float(x) for x in range(-64, 65, 2))  # PV is installed between these
_LAT_STEP: Final = 2.0
_COARSE: Final = 4  # the first pass tries every 4th latitude (8°), the second every one within 8° of its best
_MIN_DAYS: Final = 4  # solar days with measured PV needed for an estimate
_MIN_SUN_COS: Final = 0.02  # cos(zenith) below this: the sun is too low for the clear-sky shape to matter
_BRIGHT_SHARE: Final = 0.4  # as cloud.forecast_pv._clear_days: the brightest 40 % ...
_FIT_SHARE: Final = 0.5  # ... and of those the better-fitting half are a candidate's clear days
# Meinel's clear-sky beam: I0 x T^(AM^E) W/m² at air mass AM (the sun's path; a shape, not a weather model)
_MEINEL_I0: Final = 1353.0
_MEINEL_T: Final = 0.7
_MEINEL_E: Final = 0.678
_DIFFUSE_SHARE: Final = 0.1  # clear-sky diffuse as a share of the beam (the same textbook approximation)
TILTS: Final = (0.0, 15.0, 30.0, 45.0, 60.0)  # equator-facing tilts tried at each latitude
# an estimate this close to the last one keeps the forecasters as they are (one latitude step, 4 minutes of
# solar noon, a tenth of the kWp)
_SAME_LAT_DEG: Final = 2.0
_SAME_LON_DEG: Final = 1.0
_SAME_KWP_SHARE: Final = 0.1
# a registration is reported as disagreeing with the measured PV when its clear-sky solar noon is this far from
# the measured one (an array turned 90° moves it by about an hour) or its clear-sky peak this far from the
# measured peak (a kWp typed as W/1000 wrong by a factor, a second array not registered)
NOON_WARN_H: Final = 0.75
PEAK_WARN_RATIO: Final = (0.5, 1.5)
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class SiteEstimate:
    """What the PV telemetry says about the site: one equator-facing plane."""

    @property
    def azimuth(self) -> float:
        return 180.0 if self.lat >= 0.0 else 0.0

    def close_to(self, other: SiteEstimate) -> bool:
        """Too close to recompute a year's clear sky for (well inside the estimates' own week-to-week scatter)."""
        return (
            abs(self.lat - other.lat) <= _SAME_LAT_DEG
            and abs(self.lon - other.lon) <= _SAME_LON_DEG
            and self.tilt == other.tilt
            and abs(self.kwp - other.kwp) <= _SAME_KWP_SHARE * max(self.kwp, other.kwp)
        )

    lat: float  # degrees
    tilt: float  # degrees, facing the equator (azimuth 180 north of it, 0 south of it)
    lon: float  # degrees east, from the measured solar noon
    kwp: float  # effective kW at 1000 W/m² of horizontal clear sky (all losses included)
    noon_utc_h: float  # the measured solar noon, hours UTC (equation of time removed)
    days: int  # solar days with measurements used
    residual: float  # mean relative residual on the clear days (0: the clear-sky shape exactly)


@dataclass(frozen=True, slots=True)
class _Clock:
    """Per slot midpoint: hours since 1970 (UTC), the UTC hour of day, the sun's declination, the EoT in hours."""

    epoch_h: FloatArray
    utc_h: FloatArray
    declination: FloatArray  # radians
    eot_h: FloatArray


def _clock(start: datetime, step: timedelta, n: int) -> _Clock:
    origin = start.astimezone(UTC).replace(tzinfo=None)
    mid = np.datetime64(origin, "s") + (np.arange(n) * step.total_seconds() + step.total_seconds() / 2).astype(
        "timedelta64[s]"
    )
    epoch_h = mid.astype("int64").astype(np.float64) / 3600.0
    utc_h = np.mod(epoch_h, 24.0)
    doy = (mid.astype("datetime64[D]") - mid.astype("datetime64[Y]")).astype(np.int64) + 1
    declination = np.asarray(pvlib.solarposition.declination_spencer71(doy), dtype=np.float64)
    eot_h = np.asarray(pvlib.solarposition.equation_of_time_spencer71(doy), dtype=np.float64) / 60.0
    return _Clock(epoch_h, utc_h, declination, eot_h)


def measured_solar_noon(pv_kw: FloatArray, start: datetime, step: timedelta) -> float | None:
    """The PV-weighted circular mean of the slots' apparent solar clock (UTC + equation of time), hours UTC at
    longitude 0, i.e. the time of mean solar noon; None without measured PV. Circular, so a Sydney day that
    spans UTC midnight (20:00-08:00 UTC) has its centre at 02:00, not at 12:00."""
    w = np.nan_to_num(np.asarray(pv_kw, dtype=np.float64), nan=0.0)
    w = np.where(w > 0.0, w, 0.0)
    total = float(w.sum())
    if total <= 0.0:
        return None
    c = _clock(start, step, len(w))
    theta = 2.0 * math.pi * (c.utc_h + c.eot_h) / 24.0
    x, y = float(np.dot(w, np.cos(theta))), float(np.dot(w, np.sin(theta)))
    if math.hypot(x, y) < 1e-6 * total:  # output spread evenly over the clock: no noon to find
        return None
    return (math.atan2(y, x) * 24.0 / (2.0 * math.pi)) % 24.0


def solar_zone(lon: float) -> str:
    """The fixed-offset time zone of a longitude's mean solar time, to the hour (Etc/GMT-10 is UTC+10): where
    no time zone is registered, the one a site's clock most likely keeps (civil zones follow the sun to an
    hour or two; daylight saving is not guessed)."""
    offset = min(max(round(lon / 15.0), -12), 14)
    return "UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"


def _lon_from_noon(noon_utc_h: float) -> float:
    return (15.0 * (12.0 - noon_utc_h) + 180.0) % 360.0 - 180.0


def clear_shape(lat: FloatArray, tilt: FloatArray, lon: float, start: datetime, step: timedelta, n: int) -> FloatArray:
    """Clear-sky irradiance (W/m²) on an equator-facing plane, per candidate (lat[i], tilt[i]) (rows) and slot
    midpoint (columns): Meinel's beam (1353 x 0.7^(AM^0.678)) on the plane while the sun is above the horizon
    and above the plane, plus a tenth of it as isotropic sky diffuse. The horizon sets the day's length (the
    latitude), the plane the shape within it (latitude minus tilt)."""
    c = _clock(start, step, n)
    hour_angle = np.radians(15.0 * (c.utc_h + lon / 15.0 + c.eot_h - 12.0))
    phi = np.radians(np.asarray(lat, dtype=np.float64))[:, None]
    beta = np.radians(np.asarray(tilt, dtype=np.float64))[:, None]
    dec, cos_h = c.declination, np.cos(hour_angle)
    cos_z = np.sin(phi) * np.sin(dec) + np.cos(phi) * np.cos(dec) * cos_h
    plane = phi - np.sign(phi) * beta  # an equator-facing plane sees the sun as a horizontal one there
    cos_i = np.sin(plane) * np.sin(dec) + np.cos(plane) * np.cos(dec) * cos_h
    up = cos_z > _MIN_SUN_COS
    air_mass = 1.0 / np.maximum(cos_z, _MIN_SUN_COS)
    beam = _MEINEL_I0 * _MEINEL_T ** (air_mass**_MEINEL_E)
    poa = beam * np.maximum(cos_i, 0.0) + _DIFFUSE_SHARE * beam * (1.0 + np.cos(beta)) / 2.0
    return np.asarray(np.where(up, poa, 0.0), dtype=np.float64)


def infer_site(pv_kw: FloatArray, start: datetime, step: timedelta) -> SiteEstimate | None:
    """Longitude, equivalent latitude and effective kWp from measured PV (slot i starts at start + i x step;
    NaN = not measured), or None when fewer than `_MIN_DAYS` whole solar days with PV are in it."""
    m = np.asarray(pv_kw, dtype=np.float64)
    hour = timedelta(hours=1)
    if step < hour and hour % step == timedelta(0):  # hourly means carry the day's shape; 2-4x fewer slots
        r = hour // step
        m = m[: len(m) // r * r].reshape(-1, r).mean(axis=1)  # NaN in an hour: the hour is NaN
        step = hour
    noon = measured_solar_noon(m, start, step)
    if noon is None:
        return None
    lon = _lon_from_noon(noon)
    n = len(m)
    dt_h = step.total_seconds() / 3600.0
    spd = round(24.0 / dt_h)
    # whole solar days (local solar midnight to midnight): a UTC day would cut a far-east house's day in two
    c = _clock(start, step, n)
    day = np.floor((c.epoch_h + lon / 15.0) / 24.0).astype(np.int64)
    _, index, counts = np.unique(day, return_inverse=True, return_counts=True)
    nan_days = np.bincount(index, weights=np.isnan(m).astype(np.float64))
    whole = (counts[index] == spd) & (nan_days[index] == 0)
    if not whole.any():
        return None
    keep = np.flatnonzero(whole)  # whole days only, in order: reshaped to (days, slots of a day)
    days = len(keep) // spd
    mm = m[keep].reshape(days, spd)
    m2 = (mm * mm).sum(axis=1)
    usable = m2 > 0.0
    if usable.sum() < _MIN_DAYS:
        return None

    def fit(lats: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray, BoolArray, FloatArray]:
        """Per (latitude, tilt) candidate: the scale per day, the clear days, the mean clear-day residual."""
        lat_c, tilt_c = (np.asarray(x, dtype=np.float64).ravel() for x in np.meshgrid(lats, TILTS))
        g = clear_shape(lat_c, tilt_c, lon, start, step, n)[:, keep].reshape(len(lat_c), days, spd)
        num = np.einsum("cds,ds->cd", g, mm)
        gg = np.einsum("cds,cds->cd", g, g)
        with np.errstate(divide="ignore", invalid="ignore"):
            k = num / gg  # kW per W/m²
            cosine = num / np.sqrt(gg * m2[None, :])
        err = np.sqrt(np.clip(1.0 - cosine**2, 0.0, None))
        ok = usable[None, :] & np.isfinite(err) & (k > 0.0)
        clear = _clear_days(np.where(ok, k, -np.inf), np.where(ok, err, np.inf), ok)
        score = np.where(clear, err, 0.0).sum(axis=1) / np.maximum(clear.sum(axis=1), 1)
        score = np.asarray(np.where(clear.any(axis=1), score, np.inf), dtype=np.float64)
        return lat_c, tilt_c, np.asarray(k, dtype=np.float64), clear, score

    # coarse to fine: every 4th candidate latitude (8° apart), then every one within 8° of the best
    coarse = np.asarray(LATITUDES[::_COARSE], dtype=np.float64)
    lat_c, _, _, _, score = fit(coarse)
    near = float(lat_c[int(np.argmin(score))])
    fine = np.asarray([x for x in LATITUDES if abs(x - near) <= _COARSE * _LAT_STEP], dtype=np.float64)
    lat_c, tilt_c, k, clear, score = fit(fine)
    best = int(np.argmin(score))
    if not math.isfinite(float(score[best])):
        return None
    kwp = 1000.0 * float(np.median(k[best, clear[best]]))
    return SiteEstimate(
        lat=float(lat_c[best]),
        tilt=float(tilt_c[best]),
        lon=round(lon, 2),
        kwp=round(kwp, 4),
        noon_utc_h=round(noon, 4),
        days=int(usable.sum()),
        residual=round(float(score[best]), 4),
    )


def registration_warnings(
    pv_kw: FloatArray, registered_clear_kw: FloatArray, start: datetime, step: timedelta
) -> list[tuple[str, str]]:
    """Where the registered site (its clear-sky output per slot, `registered_clear_kw`) disagrees strongly with
    the measured PV: solar noon `NOON_WARN_H` or more apart (wrong longitude, time zone of the timestamps, or
    azimuth), or the measured peak (99th percentile of the sunny slots) outside `PEAK_WARN_RATIO` of the
    registered clear-sky peak (wrong kWp). (kind, message) pairs, kind `solar_noon` or `kwp`; empty when they
    agree or there is no PV to compare."""
    m = np.nan_to_num(np.asarray(pv_kw, dtype=np.float64), nan=0.0)
    c = np.asarray(registered_clear_kw[: len(m)], dtype=np.float64)
    noon, model = measured_solar_noon(m, start, step), measured_solar_noon(c, start, step)
    out: list[tuple[str, str]] = []
    if noon is None or model is None:
        return out
    apart = (noon - model + 12.0) % 24.0 - 12.0
    if abs(apart) >= NOON_WARN_H:
        out.append(
            (
                "solar_noon",
                f"the measured PV's solar noon is {_hhmm(noon)} UTC, the registered site's {_hhmm(model)} UTC "
                f"({apart:+.1f} h): its longitude (about {_lon_from_noon(noon):.0f}° from the PV), the timestamps' "
                "UTC offset or its azimuth is wrong",
            )
        )
    measured_peak = float(np.quantile(m[m > 0.0], 0.99)) if (m > 0.0).any() else 0.0
    model_peak = float(np.quantile(c[c > 0.0], 0.99)) if (c > 0.0).any() else 0.0
    if model_peak > 0.0 and not PEAK_WARN_RATIO[0] <= measured_peak / model_peak <= PEAK_WARN_RATIO[1]:
        out.append(
            (
                "kwp",
                f"the measured PV peaks at {measured_peak:.2f} kW, {measured_peak / model_peak:.2f} x the registered "
                f"arrays' clear-sky {model_peak:.2f} kW: the registered kWp is likely wrong",
            )
        )
    return out


def _hhmm(hours: float) -> str:
    minutes = round(hours * 60.0) % (24 * 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _clear_days(k: FloatArray, err: FloatArray, ok: BoolArray) -> BoolArray:
    """(L, D) mask: per candidate the brightest `_BRIGHT_SHARE` of the usable days by scale, and of those the
    better-fitting `_FIT_SHARE` (brightness alone takes a hazy bright day, shape alone an evenly grey one)."""
    n_ok = ok.sum(axis=1, keepdims=True)
    rank_k = np.argsort(np.argsort(-k, axis=1), axis=1)
    bright = ok & (rank_k < np.maximum(1, np.ceil(n_ok * _BRIGHT_SHARE)))
    rank_e = np.argsort(np.argsort(np.where(bright, err, np.inf), axis=1), axis=1)
    n_bright = bright.sum(axis=1, keepdims=True)
    return np.asarray(bright & (rank_e < np.maximum(1, np.ceil(n_bright * _FIT_SHARE))), dtype=np.bool_)


__all__ = [
    "LATITUDES",
    "NOON_WARN_H",
    "PEAK_WARN_RATIO",
    "SiteEstimate",
    "clear_shape",
    "infer_site",
    "measured_solar_noon",
    "registration_warnings",
    "solar_zone",
]
