"""A site's own planner choices (`assets.planning`) against the serve worker's defaults, planned by the
planner's `plan_site` (what the loop in `zapcloud serve` calls) on a real SQLite file: where the site chose,
its choice is planned; where it did not, the serve default."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from cloud.db import Database
from cloud.db import planning as store
from cloud.execution import Execution
from cloud.forecast_models import get_model
from cloud.planner import PlannerOptions, plan_site, prepare
from cloud.server.service import register_site
from cloud.site_forecast import LoadChoice, ModelChoice, PvChoice
from cloud_sync.keys import public_key_b64
from tests.integration.test_planner import ASSETS, T0, TARIFF, ingest, put_prices, readings


async def _site(db: Database, site_id: str, planning: dict[str, Any] | None) -> None:
    assets = ASSETS if planning is None else {**ASSETS, "planning": planning}
    await register_site(db, site_id, public_key_b64(SigningKey.generate()), assets=assets, tariff=TARIFF, now=T0)
    await ingest(db, site_id, readings(T0.replace(hour=0, minute=0) - timedelta(days=21), T0.replace(minute=0), 1))


async def test_site_choices_override_the_serve_defaults(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'cloud.sqlite'}")
    await db.create_schema()
    try:
        midnight = T0.replace(hour=0, minute=0)
        await put_prices(db, midnight - timedelta(days=7), 8 * 24, T0)  # published up to tonight's midnight UTC
        await _site(db, "chooses", {"pv_model": "fit", "load_model": "gbm", "price_forecast": True})
        await _site(db, "default", None)
        await _site(db, "declines", {"price_forecast": False, "execution": "setpoint"})
        key = SigningKey.generate()

        serve_default = PlannerOptions()  # factor / profile, no price forecast
        for site in ("chooses", "default"):
            await plan_site(db, site, T0, key, options=serve_default)
        chooses, default = await store.latest_flows(db, "chooses"), await store.latest_flows(db, "default")
        assert chooses is not None and default is not None
        assert sum(chooses.flows["price_forecast"]) > 0 and len(chooses.flows["import_kw"]) == 192
        assert sum(default.flows["price_forecast"]) == 0 and len(default.flows["import_kw"]) < 192
        assert await get_model(db, "chooses", "pv") is not None and await get_model(db, "chooses", "load") is not None
        assert await get_model(db, "default", "pv") is None and await get_model(db, "default", "load") is None

        serve_on = PlannerOptions(price_forecast=True, models=ModelChoice(pv=PvChoice.FIT, load=LoadChoice.GBM))
        await plan_site(db, "declines", T0, key, options=serve_on)
        declines = await store.latest_flows(db, "declines")
        assert declines is not None and sum(declines.flows["price_forecast"]) == 0  # the site said no
        assert await get_model(db, "declines", "pv") is not None  # the serve default where it did not choose
        assert (await prepare(db, "declines", T0, serve_on)).execution is Execution.SETPOINT
        assert (await prepare(db, "default", T0, serve_on)).execution is serve_on.execution
    finally:
        await db.dispose()
