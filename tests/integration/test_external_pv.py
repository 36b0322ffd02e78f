"""A site's external PV forecast, uploaded to a real `zapcloud serve` on 127.0.0.1 (SQLite file): stored,
preferred by the planner where it has values (our own model elsewhere), scored against the measured PV like
our own forecasts, and every bad upload refused with a clear 422 / 404 and nothing stored."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from cloud.db import Database
from cloud.db import planning as store
from cloud.external_pv import KIND, external_pv_on_grid
from cloud.planner import PlannerOptions, prepare
from tests.integration.test_cloud_planning import put_prices, register, send_telemetry, serve


def _quarter(ts: datetime) -> datetime:
    return ts.replace(minute=ts.minute - ts.minute % 15, second=0, microsecond=0)


def test_uploaded_pv_forecast_is_used_where_it_has_values(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    start = _quarter(now)
    values = [round(0.5 + 0.1 * i, 3) for i in range(8)]  # 8 hours of hourly values from the current quarter
    with serve(tmp_path, "--no-planner") as srv:
        key = register(srv, "a")
        send_telemetry(srv, "a", key, now, soc=0.5)
        put_prices(srv, now)
        path = "/v1/sites/a/pv-forecast"
        body = {"start": start.isoformat(), "step_minutes": 60, "values_kw": values}
        r = srv.client.put(path, json=body, headers=srv.admin())
        assert r.status_code == 201, r.text
        assert r.json() == {"site_id": "a", "slots": 32}
        bad = [
            {**body, "values_kw": [-0.1]},
            {**body, "values_kw": [1e9]},
            {**body, "step_minutes": 20},
            {**body, "start": start.replace(tzinfo=None).isoformat()},
            {**body, "start": (start + timedelta(days=30)).isoformat()},
            {**body, "values_kw": [0.1] * (7 * 24 + 1)},
            {**body, "extra": 1},
        ]
        for b in bad:
            answer = srv.client.put(path, json=b, headers=srv.admin())
            assert answer.status_code == 422, (b, answer.text)
        assert srv.client.put("/v1/sites/nobody/pv-forecast", json=body, headers=srv.admin()).status_code == 404
        assert srv.client.put(path, json=body).status_code == 401

    async def check() -> None:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'cloud.sqlite'}")
        try:
            grid = await external_pv_on_grid(db, "a", start, 48, datetime.now(UTC))
            assert np.allclose(grid[:32], np.repeat(values, 4)) and np.isnan(grid[32:]).all()
            prepared = await prepare(db, "a", datetime.now(UTC), PlannerOptions())
            assert np.allclose(prepared.pv_forecast[:32], np.repeat(values, 4))  # the upload, not our model
            assert not np.allclose(prepared.pv_forecast[32:48], 0.5)  # past the upload: our model again
            # too old: a service that stopped sending is not used
            stale = await external_pv_on_grid(db, "a", start, 48, datetime.now(UTC) + timedelta(hours=49))
            assert np.isnan(stale).all()
            stored = await store.unscored_forecasts(db, "a", start + timedelta(days=2))
            assert [f.kind for f in stored].count(KIND) == 1  # one upload stored (the bad ones were not)
        finally:
            await db.dispose()

    asyncio.run(check())
