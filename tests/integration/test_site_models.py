"""Per-site forecaster training in the planner worker, against a real SQLite file and a real PostgreSQL:
models fitted from the site's telemetry, stored per site (bounded), reused by the next plan, refitted on their
schedule, replaced when unreadable, and a new site planned with the cold-start defaults."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from nacl.signing import SigningKey

from cloud import site_forecast
from cloud.assets import decode_assets
from cloud.db import Database
from cloud.forecast import GbmLoadForecaster
from cloud.forecast_models import MAX_STATE_BYTES, get_model, put_model
from cloud.forecast_pv import PvSiteModel
from cloud.planner import PlannerOptions, plan_site
from cloud.server.service import register_site
from cloud.site_forecast import LoadChoice, ModelChoice, PvChoice
from cloud.site_series import load_series
from cloud_sync.keys import public_key_b64
from tests.db_backends import BACKENDS, empty_db_url_async
from tests.integration.test_planner import ASSETS, T0, TARIFF, Q, ingest, put_prices, readings

TRAINED = PlannerOptions(models=ModelChoice(pv=PvChoice.FIT, load=LoadChoice.GBM))


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(await empty_db_url_async(request.param, tmp_path, "models"))
    await database.create_schema()
    try:
        yield database
    finally:
        await database.dispose()


async def _site(db: Database, site_id: str, days: int) -> None:
    await register_site(db, site_id, public_key_b64(SigningKey.generate()), assets=ASSETS, tariff=TARIFF, now=T0)
    start = T0.replace(hour=0, minute=0) - timedelta(days=days)
    await ingest(db, site_id, readings(start, T0.replace(minute=0), 1))
    await put_prices(db, T0.replace(hour=0, minute=0) - timedelta(hours=2), 24 * 12, T0)


async def test_models_are_fitted_stored_reused_and_refitted_on_schedule(db: Database) -> None:
    await _site(db, "home1", 28)
    key = SigningKey.generate()
    await plan_site(db, "home1", T0, key, options=TRAINED)
    pv, load = await get_model(db, "home1", "pv"), await get_model(db, "home1", "load")
    assert pv is not None and load is not None
    assert pv.fitted_at == T0 and load.fitted_at == T0
    assert len(load.state) <= MAX_STATE_BYTES and len(pv.state) < 2000
    model = PvSiteModel.from_json(pv.state)
    assert model.days >= 20 and 0.5 < model.kwp < 10.0  # fitted from the telemetry, not the default

    # an hour later: both models are reused as stored
    await plan_site(db, "home1", T0 + timedelta(hours=1), key, options=TRAINED)
    again_pv, again_load = await get_model(db, "home1", "pv"), await get_model(db, "home1", "load")
    assert again_pv == pv and again_load == load

    # eight days later (new telemetry meanwhile): the PV geometry is due (weekly); the load model is not
    # refitted (14 days) but continued on the eight new days: same full fit, a few more trees
    later = T0 + timedelta(days=8)
    stored = await db.stored_through("home1")
    assert stored is not None
    await ingest(db, "home1", readings(T0.replace(minute=0), later.replace(minute=0), stored + 1))
    await plan_site(db, "home1", later, key, options=TRAINED)
    pv2, load2 = await get_model(db, "home1", "pv"), await get_model(db, "home1", "load")
    assert pv2 is not None and pv2.fitted_at == later
    assert load2 is not None and load2.fitted_at == later and load2.state != load.state
    first, continued = (GbmLoadForecaster(T0, Q, "Europe/Amsterdam") for _ in range(2))
    assert first.load_state(load.state) == continued.load_state(load2.state)  # the same full fit
    assert continued.updated_at > continued.fitted_at
    assert continued.model.num_trees() == first.model.num_trees() + continued.update_rounds
    assert len(load2.state) <= MAX_STATE_BYTES


async def test_load_model_is_continued_from_the_plans_own_series_when_it_reaches_back_far_enough(
    db: Database,
) -> None:
    await _site(db, "home3", 70)
    assets = decode_assets(ASSETS)
    choice = TRAINED.models

    async def forecast(at: datetime, days: int) -> None:
        series = await load_series(db, "home3", at - timedelta(days=days), at, Q, has_battery=True, has_ev=False)
        out = await site_forecast.site_load_forecast(db, "home3", assets, series, 192, at, choice)
        assert out.shape == (192,) and np.all(np.isfinite(out))

    day0 = T0.replace(minute=0) - timedelta(days=2)
    await forecast(day0, 28)
    fitted = await get_model(db, "home3", "load")
    await forecast(day0 + timedelta(days=1), 40)  # the plan's series covers a continuation: no second query
    continued = await get_model(db, "home3", "load")
    assert fitted is not None and continued is not None and continued.fitted_at == day0 + timedelta(days=1)
    first, later = (GbmLoadForecaster(T0, Q, "Europe/Amsterdam") for _ in range(2))
    assert first.load_state(fitted.state) == later.load_state(continued.state)
    assert later.model.num_trees() == first.model.num_trees() + later.update_rounds


async def test_unreadable_model_is_counted_and_replaced(db: Database) -> None:
    await _site(db, "home2", 21)
    await put_model(db, "home2", "load", T0, b"garbage")
    await put_model(db, "home2", "pv", T0, b'{"tilt_deg": "x"}')
    before = dict(site_forecast.UNREADABLE_MODELS)
    await plan_site(db, "home2", T0 + timedelta(minutes=15), SigningKey.generate(), options=TRAINED)
    assert site_forecast.UNREADABLE_MODELS["load"] == before["load"] + 1
    assert site_forecast.UNREADABLE_MODELS["pv"] == before["pv"] + 1
    load = await get_model(db, "home2", "load")
    pv = await get_model(db, "home2", "pv")
    assert load is not None and load.state != b"garbage" and load.fitted_at == T0 + timedelta(minutes=15)
    assert pv is not None and PvSiteModel.from_json(pv.state).days > 0


async def test_new_site_is_planned_with_the_cold_start_defaults(db: Database) -> None:
    await _site(db, "new", 2)
    result = await plan_site(db, "new", T0, SigningKey.generate(), options=TRAINED)
    assert result.slots > 0
    assert await get_model(db, "new", "load") is None  # nothing to learn from yet: nothing stored
    assert await get_model(db, "new", "pv") is None


async def test_oversized_state_is_refused(db: Database) -> None:
    with pytest.raises(ValueError, match="too large"):
        await put_model(db, "x", "load", T0, b"\0" * (MAX_STATE_BYTES + 1))
    with pytest.raises(ValueError, match="unknown"):
        await put_model(db, "x", "weather", T0, b"{}")
