"""The planner's price forecast past the published day-ahead prices (PlannerOptions.price_forecast), against
a real SQLite file and a real PostgreSQL: off, the plan ends with the published prices; on, it covers the full
horizon with forecast prices made from the published ones only, and the stored flows say which are which."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from nacl.signing import SigningKey

from cloud.db import Database
from cloud.db import planning as store
from cloud.forecast_price import forecast_prices
from cloud.planner import PlannerOptions, plan_site, prepare
from cloud.server.service import register_site
from cloud.tariffs import decode_tariff, price_arrays
from cloud_sync.keys import public_key_b64
from tests.db_backends import BACKENDS, empty_db_url_async
from tests.integration.test_planner import ASSETS, T0, TARIFF, ingest, put_prices, readings


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(await empty_db_url_async(request.param, tmp_path, "pricefc"))
    await database.create_schema()
    try:
        yield database
    finally:
        await database.dispose()


async def test_forecast_prices_fill_the_horizon_and_are_flagged(db: Database) -> None:
    await register_site(db, "h", public_key_b64(SigningKey.generate()), assets=ASSETS, tariff=TARIFF, now=T0)
    await ingest(db, "h", readings(T0.replace(hour=0, minute=0) - timedelta(days=3), T0.replace(minute=0), 1))
    midnight = T0.replace(hour=0, minute=0)
    # eight days of published prices up to tonight's midnight UTC: tomorrow is not published yet
    await put_prices(db, midnight - timedelta(days=7), 8 * 24, T0)
    plain = await prepare(db, "h", T0, PlannerOptions())
    known = plain.problem.horizon
    assert plain.start + timedelta(minutes=15) * known == midnight + timedelta(days=1)

    options = PlannerOptions(price_forecast=True)
    prepared = await prepare(db, "h", T0, options)
    assert prepared.problem.horizon == options.horizon_slots and prepared.price_known_slots == known
    assert prepared.base_import_price[:known] == plain.base_import_price  # published: untouched
    assert prepared.problem.import_price[:known] == plain.problem.import_price
    spot = await store.get_spot_prices(db, TARIFF["spot_area"], midnight - timedelta(days=7), 8 * 96)
    start_index = int((prepared.start - (midnight - timedelta(days=7))) / timedelta(minutes=15))
    expected = forecast_prices(np.asarray(spot, dtype=np.float64), options.horizon_slots - known, 96)
    assert start_index + known == 8 * 96
    # the forecast slots' retail prices are the tariff applied to exactly that spot forecast
    starts = prepared.starts[known:]
    imp, exp = price_arrays(decode_tariff(TARIFF), starts, [float(x) for x in expected])
    assert prepared.base_import_price[known:] == pytest.approx(imp)
    assert prepared.base_export_price[known:] == pytest.approx(exp)

    await plan_site(db, "h", T0, SigningKey.generate(), options=options)
    flows = await store.latest_flows(db, "h")
    assert flows is not None
    flags = flows.flows["price_forecast"]
    assert flags[:known] == [0.0] * known and flags[known:] == [1.0] * (options.horizon_slots - known)
