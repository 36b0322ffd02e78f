"""The site's assets (`sites.assets` JSON, set at registration): what the planner may plan with.

Schema (kW, kWh, fractions 0..1; every key not marked optional is required)::

    {
      "location": {"lat": 52.1, "lon": 5.18, "altitude_m": 2},
      "timezone": "Europe/Amsterdam",                 # optional, for EV times; default UTC
      "grid": {"max_import_kw": 17.0, "max_export_kw": 10.0},
      "battery": {                                    # optional: no battery, the plan only schedules the EV
        "capacity_kwh": 10.0, "max_charge_kw": 5.0, "max_discharge_kw": 5.0,
        "soc_min": 0.1, "soc_max": 0.95,              # optional, defaults shown
        "charge_efficiency": 0.95, "discharge_efficiency": 0.95,   # optional
        "cycle_cost_per_kwh": 0.02                    # optional: degradation per kWh in or out
      },
      "pv": [{"kwp": 6.0, "tilt_deg": 35, "azimuth_deg": 180}],   # optional; azimuth 180 = south
      "ev": {                                         # optional: a daily charging session
        "capacity_kwh": 60, "max_charge_kw": 11, "efficiency": 0.9,
        "arrival": "18:00", "departure": "07:00",     # local times (timezone above)
        "soc_at_arrival": 0.4, "soc_target": 0.8
      },
      "weather": {"provider": "open-meteo", "use": "ghi"},         # optional: dim PV by a forecast
      "planning": {                                   # optional: this site's planner choices; each key optional,
        "pv_model": "fit", "load_model": "gbm",       # a key left out keeps `zapcloud serve`'s default
        "price_forecast": true, "execution": "surplus",
        "scenarios": false, "load_reserve": true
      }
    }

A site without `assets` (or whose assets do not decode) is not planned; its plans can still be PUT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from cloud.execution import Execution

if TYPE_CHECKING:  # cloud.forecast loads pvlib, pandas and scipy: only the planner needs them, not every reader
    from cloud.forecast import Location, PvArray

NonNeg = Annotated[float, msgspec.Meta(ge=0.0)]
Positive = Annotated[float, msgspec.Meta(gt=0.0)]
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Efficiency = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
ClockTime = Annotated[str, msgspec.Meta(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]


class AssetsError(ValueError):
    """Assets the planner cannot use; the message names the field."""


class LocationCfg(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    lat: Annotated[float, msgspec.Meta(ge=-90.0, le=90.0)]
    lon: Annotated[float, msgspec.Meta(ge=-180.0, le=180.0)]
    altitude_m: float = 0.0


class GridCfg(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_import_kw: NonNeg
    max_export_kw: NonNeg


class BatteryCfg(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    capacity_kwh: Positive
    max_charge_kw: NonNeg
    max_discharge_kw: NonNeg
    soc_min: Fraction = 0.1
    soc_max: Fraction = 0.95
    charge_efficiency: Efficiency = 0.95
    discharge_efficiency: Efficiency = 0.95
    cycle_cost_per_kwh: NonNeg = 0.02


class PvCfg(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kwp: Positive
    tilt_deg: Annotated[float, msgspec.Meta(ge=0.0, le=90.0)] = 30.0
    azimuth_deg: Annotated[float, msgspec.Meta(ge=0.0, le=360.0)] = 180.0


class EvCfg(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    capacity_kwh: Positive
    max_charge_kw: NonNeg
    efficiency: Efficiency = 0.9
    arrival: ClockTime = "18:00"
    departure: ClockTime = "07:00"
    soc_at_arrival: Fraction = 0.4
    soc_target: Fraction = 0.8


class WeatherCfg(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    provider: Literal["open-meteo"] = "open-meteo"
    use: Literal["ghi", "cloud_cover"] = "ghi"


# The forecasters by name (cloud/site_forecast.py PvChoice / LoadChoice: a unit test keeps them equal), named
# here so that decoding a registration does not load pvlib and LightGBM.
PvModelName = Literal["factor", "fit"]
LoadModelName = Literal["profile", "gbm"]


class PlanningCfg(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Per-site overrides of the serve worker's planner defaults (cloud/planner_settings.py); None: the default."""

    pv_model: PvModelName | None = None
    load_model: LoadModelName | None = None
    price_forecast: bool | None = None
    execution: Execution | None = None
    scenarios: bool | None = None  # two-stage plan over a dark and a bright day (cloud.plan_risk)
    load_reserve: bool | None = None  # the newsvendor load reserve (cloud.plan_risk)


class SiteAssets(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    location: LocationCfg
    grid: GridCfg
    timezone: str = "UTC"
    battery: BatteryCfg | None = None
    pv: list[PvCfg] = msgspec.field(default_factory=list)
    ev: EvCfg | None = None
    weather: WeatherCfg | None = None
    planning: PlanningCfg | None = None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def pv_kwp(self) -> float:
        return sum(p.kwp for p in self.pv)

    def pv_arrays(self) -> list[PvArray]:
        from cloud.forecast import PvArray

        return [PvArray(kwp=p.kwp, tilt_deg=p.tilt_deg, azimuth_deg=p.azimuth_deg) for p in self.pv]

    def pv_location(self) -> Location:
        from cloud.forecast import Location

        return Location(self.location.lat, self.location.lon, self.location.altitude_m)


def check_planning(obj: Any) -> PlanningCfg:
    """`assets.planning` alone (the registration checks it before storing the site)."""
    try:
        return msgspec.convert(obj, type=PlanningCfg | None) or PlanningCfg()
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `$")
        raise AssetsError(f"assets.planning{where.rstrip('`')}: {message}") from None


def decode_assets(obj: Any) -> SiteAssets:
    if obj is None:
        raise AssetsError("assets: none registered")
    try:
        assets = msgspec.convert(obj, type=SiteAssets)
    except msgspec.ValidationError as exc:
        raise AssetsError(f"assets: {exc}") from None
    try:
        ZoneInfo(assets.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise AssetsError(f"assets.timezone: unknown time zone {assets.timezone!r}") from None
    if assets.battery is not None and assets.battery.soc_min > assets.battery.soc_max:
        raise AssetsError("assets.battery.soc_min: above soc_max")
    return assets


__all__ = [
    "AssetsError",
    "BatteryCfg",
    "EvCfg",
    "GridCfg",
    "LoadModelName",
    "PlanningCfg",
    "PvCfg",
    "PvModelName",
    "SiteAssets",
    "WeatherCfg",
    "check_planning",
    "decode_assets",
]
