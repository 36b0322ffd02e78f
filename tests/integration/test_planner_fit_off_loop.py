"""The planner's model fits run off the serve worker's event loop: while a site's GBM load model or PV site
model is being fitted inside a real `zapcloud serve` app (uvicorn on 127.0.0.1, its planner loop started by
the app's lifespan, a real SQLite file), the same worker answers /healthz.

The fit is held open until /healthz has answered (or 20 s passed): if the fit ran on the event loop, the
loop could not answer while it waits, so the fit would see no answer. Ordering, not timing, is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from nacl.signing import SigningKey
from starlette.applications import Starlette

from cloud import site_forecast
from cloud.db import Database
from cloud.forecast_load import GbmLoadForecaster
from cloud.forecast_models import get_model
from cloud.planner import PlannerOptions
from cloud.server.app import create_app
from cloud.server.service import register_site
from cloud.site_forecast import LoadChoice, ModelChoice, PvChoice
from cloud_sync.keys import public_key_b64
from tests.integration.test_planner import ASSETS, T0, TARIFF, ingest, put_prices, readings
from tests.ports import free_port
from tests.waiting import wait_until

HOLD_S = 20.0  # how long a fit waits for /healthz; only reached when the loop is blocked (the failure)


@contextlib.asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[str]:
    """The app under uvicorn on 127.0.0.1 WITH its lifespan (which starts the planner loop)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started or task.done(), 30, "uvicorn started")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


class Held:
    """Wraps a fit: says when it started, then waits for `answered` before fitting for real."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.started = threading.Event()
        self.answered = threading.Event()
        self.saw_answer: list[bool] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.started.set()
        self.saw_answer.append(self.answered.wait(HOLD_S))
        return self.real(*args, **kwargs)


@pytest.mark.parametrize("kind", ["load", "pv"])
async def test_healthz_answers_while_a_model_is_fitted(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'cloud.sqlite'}"
    db = Database(db_url)
    await db.create_schema()
    await register_site(db, "home1", public_key_b64(SigningKey.generate()), assets=ASSETS, tariff=TARIFF, now=T0)
    start = T0.replace(hour=0, minute=0)
    await ingest(db, "home1", readings(start - timedelta(days=28), T0.replace(minute=0), 1))
    await put_prices(db, start - timedelta(hours=2), 24 * 2 + 2, T0)

    if kind == "load":
        held = Held(GbmLoadForecaster.fit)
        monkeypatch.setattr(GbmLoadForecaster, "fit", lambda self, *a: held(self, *a))
        models = ModelChoice(load=LoadChoice.GBM)
    else:
        held = Held(site_forecast.fit_pv_site)
        monkeypatch.setattr(site_forecast, "fit_pv_site", held)
        models = ModelChoice(pv=PvChoice.FIT)
    admin = secrets.token_urlsafe(24)
    app = create_app(
        db_url,
        SigningKey.generate(),
        admin_token=admin,
        clock=lambda: T0,
        planner_idle_s=0.2,
        planner_options=PlannerOptions(models=models),
    )
    try:
        async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=30.0) as client:
            assert await asyncio.to_thread(held.started.wait, 60), "the planner never started a fit"
            health = await client.get("/healthz")  # answered by the loop while the fit waits in its thread
            assert health.status_code == 200
            held.answered.set()
            await wait_until(lambda: bool(held.saw_answer), 60, "the fit went on")

            async def fitted() -> bool:
                return await get_model(db, "home1", kind) is not None

            await wait_until(fitted, 60, "the fitted model, stored by the same plan", every_s=0.1)
    finally:
        await db.dispose()
    assert held.saw_answer[0] is True  # /healthz answered while the fit was running
