"""Demand response as claimed fleet work (cloud/fleet_work.py) on a real SQLite file and a real PostgreSQL:
an event is stored with its per-site rows in one transaction, two workers share the sites without solving
one twice, a worker that dies mid-event leaves its sites to the others, the publish is all or nothing, and
the status reports progress, acknowledgements and delivery against the two baselines."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nacl.signing import SigningKey
from sqlalchemy import func, select

from cloud import fleet_work
from cloud.db import Database, fleet_event_jobs, fleet_event_sites, fleet_events, plans
from cloud.fleet import EventError, EventRequest
from cloud.fleet_acks import mark_fetched
from cloud.fleet_status import event_status
from cloud.fleet_work import LEASE, claim_job, create_event, publish_event, work_one
from cloud.planner import PlannerOptions
from cloud.server.channel_hub import channel_sites
from cloud.server.service import register_site
from cloud_sync.keys import public_key_b64
from cloud_sync.wire import MAX_BATCH_READINGS, WireReading, make_batch
from tests.db_backends import BACKENDS, empty_db_url_async
from tests.integration.test_planner import ASSETS, T0, TARIFF, ingest, put_prices, readings
from zapd.model import DerKind

OPTS = PlannerOptions()
KEY = SigningKey.generate()
N_SITES = 6
# 18:00-19:00 UTC, the evening peak
WINDOW = EventRequest(
    start=T0 + timedelta(hours=5, minutes=53), end=T0 + timedelta(hours=6, minutes=53), reduction_kw=4.0
)


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(await empty_db_url_async(request.param, tmp_path, "fleet"))
    await database.create_schema()
    try:
        yield database
    finally:
        await database.dispose()


def varied_batteries(i: int) -> dict[str, Any]:
    """Site i's assets with a battery of 2 + i kW and 3 + 3 i kWh: curves of several points, plateaus."""
    return {**ASSETS, "battery": {"capacity_kwh": 3.0 + 3 * i, "max_charge_kw": 2.0 + i, "max_discharge_kw": 2.0 + i}}


async def fleet(
    db: Database, n: int = N_SITES, days: int = 2, assets: Callable[[int], dict[str, Any]] = lambda i: ASSETS
) -> list[str]:
    """n sites with a battery, `days` of telemetry and two days of prices."""
    ids = [f"s{i}" for i in range(n)]
    start = T0.replace(hour=0, minute=0) - timedelta(days=days)
    for i, sid in enumerate(ids):
        key = public_key_b64(SigningKey.generate())
        await register_site(db, sid, key, assets=assets(i), tariff=TARIFF, now=T0)
        await ingest(db, sid, readings(start, T0.replace(minute=0), 1, soc=0.4 + 0.1 * (i % 5)))
    await put_prices(db, T0.replace(hour=0, minute=0) - timedelta(hours=2), 50, T0)
    return ids


async def jobs(db: Database, event_id: str) -> dict[str, dict[str, object]]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(select(fleet_event_jobs).where(fleet_event_jobs.c.event_id == event_id))
        return {r.site_id: dict(r._mapping) for r in rows}


async def plan_versions(db: Database) -> dict[str, int]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(select(plans.c.site_id, func.count()).group_by(plans.c.site_id))
        return {s: int(c) for s, c in rows}


async def test_event_is_stored_with_its_work_and_a_client_key_names_one_event(db: Database) -> None:
    ids = await fleet(db, n=3, days=1)
    keyed = EventRequest(WINDOW.start, WINDOW.end, 2.0, client_key="dso-42")
    made = await asyncio.gather(*(create_event(db, keyed, T0) for _ in range(5)))  # racing retries
    assert sum(not m.replayed for m in made) == 1 and len({m.event_id for m in made}) == 1
    event_id = made[0].event_id
    assert sorted(await jobs(db, event_id)) == ids
    assert {j["state"] for j in (await jobs(db, event_id)).values()} == {"pending"}
    with pytest.raises(EventError, match="other parameters"):
        await create_event(db, EventRequest(WINDOW.start, WINDOW.end, 3.0, client_key="dso-42"), T0)
    with pytest.raises(EventError, match="end in the future"):
        await create_event(db, EventRequest(T0 - timedelta(hours=2), T0 - timedelta(hours=1), 1.0), T0)
    async with db.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(fleet_events))).scalar() == 1
        assert (await conn.execute(select(func.count()).select_from(fleet_event_jobs))).scalar() == 3
    status = await event_status(db, event_id, T0)
    assert status is not None and status["status"] == "planning"
    assert status["progress"] == {
        "sites": 3,
        "pending": 3,
        "solving": 0,
        "planned": 0,
        "skipped": 0,
        "failed": 0,
        "dispatched": 0,
        "acknowledged": 0,
    }
    assert await event_status(db, "0" * 32, T0) is None


async def test_two_workers_share_an_event_and_no_site_is_planned_twice(db: Database, tmp_path: Path) -> None:
    ids = await fleet(db)
    before = await plan_versions(db)
    event_id = (await create_event(db, WINDOW, T0)).event_id
    # The second worker is another engine (its own connection pool), as another process would be.
    other = Database(str(db.engine.url.render_as_string(hide_password=False)))
    claimed: dict[str, list[str]] = {"w1": [], "w2": []}
    real_claim = fleet_work.claim_job

    async def run(worker: Database, owner: str) -> None:
        while True:
            job = await real_claim(worker, owner, T0)
            if job is None:
                if not await work_one(worker, KEY, owner, T0, OPTS):
                    return
                continue
            claimed[owner].append(job.site_id)
            await fleet_work.solve_job(worker, job, owner, T0, OPTS)
            await publish_event(worker, KEY, job.event_id, T0, OPTS)

    try:
        await asyncio.gather(run(db, "w1"), run(other, "w2"))
    finally:
        await other.dispose()
    every = claimed["w1"] + claimed["w2"]
    assert sorted(every) == ids, claimed  # each site claimed once, by one worker
    assert claimed["w1"] and claimed["w2"], claimed  # both did some of the work
    rows = await jobs(db, event_id)
    assert all(r["attempts"] == 1 for r in rows.values())
    chosen = {s for s, r in rows.items() if r["state"] == "dispatched"}
    assert chosen and {r["state"] for r in rows.values()} <= {"dispatched", "unchosen"}
    after = await plan_versions(db)
    # exactly one new plan per chosen site, none for the others
    assert {s: after.get(s, 0) - before.get(s, 0) for s in ids} == {s: int(s in chosen) for s in ids}
    status = await event_status(db, event_id, T0)
    assert status is not None and status["status"] == "dispatched"
    assert status["progress"]["planned"] == N_SITES and status["progress"]["dispatched"] == len(chosen)
    allocation = status["allocation"]
    assert allocation["fully_met"] and allocation["met_kw"] >= WINDOW.reduction_kw - 1e-6
    assert {s["site_id"] for s in allocation["sites"]} == chosen
    # The dispatched plans hold the incentive: the import limit in the window is the planned import.
    for site in allocation["sites"]:
        assert rows[site["site_id"]]["plan_version"] == site["plan_version"]
        assert site["incentive_per_kwh"] > 0
    async with db.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(fleet_event_sites))).scalar() == len(chosen)
    # Nothing is left to do and a second publish changes nothing.
    assert not await work_one(db, KEY, "w3", T0, OPTS)
    assert not await publish_event(db, KEY, event_id, T0, OPTS)
    assert await plan_versions(db) == after


async def test_a_worker_that_dies_mid_event_leaves_its_sites_to_the_others(db: Database) -> None:
    ids = await fleet(db, n=4, days=1)
    event_id = (await create_event(db, WINDOW, T0)).event_id
    # w1 claims two sites and dies: no curve, no release, its leases stand until they run out.
    dead = [await claim_job(db, "w1", T0), await claim_job(db, "w1", T0)]
    assert all(d is not None for d in dead)
    while await work_one(db, KEY, "w2", T0 + timedelta(seconds=5), OPTS):
        pass
    rows = await jobs(db, event_id)
    assert sorted(s for s, r in rows.items() if r["state"] == "pending") == sorted(d.site_id for d in dead if d)
    assert (await event_status(db, event_id, T0))["status"] == "planning"  # type: ignore[index]
    later = T0 + LEASE + timedelta(seconds=1)
    while await work_one(db, KEY, "w2", later, OPTS):
        pass
    rows = await jobs(db, event_id)
    assert {r["state"] for r in rows.values()} <= {"dispatched", "unchosen"}
    assert {s: r["attempts"] for s, r in rows.items()} == {
        s: 2 if s in {d.site_id for d in dead if d} else 1 for s in ids
    }
    status = await event_status(db, event_id, later)
    assert status is not None and status["status"] == "dispatched" and status["progress"]["pending"] == 0


async def test_the_publish_is_all_or_nothing(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    await fleet(db, n=3, days=1)
    before = await plan_versions(db)
    event_id = (await create_event(db, WINDOW, T0)).event_id
    real_sign = fleet_work.sign_plan
    calls = 0

    def failing_sign(key: SigningKey, plan: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 2:  # the worker dies half way through signing the chosen sites' plans
            raise RuntimeError("worker killed")
        return real_sign(key, plan)  # type: ignore[arg-type]

    monkeypatch.setattr(fleet_work, "sign_plan", failing_sign)
    with pytest.raises(RuntimeError, match="killed"):
        while await work_one(db, KEY, "w1", T0, OPTS):
            pass
    assert calls == 2  # at least two sites chosen, the failure was mid-publish
    assert await plan_versions(db) == before
    async with db.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(fleet_event_sites))).scalar() == 0
    assert (await event_status(db, event_id, T0))["status"] == "planning"  # type: ignore[index]
    monkeypatch.setattr(fleet_work, "sign_plan", real_sign)
    assert await work_one(db, KEY, "w2", T0, OPTS)  # the ready event is found and published whole
    rows = await jobs(db, event_id)
    chosen = {s for s, r in rows.items() if r["state"] == "dispatched"}
    after = await plan_versions(db)
    assert len(chosen) >= 2 and all(after[s] == before.get(s, 0) + 1 for s in chosen)


def _window_readings(start: object, hours: float, first_seq: int, import_kw: float) -> list[WireReading]:
    out: list[WireReading] = []
    t = start
    seq = first_seq
    for _ in range(int(hours * 4)):
        out.append(WireReading(seq=seq, der_id="meter", kind=DerKind.METER, ts=t, values={"power_w": import_kw * 1e3}))
        out.append(
            WireReading(seq=seq + 1, der_id="bat1", kind=DerKind.BATTERY, ts=t, values={"power_w": 0.0, "soc": 0.5})
        )
        seq += 2
        t = t + timedelta(minutes=15)  # type: ignore[operator]
    return out


async def test_acknowledgement_and_delivery_against_both_baselines(db: Database) -> None:
    ids = await fleet(db, n=2, days=1)
    # 20 days before the event day: a flat 1.2 kW on working days, 3 kW at weekends (T0 is a Monday), in the
    # event's clock window; the 10-of-10 baseline must be 1.2, from the 10 most recent working days only.
    sid = ids[0]
    seq = 10_000_000
    history: list[WireReading] = []
    for d in range(20, 0, -1):
        day = WINDOW.start.replace(minute=0) - timedelta(days=d)
        kw = 3.0 if day.weekday() >= 5 else 1.2
        history += _window_readings(day, 1, seq, kw)
        seq += 8
    # readings for old days arrive with later seqs: the cloud stores by seq, the series bins by time
    await ingest_lost(db, sid, history)
    more_than_all = EventRequest(WINDOW.start, WINDOW.end, 50.0)  # both sites are taken
    event_id = (await create_event(db, more_than_all, T0)).event_id
    while await work_one(db, KEY, "w", T0, OPTS):
        pass
    rows = await jobs(db, event_id)
    chosen = [s for s, r in rows.items() if r["state"] == "dispatched"]
    assert chosen
    version = int(rows[chosen[0]]["plan_version"])  # type: ignore[call-overload]
    assert await mark_fetched(db, chosen[0], version - 1, T0) == 0  # an older plan is no acknowledgement
    assert await mark_fetched(db, chosen[0], version, T0) == 1
    status = await event_status(db, event_id, T0)
    assert status is not None and status["progress"]["acknowledged"] == 1
    # the other site says over its channel that it took the plan (a PlanAck, cloud/server/channel_hub.py)
    other = next(s for s in chosen if s != chosen[0])
    async with db.engine.begin() as conn:
        await conn.execute(
            channel_sites.insert().values(site_id=other, plan_version=rows[other]["plan_version"], plan_applied_at=T0)
        )
    status = await event_status(db, event_id, T0)
    assert status is not None and status["progress"]["acknowledged"] == 2 and status["status"] == "acknowledged"
    assert sid in chosen
    # the window happens: 0.4 kW measured throughout
    await ingest_lost(db, sid, _window_readings(WINDOW.start.replace(minute=0), 1, seq, 0.4))
    status = await event_status(db, event_id, WINDOW.end + timedelta(minutes=5), delivery=True)
    assert status is not None and status["window"] == "over"
    (site,) = [s for s in status["delivery"]["sites"] if s["site_id"] == sid]
    assert site["measured_import_kw"] == pytest.approx(0.4)
    assert site["baseline_days"] == 10
    assert site["baseline_10of10_kw"] == pytest.approx(1.2)
    assert site["reduction_vs_10of10_kw"] == pytest.approx(0.8)
    assert site["baseline_plan_kw"] is not None and math.isfinite(site["baseline_plan_kw"])
    assert site["baseline_plan_source"] in (f"plan v{rows[sid]['prior_version']}", "counterfactual")
    assert site["reduction_vs_plan_kw"] == pytest.approx(site["baseline_plan_kw"] - 0.4, abs=1e-3)


async def ingest_lost(db: Database, site_id: str, rs: list[WireReading]) -> None:
    """Readings past a seq gap, declared lost in between (as a Zap whose outbox overflowed would)."""
    stored = await db.stored_through(site_id) or 0
    for i in range(0, len(rs), MAX_BATCH_READINGS):
        part = rs[i : i + MAX_BATCH_READINGS]
        batch = make_batch(site_id, part)
        if part[0].seq > stored + 1:
            batch = make_batch(site_id, part, lost_through=part[0].seq - 1)
        assert (await db.ingest_telemetry(batch)).accepted
        stored = part[-1].seq


async def test_the_sky_cache_changes_no_curve_and_no_allocation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same event over the same fleet, once with pvlib over each plan's whole window (as before the
    cache) and once from the day cache warmed by routine plans: every curve, choice and plan is the same."""
    from cloud import planner, sky_cache
    from cloud.forecast import clear_sky
    from cloud.planner import plan_next

    async def run(name: str) -> tuple[dict[str, tuple[object, ...]], dict[str, object]]:
        database = Database(f"sqlite+aiosqlite:///{tmp_path / name}.sqlite")
        await database.create_schema()
        try:
            await fleet(database, n=4, days=1)
            while await plan_next(database, KEY, "w", T0, OPTS) is not None:  # routine plans warm the cache
                pass
            event_id = (await create_event(database, WINDOW, T0)).event_id
            while await work_one(database, KEY, "w", T0, OPTS):
                pass
            rows = await jobs(database, event_id)
            async with database.engine.connect() as conn:
                got = await conn.execute(select(plans.c.site_id, plans.c.version, plans.c.body))
                bodies = {f"{r.site_id}/{r.version}": r.body for r in got}
        finally:
            await database.dispose()
        keys = ("state", "base_net_kw", "curve", "incentive", "reduction_kw", "extra_cost", "plan_version")
        return {s: tuple(r[k] for k in keys) for s, r in rows.items()}, bodies

    sky_cache.cache_clear()
    with monkeypatch.context() as m:
        m.setattr(planner, "clear_sky_cached", clear_sky)
        uncached = await run("uncached")
    assert sky_cache.cache_info().currsize == 0
    cached = await run("cached")
    assert sky_cache.cache_info().hits > 0
    assert cached[0] == uncached[0]
    assert any(state == "dispatched" for state, *_ in cached[0].values())
    assert cached[1] == uncached[1]  # the signed plans themselves, routine and DR, byte for byte


async def test_the_warm_ladder_gives_the_cold_ladders_curves_and_allocation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ladder as dispatched (rungs warm-started from the last basis, stopping at the reduction ceiling)
    against every rung solved cold: the same incentives, reductions and costs per site and the same
    allocation of a target that only some sites meet, from fewer solves. Each kept incentive is the smallest
    rung reaching its reduction: the rung below, solved cold here on its own, reduces less (the tie-break
    that makes the curve independent of the optimal vertex the solver lands on)."""
    from cloud import fleet as fleet_module
    from cloud.fleet import INCENTIVE_LADDER, SAME_KW, allocate, solve_curve
    from cloud.optimizer import solve
    from cloud.planner import prepare

    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'ladder'}.sqlite")
    await database.create_schema()
    try:
        ids = await fleet(database, n=N_SITES, days=1, assets=varied_batteries)
        bases = [await prepare(database, s, T0, OPTS) for s in ids]
    finally:
        await database.dispose()
    solves: list[int] = []
    real_solve = fleet_module.solve

    def counted(*args: Any, **kwargs: Any) -> Any:
        solves.append(1)
        return real_solve(*args, **kwargs)

    monkeypatch.setattr(fleet_module, "solve", counted)
    warm = [solve_curve(b, WINDOW.start, WINDOW.end, OPTS) for b in bases]
    n_warm = len(solves)
    cold = [solve_curve(b, WINDOW.start, WINDOW.end, OPTS, exhaustive=True) for b in bases]
    assert len(solves) - n_warm == N_SITES * (1 + len(INCENTIVE_LADDER))
    assert n_warm < (len(solves) - n_warm) / 2  # the ceiling stops most ladders early

    def points(curves: list[Any]) -> list[list[tuple[float, float, float]]]:
        return [[(o.incentive, o.reduction_kw, o.extra_cost) for o in c.curve.options] for c in curves]

    assert [[o[0] for o in c] for c in points(warm)] == [[o[0] for o in c] for c in points(cold)]
    for w, c in zip(points(warm), points(cold), strict=True):
        # kW and EUR to 1e-6: HiGHS solves to 1e-7, and two optimal vertices may differ that much in cost
        assert [x for o in w for x in o[1:]] == pytest.approx([x for o in c for x in o[1:]], abs=1e-6)
    assert any(len(c.curve.options) > 1 for c in warm)
    most = sum(c.curve.options[-1].reduction_kw for c in warm if c.curve.options)
    picked = {
        name: {s: (o.incentive, round(o.reduction_kw, 6)) for s, o in allocate([c.curve for c in cs], most / 2).items()}
        for name, cs in (("warm", warm), ("cold", cold))
    }
    assert picked["warm"] == picked["cold"] and 0 < len(picked["warm"]) < N_SITES

    for base, curve in zip(bases, warm, strict=True):
        mask = fleet_module._window_mask(base, WINDOW.start, WINDOW.end)
        base_net = fleet_module._net(solve(base.problem))
        for option in curve.curve.options:
            rung = INCENTIVE_LADDER.index(option.incentive)
            if rung == 0:
                continue
            below = solve(fleet_module._with_incentive(base, mask, INCENTIVE_LADDER[rung - 1]).problem)
            reduced = float(np.sum((base_net - fleet_module._net(below))[mask])) / 4
            assert reduced < option.reduction_kw - SAME_KW, (base.site_id, option)
