"""A regional day-ahead PV forecast in the planner worker (cloud/pv_index_store.py, cloud.planner), on a real
SQLite file and a real PostgreSQL, and its upload endpoint on a real `zapcloud serve`: a site whose PV follows
the region's has each day planned on its learnt ratio to the uploaded forecast (a dark regional day: a dark
plan), the scenarios' dark / bright day from how past days came out against it, nothing uploaded after the
plan's start is read, the region's forecast is never scored as the site's, and a bad upload is a 422 with
nothing stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from cloud.db import Database
from cloud.db import planning as store
from cloud.planner import PlannerOptions, prepare, record_forecasts
from cloud.pv_index_store import KIND, PvIndexUpload, put_pv_index, pv_index_on_grid
from tests.db_backends import BACKENDS, empty_db_url_async
from tests.integration.test_cloud_planning import register, serve
from tests.integration.test_planner_risk import ASSETS, DAYS, PV_DAY, RISK, T0, _pv, _site

Q = timedelta(minutes=15)
FIRST = T0 - timedelta(days=DAYS)  # the site's first telemetry, and the region's first forecast


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(await empty_db_url_async(request.param, tmp_path, "pv_index"))
    await database.create_schema()
    try:
        yield database
    finally:
        await database.dispose()


def _region(days: int, today: float) -> list[float]:
    """The region's PV in MW per quarter hour from FIRST: 250 × the site's own PV on the past days, and on the
    two days from T0 a day at `today` of a clear one."""
    out = []
    for i in range(days * 96):
        t = FIRST + Q * i
        d = (t - FIRST).days
        out.append(250.0 * (_pv(t, d) if d < DAYS else _pv(t, 0) / PV_DAY[0] * today))
    return out


async def _upload(db: Database, site_id: str, values: list[float], issued: datetime) -> None:
    """As an operator would: a week at a time (the endpoint's limit), oldest first."""
    for w in range(0, len(values), 7 * 96):
        up = PvIndexUpload(start=FIRST + Q * w, step_minutes=15, values=values[w : w + 7 * 96])
        await put_pv_index(db, site_id, up, issued + timedelta(seconds=w))


def _today_kwh(pv_kw: np.ndarray) -> float:
    return float(np.sum(pv_kw[:80])) / 4  # T0 is 02:00 in De Bilt: the next 20 hours hold today's sun


async def test_each_day_is_planned_on_the_sites_ratio_to_the_regions_forecast(db: Database) -> None:
    for site_id, today in (("bright", 1.0), ("dark", 0.25)):
        await _site(db, site_id, ASSETS)
        await _upload(db, site_id, _region(DAYS + 2, today), T0 - timedelta(hours=2))
    await _site(db, "none", ASSETS)
    bright, dark, none = [await prepare(db, s, T0, RISK) for s in ("bright", "dark", "none")]
    # the site is exactly 1/250 of the region: today is forecast as the region says it will be
    clear_day = _today_kwh(np.array([_pv(T0 + Q * i, 0) for i in range(96)]))
    assert _today_kwh(bright.pv_forecast) == pytest.approx(clear_day, rel=0.03)
    assert _today_kwh(dark.pv_forecast) == pytest.approx(0.25 * clear_day, rel=0.03)
    mean_day = np.mean([PV_DAY[d % 7] for d in range(DAYS - 14, DAYS)])  # without it: the mean of two weeks
    assert _today_kwh(none.pv_forecast) == pytest.approx(mean_day * clear_day, rel=0.05)
    # the past days came out exactly as the region's forecast said: no dark or bright day around it today
    d_dark, d_bright = (np.asarray(r)[:80] for r in dark.pv_spread)
    assert np.allclose(d_dark, 1.0) and np.allclose(d_bright, 1.0)
    n_dark, n_bright = (np.asarray(r)[:80] for r in none.pv_spread)
    assert (n_dark < 0.9).any() and (n_bright > 1.1).any()
    assert dark.problem.pv_kw != bright.problem.pv_kw
    ignored = await prepare(db, "dark", T0, replace(RISK, pv_index=False))  # `zapcloud serve --no-pv-index`
    assert np.array_equal(ignored.pv_forecast, none.pv_forecast)


async def test_nothing_uploaded_after_the_plans_start_is_read(db: Database) -> None:
    await _site(db, "late", ASSETS)
    await _site(db, "none", ASSETS)
    await _upload(db, "late", _region(DAYS + 2, 0.25), T0 + timedelta(minutes=1))
    late, none = await prepare(db, "late", T0, RISK), await prepare(db, "none", T0, RISK)
    assert np.array_equal(late.pv_forecast, none.pv_forecast)
    assert np.isnan(await pv_index_on_grid(db, "late", FIRST, 96, T0)).all()
    grid = await pv_index_on_grid(db, "late", FIRST, 96, T0 + timedelta(hours=1))
    assert grid == pytest.approx(_region(1, 1.0))


async def test_a_later_upload_replaces_the_slots_it_covers_and_is_never_scored(db: Database) -> None:
    await _site(db, "a", ASSETS)
    await _upload(db, "a", _region(DAYS + 2, 1.0), T0 - timedelta(hours=3))
    fix = PvIndexUpload(start=T0, step_minutes=60, values=[7.0] * 24)  # the operator's corrected forecast
    await put_pv_index(db, "a", fix, T0 - timedelta(hours=1))
    grid = await pv_index_on_grid(db, "a", T0 - Q * 4, 8 + 24 * 4, T0)
    assert grid[:4] == pytest.approx(_region(DAYS + 2, 1.0)[DAYS * 96 - 4 : DAYS * 96])
    assert grid[4 : 4 + 96] == pytest.approx([7.0] * 96)
    prepared = await prepare(db, "a", T0 + timedelta(days=2), PlannerOptions(scenarios=False))
    await record_forecasts(db, prepared, PlannerOptions(forecast_score_slots=96))
    assert KIND not in await store.forecast_errors(db, "a", FIRST - timedelta(days=1))  # not scored as the site's
    left = await store.unscored_forecasts(db, "a", T0 + timedelta(days=3))
    assert KIND not in {f.kind for f in left}  # but marked as done with: not read again every plan


def test_the_upload_endpoint_stores_good_uploads_and_refuses_bad_ones(tmp_path: Path) -> None:
    now = datetime.now().astimezone()
    start = now.replace(minute=0, second=0, microsecond=0)
    with serve(tmp_path, "--no-planner") as srv:
        register(srv, "a")
        path = "/v1/sites/a/pv-index"
        body = {"start": start.isoformat(), "step_minutes": 60, "values": [0.0, 120.5, 310.0]}
        r = srv.client.put(path, json=body, headers=srv.admin())
        assert r.status_code == 201, r.text
        assert r.json() == {"site_id": "a", "slots": 12}
        backfill = {**body, "start": (start - timedelta(days=60)).isoformat()}
        assert srv.client.put(path, json=backfill, headers=srv.admin()).status_code == 201
        for bad in (
            {**body, "values": [-1.0]},
            {**body, "values": [1e7]},
            {**body, "values": ["x"]},
            {**body, "step_minutes": 20},
            {**body, "start": start.replace(tzinfo=None).isoformat()},
            {**body, "start": (start - timedelta(days=91)).isoformat()},
            {**body, "start": (start + timedelta(days=8)).isoformat()},
            {**body, "values": [1.0] * (7 * 24 + 1)},
            {**body, "extra": 1},
        ):
            answer = srv.client.put(path, json=bad, headers=srv.admin())
            assert answer.status_code == 422, (bad, answer.text)
            assert "pv-index" in answer.text or "malformed" in answer.text
        assert srv.client.put("/v1/sites/nobody/pv-index", json=body, headers=srv.admin()).status_code == 404
        assert srv.client.put(path, json=body).status_code == 401
