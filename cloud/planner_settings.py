"""What `zapcloud serve` tells its planner loop: the weather provider and the planner's default forecasters,
price forecast and execution (`zapcloud serve --weather-url ... --pv-model ...`, docs/cloud-planning.md).

Kept apart from cloud/planner.py so that parsing and checking the flags loads neither pvlib nor LightGBM: a
`zapcloud serve --no-planner` never imports them. A site's registration may override each default
(`assets.planning`, cloud/assets.py); `PlannerSettings.options()` builds the planner's `PlannerOptions`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, get_args

import httpx

from cloud.assets import LoadModelName, PvModelName
from cloud.execution import DEFAULT_EXECUTION, Execution
from cloud.plan_grid import FINE_HOURS

if TYPE_CHECKING:
    from cloud.planner import PlannerOptions

OPEN_METEO_URL: Final = "https://api.open-meteo.com/v1/forecast"
DEFAULT_WEATHER_TIMEOUT_S: Final = 10.0
# A forecast is fetched once per location and kept this long: every site is re-planned every 15 minutes, the
# models behind Open-Meteo run every 1-3 hours, and its free API allows 10,000 calls a day.
DEFAULT_WEATHER_CACHE_S: Final = 1800.0
WEATHER_TIMEOUT_BOUNDS_S: Final = (0.1, 120.0)
WEATHER_CACHE_BOUNDS_S: Final = (0.0, 6 * 3600.0)
FINE_HOURS_BOUNDS: Final = (0.0, 168.0)  # as the backtest's --fine-hours

PV_MODELS: Final = get_args(PvModelName)
LOAD_MODELS: Final = get_args(LoadModelName)
EXECUTIONS: Final = tuple(e.value for e in Execution)


class SettingsError(ValueError):
    """A serve flag out of its bounds; the message names the flag."""


def _bounded(flag: str, value: float, bounds: tuple[float, float]) -> None:
    lo, hi = bounds
    if not (math.isfinite(value) and lo <= value <= hi):
        raise SettingsError(f"{flag}: {value} is outside {lo:g}..{hi:g}")


@dataclass(frozen=True, slots=True)
class PlannerSettings:
    """The serve worker's planner defaults; `weather_url` None: no weather forecasts for any site."""

    weather_url: str | None = OPEN_METEO_URL
    weather_timeout_s: float = DEFAULT_WEATHER_TIMEOUT_S
    weather_cache_s: float = DEFAULT_WEATHER_CACHE_S
    pv_model: PvModelName = "factor"
    load_model: LoadModelName = "profile"
    price_forecast: bool = False
    execution: str = DEFAULT_EXECUTION.value
    # the factor PV forecast's day-to-day part from the site's own clear/cloudy-day persistence
    # (cloud.forecast_pv_day; the backtest's --pv-persistence)
    pv_persistence: bool = False
    # each day's PV on the site's ratio to its uploaded regional day-ahead PV forecast (cloud/pv_index_store.py;
    # the backtest's --pv-index): used where a site uploads one
    pv_index: bool = True
    # the profile load forecast scaled by the site's own day-level persistence (cloud.forecast_load
    # .forecast_load_house; the backtest's --load-day-level, default on there too)
    load_day_level: bool = True
    # with it, the profile pooled by day kind: working day / weekend or public holiday (the backtest's
    # --load-day-kinds)
    load_day_kinds: bool = True
    # the two-stage plan over a dark and a bright day and the newsvendor load reserve (cloud.plan_risk; the
    # backtest's --scenarios / --load-reserve; default since they lowered all six real years' cost)
    scenarios: bool = True
    load_reserve: bool = True
    # hours planned at the 15-minute step before the far hours' hourly slots (cloud.plan_grid; the backtest's
    # --fine-hours); 168 plans every slot at the step
    fine_hours: float = FINE_HOURS

    def __post_init__(self) -> None:
        if self.weather_url is not None:
            try:
                url = httpx.URL(self.weather_url)
            except httpx.InvalidURL as exc:
                raise SettingsError(f"--weather-url: {exc}") from None
            if url.scheme not in ("http", "https") or not url.host:
                raise SettingsError(f"--weather-url: {self.weather_url!r} is not an http(s) URL with a host")
        _bounded("--weather-timeout-s", self.weather_timeout_s, WEATHER_TIMEOUT_BOUNDS_S)
        _bounded("--weather-cache-s", self.weather_cache_s, WEATHER_CACHE_BOUNDS_S)
        _bounded("--fine-hours", self.fine_hours, FINE_HOURS_BOUNDS)
        for flag, value, allowed in (
            ("--pv-model", self.pv_model, PV_MODELS),
            ("--load-model", self.load_model, LOAD_MODELS),
            ("--execution", self.execution, EXECUTIONS),
        ):
            if value not in allowed:
                raise SettingsError(f"{flag}: {value!r} is not one of {', '.join(allowed)}")

    def options(self) -> PlannerOptions:
        """The planner's options (imports the planner: pvlib, LightGBM)."""
        from cloud.forecast import OpenMeteoClient
        from cloud.planner import PlannerOptions
        from cloud.site_forecast import LoadChoice, ModelChoice, PvChoice

        weather = None
        if self.weather_url is not None:
            weather = OpenMeteoClient(
                base_url=self.weather_url, timeout_s=self.weather_timeout_s, cache_s=self.weather_cache_s
            )
        return PlannerOptions(
            weather=weather,
            models=ModelChoice(
                pv=PvChoice(self.pv_model),
                load=LoadChoice(self.load_model),
                load_day_level=self.load_day_level,
                load_day_kinds=self.load_day_kinds,
            ),
            price_forecast=self.price_forecast,
            execution=Execution(self.execution),
            pv_persistence=self.pv_persistence,
            pv_index=self.pv_index,
            scenarios=self.scenarios,
            load_reserve=self.load_reserve,
            fine_hours=self.fine_hours,
        )


__all__ = [
    "DEFAULT_WEATHER_CACHE_S",
    "DEFAULT_WEATHER_TIMEOUT_S",
    "EXECUTIONS",
    "LOAD_MODELS",
    "OPEN_METEO_URL",
    "PV_MODELS",
    "PlannerSettings",
    "SettingsError",
]
