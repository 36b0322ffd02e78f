"""The planner against a real SQLite file and a real PostgreSQL: telemetry in, signed plan out, forecasts
scored, work claimed."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nacl.signing import SigningKey

from cloud.db import Database
from cloud.db import planning as store
from cloud.planner import PlanError, PlannerOptions, plan_next, plan_site, prepare
from cloud.prices import PriceSeries
from cloud.server.service import register_site
from cloud_sync.keys import public_key_b64
from cloud_sync.wire import MAX_BATCH_READINGS, WireReading, make_batch, verify_plan
from tests.db_backends import BACKENDS, empty_db_url_async
from zapd.model import DerKind

AREA = "10YNL----------L"
T0 = datetime(2026, 6, 15, 12, 7, tzinfo=UTC)  # a Monday, just after the day-ahead publication
Q = timedelta(minutes=15)

ASSETS: dict[str, Any] = {
    "location": {"lat": 52.1, "lon": 5.18},
    "timezone": "Europe/Amsterdam",
    "grid": {"max_import_kw": 17.0, "max_export_kw": 10.0},
    "battery": {"capacity_kwh": 10.0, "max_charge_kw": 5.0, "max_discharge_kw": 5.0},
    "pv": [{"kwp": 5.0, "tilt_deg": 35, "azimuth_deg": 180}],
}
TARIFF: dict[str, Any] = {
    "timezone": "Europe/Amsterdam",
    "spot_area": AREA,
    "energy": {"kind": "spot"},
    "energy_tax": 0.10,
    "vat": 0.21,
    "export": {"kind": "spot"},
    "capacity": {"price_per_kw": 4.0},
}


def load_kw(ts: datetime) -> float:
    h = ts.hour + ts.minute / 60
    return 0.3 + 1.5 * math.exp(-(((h - 18) / 2) ** 2)) + 0.6 * math.exp(-(((h - 7) / 1.5) ** 2))


def pv_kw(ts: datetime) -> float:
    h = ts.hour + ts.minute / 60
    return max(0.0, 3.5 * math.sin((h - 4) / 16 * math.pi)) if 4 <= h <= 20 else 0.0


def spot(ts: datetime) -> float:
    h = ts.hour
    return 0.08 + 0.10 * math.exp(-(((h - 18) / 2) ** 2)) - 0.09 * math.exp(-(((h - 12) / 2.5) ** 2))


def readings(start: datetime, end: datetime, first_seq: int, soc: float = 0.5) -> list[WireReading]:
    out: list[WireReading] = []
    seq = first_seq
    t = start
    while t < end:
        load, pv = load_kw(t), pv_kw(t)
        for der, kind, values in (
            ("meter", DerKind.METER, {"power_w": (load - pv) * 1000}),
            ("pv1", DerKind.PV, {"power_w": pv * 1000}),
            ("bat1", DerKind.BATTERY, {"power_w": 0.0, "soc": soc}),
        ):
            out.append(WireReading(seq=seq, der_id=der, kind=kind, ts=t, values=values))
            seq += 1
        t += Q
    return out


async def ingest(db: Database, site_id: str, rs: list[WireReading]) -> None:
    for i in range(0, len(rs), MAX_BATCH_READINGS):
        result = await db.ingest_telemetry(make_batch(site_id, rs[i : i + MAX_BATCH_READINGS]))
        assert result.accepted


async def put_prices(db: Database, start: datetime, hours: int, now: datetime) -> None:
    values = tuple(spot(start + timedelta(hours=h)) for h in range(hours))
    await store.put_spot_prices(db, AREA, PriceSeries(start, timedelta(hours=1), values), now)


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    # PostgreSQL too: the work queue's claim is FOR UPDATE SKIP LOCKED there, a conditional UPDATE on SQLite.
    database = Database(await empty_db_url_async(request.param, tmp_path, "planner"))
    await database.create_schema()
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
async def site(db: Database) -> str:
    await register_site(db, "home1", public_key_b64(SigningKey.generate()), assets=ASSETS, tariff=TARIFF, now=T0)
    start = T0.replace(hour=0, minute=0) - timedelta(days=28)
    await ingest(db, "home1", readings(start, T0.replace(minute=0), 1))
    day0 = T0.replace(hour=0, minute=0) - timedelta(hours=2)
    await put_prices(db, day0, 24 * 2 + 2, T0)
    return "home1"


async def test_plan_site_publishes_a_signed_plan_that_follows_prices(db: Database, site: str) -> None:
    key = SigningKey.generate()
    result = await plan_site(db, site, T0, key)
    assert result.version == 1
    assert result.soc_source == "telemetry"
    plan_row = await db.latest_plan(site)
    assert plan_row is not None
    plan = verify_plan(
        plan_row.body, plan_row.signature, key.verify_key, site_id=site, min_version_exclusive=None, now=T0
    )
    # prices stored through 2026-06-17 00:00 UTC: 12:00 UTC today .. then = 36 h
    assert plan.slots[0].start == datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
    assert len(plan.slots) == result.slots == 36 * 4
    assert plan.valid_until == T0 + timedelta(hours=24)
    setpoints = {s.start: s.intent.battery_w for s in plan.slots}
    evening = [setpoints[datetime(2026, 6, 15, h, tzinfo=UTC)] for h in (17, 18, 19)]
    assert min(v or 0.0 for v in evening) < -500  # discharges into the evening peak
    flows = await store.latest_flows(db, site)
    assert flows is not None and flows.version == 1
    # the tariff's capacity charge: each slot holds the level the month already pays for (this month's peak
    # so far or the month's target, cloud/peak_limit.py), or its own planned import if higher, in whole watts;
    # the peak is the highest reading since 1 June (Amsterdam)
    month_start = datetime(2026, 5, 31, 22, 0, tzinfo=UTC)
    peak = max(load_kw(month_start + Q * i) - pv_kw(month_start + Q * i) for i in range((T0 - month_start) // Q))
    dc = (await prepare(db, site, T0, PlannerOptions())).problem.demand_charge
    assert dc is not None and dc.peak_already_kw >= peak - 1e-6
    assert len(dc.reserve_kwh) in (0, len(plan.slots))
    for slot, imp in zip(plan.slots, flows.flows["import_kw"], strict=False):
        limit = slot.intent.grid_import_limit_w
        assert limit is not None and limit <= 17000.0
        need = max(dc.peak_already_kw, imp) * 1000.0
        assert need - 1.0 <= limit <= need + 1.0, (slot.start, limit, dc.peak_already_kw, imp)
    assert len(flows.flows["soc"]) == len(plan.slots) + 1
    # forecasts were stored; the learned PV factor reproduces the measured PV roughly
    prepared = await prepare(db, site, T0, PlannerOptions())
    truth = np.array([pv_kw(prepared.start + Q * i + Q / 2) for i in range(prepared.problem.horizon)])
    assert abs(prepared.pv_forecast.sum() - truth.sum()) / truth.sum() < 0.25
    assert prepared.load_forecast[:8] == pytest.approx([load_kw(prepared.start + Q * i) for i in range(8)], abs=0.05)


async def test_version_increases_and_forecasts_get_scored(db: Database, site: str) -> None:
    key = SigningKey.generate()
    await plan_site(db, site, T0, key)
    # a day and a half later, with the telemetry of that time stored and new prices
    later = T0 + timedelta(hours=36)
    stored = await db.stored_through(site)
    assert stored is not None
    await ingest(db, site, readings(T0.replace(minute=0), later.replace(minute=0), stored + 1))
    await put_prices(db, later.replace(hour=0, minute=0), 48, later)
    result = await plan_site(db, site, later, key)
    assert result.version == 2
    errors = await store.forecast_errors(db, site, T0 - timedelta(days=1))
    assert set(errors) == {"pv", "load"}
    assert errors["load"]["mae_kw"] < 0.2
    assert errors["pv"]["mae_kw"] < 1.0


async def test_no_prices_no_plan(db: Database) -> None:
    await register_site(db, "s2", public_key_b64(SigningKey.generate()), assets=ASSETS, tariff=TARIFF, now=T0)
    with pytest.raises(PlanError, match="prices known for 0 slots"):
        await plan_site(db, "s2", T0, SigningKey.generate())


async def test_fixed_tariff_plans_48h_without_prices_or_telemetry(db: Database) -> None:
    tariff = {"energy": {"kind": "fixed", "price": 0.3}, "export": {"kind": "fixed", "price": 0.05}}
    await register_site(db, "s3", public_key_b64(SigningKey.generate()), assets=ASSETS, tariff=tariff, now=T0)
    result = await plan_site(db, "s3", T0, SigningKey.generate())
    assert result.slots == 192
    assert result.soc_source == "default"


async def test_work_is_claimed_by_one_worker_and_telemetry_makes_a_site_due(db: Database, site: str) -> None:
    key = SigningKey.generate()
    await store.ensure_jobs(db, T0)
    await store.ensure_jobs(db, T0)  # idempotent
    claims = await asyncio.gather(*(store.claim_site(db, f"w{i}", T0, timedelta(minutes=2)) for i in range(4)))
    assert sorted(c for c in claims if c is not None) == [site]
    # the lease holder's work: nothing else is due
    assert await store.claim_site(db, "w9", T0, timedelta(minutes=2)) is None
    # after the lease expires another worker may take it
    assert await store.claim_site(db, "w9", T0 + timedelta(minutes=3), timedelta(minutes=2)) == site
    opts = PlannerOptions()
    now = T0 + timedelta(minutes=10)
    # expired leases are re-claimable; plan_next plans and schedules the next run
    assert await plan_next(db, key, "w1", now, opts) == site
    job = await store.job_state(db, site)
    assert job is not None and job["last_error"] is None
    assert await plan_next(db, key, "w1", now + timedelta(minutes=1), opts) is None
    # new telemetry after 5 minutes makes it due before the 15-minute re-plan
    stored = await db.stored_through(site)
    assert stored is not None
    await ingest(db, site, readings(T0.replace(minute=0), T0.replace(minute=15), stored + 1))
    assert await store.mark_due_on_telemetry(db, now + timedelta(minutes=2), opts.telemetry_min_interval) == 0
    assert await store.mark_due_on_telemetry(db, now + timedelta(minutes=6), opts.telemetry_min_interval) == 1
    assert await plan_next(db, key, "w1", now + timedelta(minutes=6), opts) == site


async def test_failed_plan_is_recorded_and_retried_later(db: Database) -> None:
    await register_site(db, "s4", public_key_b64(SigningKey.generate()), assets=ASSETS, tariff=TARIFF, now=T0)
    await store.ensure_jobs(db, T0)
    opts = PlannerOptions()
    assert await plan_next(db, SigningKey.generate(), "w", T0, opts) == "s4"
    job = await store.job_state(db, "s4")
    assert job is not None and "prices known" in job["last_error"]
    assert await plan_next(db, SigningKey.generate(), "w", T0 + timedelta(minutes=1), opts) is None


async def test_ev_session_is_scheduled_into_cheap_night_hours(db: Database) -> None:
    assets = {**ASSETS, "ev": {"capacity_kwh": 60, "max_charge_kw": 11, "efficiency": 0.9, "arrival": "18:00",
                               "departure": "07:00", "soc_at_arrival": 0.4, "soc_target": 0.8}}  # fmt: skip
    tariff = {
        "timezone": "Europe/Amsterdam",
        "energy": {
            "kind": "tou",
            "tou": {"default": 0.30, "windows": [{"start": "01:00", "end": "05:00", "value": 0.1}]},
        },
    }
    await register_site(db, "ev1", public_key_b64(SigningKey.generate()), assets=assets, tariff=tariff, now=T0)
    await plan_site(db, "ev1", T0, SigningKey.generate())
    plan_row = await db.latest_plan("ev1")
    assert plan_row is not None
    from cloud_sync.wire import decode_plan

    plan = decode_plan(plan_row.body)
    energy = {s.start: (s.intent.ev_w or 0.0) * 0.25 / 1000 for s in plan.slots}
    arrival = datetime(2026, 6, 15, 16, 0, tzinfo=UTC)  # 18:00 CEST
    departure = datetime(2026, 6, 16, 5, 0, tzinfo=UTC)  # 07:00 CEST
    assert sum(energy.values()) == pytest.approx(0.4 * 60 / 0.9, rel=1e-3)
    assert all(e == 0 for t, e in energy.items() if not arrival <= t < departure)
    cheap = sum(
        e for t, e in energy.items() if datetime(2026, 6, 15, 23, tzinfo=UTC) <= t < departure - timedelta(hours=2)
    )
    assert cheap == pytest.approx(sum(energy.values()), rel=0.05)  # 01:00-05:00 local


async def test_failing_site_is_not_hot_looped_by_telemetry(db: Database) -> None:
    await register_site(db, "s5", public_key_b64(SigningKey.generate()), assets=ASSETS, tariff=TARIFF, now=T0)
    await store.ensure_jobs(db, T0)
    opts = PlannerOptions()
    assert await plan_next(db, SigningKey.generate(), "w", T0, opts) == "s5"  # fails: no prices
    await ingest(db, "s5", readings(T0, T0 + Q, 1))
    assert await store.mark_due_on_telemetry(db, T0 + timedelta(minutes=1), opts.telemetry_min_interval) == 0
    assert await plan_next(db, SigningKey.generate(), "w", T0 + timedelta(minutes=6), opts) == "s5"  # retry time
