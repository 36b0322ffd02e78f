"""The planner worker's two-stage plan and load reserve (cloud/plan_risk.py, the code the backtest measures)
against a real SQLite file and a real PostgreSQL: a site with three weeks of varying PV and load gets a
two-stage plan over its own dark and bright days, per slot from the conditional spread (the backtest's
default), and a load reserve from its own whole-day ratios; a site with a week and a half of PV keeps the
unconditional pair; a site whose PV a weather forecast shapes does not get the scenarios; telemetry after the
plan's start changes nothing."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from nacl.signing import SigningKey

from cloud.db import Database
from cloud.external_pv import PvUpload, put_external_pv
from cloud.forecast import OpenMeteoClient
from cloud.plan_risk import MAX_DAY_RATIO, NEUTRAL, checked_spread, reserve_load
from cloud.planner import PlannerOptions, is_neutral, plan_grid, plan_site, prepare, solve_prepared, to_plan, true_cost
from cloud.server.service import register_site
from cloud_sync.keys import public_key_b64
from cloud_sync.wire import WireReading
from tests.db_backends import BACKENDS, empty_db_url_async
from tests.integration.test_planner import ingest
from zapd.model import DerKind

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "openmeteo"
WEATHER_BODY = (FIX / "forecast_clear_overcast_debilt_2026-06-01.json").read_bytes()
T0 = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)  # the weather fixture's first hour
Q = timedelta(minutes=15)
DAYS = 21
# each day's PV (share of a clear day) and load level: weather and a house that differ from day to day;
PV_DAY = [1.0, 0.35, 0.8, 0.55, 0.95, 0.25, 0.7]
LOAD_DAY = [1.0, 1.4, 0.8, 1.2, 0.7]  # a five-day cycle: the weekly profile cannot know it

ASSETS: dict[str, Any] = {
    "location": {"lat": 52.1, "lon": 5.18, "altitude_m": 2},
    "grid": {"max_import_kw": 17.0, "max_export_kw": 10.0},
    "battery": {"capacity_kwh": 10.0, "max_charge_kw": 5.0, "max_discharge_kw": 5.0},
    "pv": [{"kwp": 5.0, "tilt_deg": 35, "azimuth_deg": 180}],
}
WEATHER = {**ASSETS, "weather": {"provider": "open-meteo", "use": "cloud_cover"}}
TARIFF = {"energy": {"kind": "fixed", "price": 0.25}, "vat": 0.21, "export": {"kind": "fixed", "price": 0.07}}
RISK = PlannerOptions(scenarios=True, load_reserve=True)
OFF = PlannerOptions(scenarios=False, load_reserve=False)


def _pv(ts: datetime, day: int) -> float:
    h = ts.hour + ts.minute / 60
    clear = max(0.0, 3.8 * math.sin((h - 4) / 16 * math.pi)) if 4 <= h <= 20 else 0.0
    return clear * PV_DAY[day % 7]


def _load(ts: datetime, day: int) -> float:
    h = ts.hour + ts.minute / 60
    return LOAD_DAY[day % 5] * (0.3 + 1.5 * math.exp(-(((h - 19) / 2) ** 2)))


def _readings(start: datetime, end: datetime, first_seq: int, *, scale: float = 1.0) -> list[WireReading]:
    out: list[WireReading] = []
    seq, t = first_seq, start
    while t < end:
        day = (t - start).days
        pv, load = _pv(t, day) * scale, _load(t, day) * scale
        for der, kind, values in (
            ("meter", DerKind.METER, {"power_w": (load - pv) * 1000}),
            ("pv1", DerKind.PV, {"power_w": pv * 1000}),
            ("bat1", DerKind.BATTERY, {"power_w": 0.0, "soc": 0.3}),
        ):
            out.append(WireReading(seq=seq, der_id=der, kind=kind, ts=t, values=values))
            seq += 1
        t += Q
    return out


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(await empty_db_url_async(request.param, tmp_path, "planner_risk"))
    await database.create_schema()
    try:
        yield database
    finally:
        await database.dispose()


async def _site(db: Database, site_id: str, assets: dict[str, Any], days: int = DAYS) -> None:
    await register_site(db, site_id, public_key_b64(SigningKey.generate()), assets=assets, tariff=TARIFF, now=T0)
    await ingest(db, site_id, _readings(T0 - timedelta(days=days), T0, 1))


def _unconditional(days: int) -> tuple[float, float]:
    """The (P10, P90) of the last 14 days' PV over their mean, as the worker's fallback sees them."""
    k = np.array([PV_DAY[d % 7] for d in range(days)][-14:])
    lo, hi = np.quantile(k, [0.1, 0.9])
    return checked_spread(float(lo / k.mean()), float(hi / k.mean()))


def _weather_client() -> OpenMeteoClient:
    return OpenMeteoClient(transport=httpx.MockTransport(lambda _: httpx.Response(200, content=WEATHER_BODY)))


async def test_a_site_with_history_gets_a_two_stage_plan_and_a_load_reserve(db: Database) -> None:
    await _site(db, "home", ASSETS)
    prepared = await prepare(db, "home", T0, RISK)
    dark, bright = (np.asarray(r) for r in prepared.pv_spread)  # per slot: the conditional spread
    horizon = prepared.problem.horizon
    assert dark.shape == (horizon,) and bright.shape == (horizon,)
    assert np.isfinite(dark).all() and np.isfinite(bright).all()
    assert (dark >= 0.0).all() and (dark <= bright).all() and (bright <= MAX_DAY_RATIO).all()
    assert (dark < 1.0).any() and (bright > 1.0).any()
    assert not np.allclose(dark, _unconditional(DAYS)[0], atol=1e-3)  # not the unconditional pair
    ratios = prepared.load_risk.ratios
    assert len(ratios) >= 7 and np.isfinite(ratios).all() and (ratios > 0).all()
    # the problem's load is the reserve of the point forecast at the plan's prices, as the backtest's
    p = prepared.problem
    imp, exp = np.asarray(p.import_price), np.asarray(p.export_price)
    expected = reserve_load(prepared.load_forecast, prepared.pv_forecast, imp, exp, prepared.load_risk, 0.25)
    assert p.load_kw == pytest.approx(expected.tolist(), abs=1e-4)
    assert not np.allclose(p.load_kw, prepared.load_forecast, atol=0.01)
    served = prepared.load_forecast > prepared.pv_forecast
    assert np.asarray(p.load_kw)[~served] == pytest.approx(prepared.load_forecast[~served], abs=1e-4)
    result = await plan_site(db, "home", T0, SigningKey.generate(), options=RISK)
    assert result.two_stage
    assert PlannerOptions() == RISK  # the default (docs/decisions.md)
    plain = await prepare(db, "home", T0, OFF)
    assert plain.pv_spread == NEUTRAL and not len(plain.load_risk.ratios)
    assert plain.problem.load_kw == pytest.approx(prepared.load_forecast.tolist(), abs=1e-4)
    result = await plan_site(db, "home", T0, SigningKey.generate(), options=OFF)
    assert not result.two_stage


async def test_a_site_with_too_little_pv_history_keeps_the_unconditional_spread(db: Database) -> None:
    """Ten days: nine pairs of consecutive days, fewer than the conditional spread needs (MIN_PERSISTENCE_PAIRS)."""
    await _site(db, "young", ASSETS, days=10)
    prepared = await prepare(db, "young", T0, RISK)
    dark, bright = prepared.pv_spread
    assert isinstance(dark, float) and isinstance(bright, float)
    assert (dark, bright) == pytest.approx(_unconditional(10), abs=0.05)
    assert 0.0 <= dark < 0.7 and 1.2 < bright <= MAX_DAY_RATIO  # the days' 0.25 .. 1.0 around their mean
    result = await plan_site(db, "young", T0, SigningKey.generate(), options=RISK)
    assert result.two_stage


async def test_a_site_whose_pv_a_weather_forecast_shapes_gets_no_scenarios(db: Database) -> None:
    await _site(db, "wx", WEATHER)
    options = PlannerOptions(scenarios=True, load_reserve=True, weather=_weather_client())
    prepared = await prepare(db, "wx", T0, options)
    assert prepared.pv_spread == NEUTRAL
    assert len(prepared.load_risk.ratios) >= 7  # the load reserve does not depend on the PV forecast
    result = await plan_site(db, "wx", T0, SigningKey.generate(), options=options)
    assert not result.two_stage


async def test_a_site_with_an_external_pv_forecast_gets_no_scenarios(db: Database) -> None:
    await _site(db, "ext", ASSETS)
    up = PvUpload(start=T0, step_minutes=60, values_kw=[1.0] * 24)
    await put_external_pv(db, "ext", up, T0 - timedelta(hours=1))
    prepared = await prepare(db, "ext", T0, RISK)
    assert prepared.problem.pv_kw[:96] == pytest.approx([1.0] * 96)
    assert prepared.pv_spread == NEUTRAL


async def test_a_sites_own_choice_overrides_the_workers(db: Database) -> None:
    await _site(db, "own", {**ASSETS, "planning": {"scenarios": False, "load_reserve": False}})
    prepared = await prepare(db, "own", T0, RISK)
    assert prepared.pv_spread == NEUTRAL and not len(prepared.load_risk.ratios)
    await _site(db, "opt_in", {**ASSETS, "planning": {"scenarios": True}})
    prepared = await prepare(db, "opt_in", T0, OFF)
    assert not is_neutral(prepared.pv_spread) and not len(prepared.load_risk.ratios)


async def test_the_spreads_use_no_telemetry_after_the_plans_start(db: Database) -> None:
    """The same site with a day of telemetry after T0 at five times the PV and load: the PV spread, the load
    ratios and the problem planned at T0 are the same."""
    await _site(db, "a", ASSETS)
    await _site(db, "b", ASSETS)
    await ingest(db, "b", _readings(T0, T0 + timedelta(days=1), DAYS * 96 * 3 + 1, scale=5.0))
    a, b = await prepare(db, "a", T0, RISK), await prepare(db, "b", T0, RISK)
    assert all(np.array_equal(x, y) for x, y in zip(a.pv_spread, b.pv_spread, strict=True))
    assert np.array_equal(a.load_risk.ratios, b.load_risk.ratios)
    assert a.problem.load_kw == b.problem.load_kw and a.problem.pv_kw == b.problem.pv_kw


async def test_at_night_the_scenarios_share_the_battery_decision_until_the_first_sunlit_slot(db: Database) -> None:
    await _site(db, "night", ASSETS)
    at_night = await prepare(db, "night", T0, RISK)  # 02:00 in De Bilt; sunrise on 1 June is about 03:25 UTC
    # the 35-degree south plane passes 2 % of its kWp clear sky between sunrise and 05:00 UTC
    assert 14 <= at_night.scenario_shared_slots <= 21
    by_day = await prepare(db, "night", T0 - timedelta(hours=12), RISK)  # noon the day before
    assert by_day.scenario_shared_slots == 4  # the hour the edge runs before the next plans
    hour_only = await prepare(db, "night", T0, PlannerOptions(scenario_share_night=False))
    assert hour_only.scenario_shared_slots == 4
    result = await plan_site(db, "night", T0, SigningKey.generate(), options=RISK)
    assert result.two_stage


async def test_the_far_hours_are_planned_in_hourly_slots_and_the_plan_still_has_every_quarter_hour(
    db: Database,
) -> None:
    """The worker's plan on the far grid (cloud.plan_grid, the backtest's default): the first six hours at the
    15-minute step, then hourly slots, spread back so the edge gets a plan slot per quarter-hour; it costs
    about what the plan on every quarter-hour costs. A demand-response window keeps the step through its end."""
    await _site(db, "far", ASSETS)
    prepared = await prepare(db, "far", T0 + timedelta(hours=9, minutes=15), RISK)
    steps = plan_grid(prepared, RISK)
    horizon = prepared.problem.horizon
    assert sum(steps) == horizon and steps[:27] == [1] * 27 and steps[27] == 4  # 09:15 + 6 h, to 16:00
    solution, two_stage = await solve_prepared(prepared, RISK)
    assert two_stage and len(solution.battery_charge_kw) == horizon and len(solution.soc) == horizon + 1
    battery = np.asarray(solution.battery_charge_kw) - np.asarray(solution.battery_discharge_kw)
    far = battery[27 : 27 + 4 * ((horizon - 27) // 4)].reshape(-1, 4)
    assert (far == far[:, :1]).all()  # one power per far hour
    fine, _ = await solve_prepared(prepared, replace(RISK, fine_hours=168.0))
    assert true_cost(prepared, solution) == pytest.approx(true_cost(prepared, fine), rel=0.02, abs=0.05)
    plan = to_plan(prepared, solution, 1, RISK)
    assert len(plan.slots) == horizon and all(s.end - s.start == Q for s in plan.slots)
    paid = prepared.incentive.copy()
    paid[60:70] = 0.2  # a demand-response window 15-17.5 h ahead
    assert plan_grid(replace(prepared, incentive=paid), RISK)[:70] == [1] * 70
    assert plan_grid(prepared, replace(RISK, fine_hours=168.0)) == []
