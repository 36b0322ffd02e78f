"""How long one plan with model fits holds the serve worker's event loop (issue 11 item 3, fits off the loop).

A site with 70 days of 15-minute telemetry (synthetic load and PV on a real SQLite file) is planned once
with the trained forecasters (LightGBM load, pvlib PV site model), so both models are fitted in that plan,
while a probe task on the same loop sleeps 5 ms at a time: the longest gap between its wake-ups is the
longest the loop could not serve ingest, the channel or /healthz. Target: under 1 s, half of /healthz's
own 2 s deadline (cloud/server/app.py HEALTH_TIMEOUT_S), so a plan never makes a worker look dead.
`python -m bench.planner_loop`.

It also times the plan of a site on the default forecasters (factor PV, profile load) whose PV differs from day
to day, with and without the two-stage PV scenarios and the load reserve (cloud.plan_risk): the LP's share of
a plan, which the scenarios roughly double (three scenario LPs side by side).
"""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.table import Row, row

if TYPE_CHECKING:
    from cloud.db import Database

T0 = datetime(2026, 6, 15, 12, 7, tzinfo=UTC)
DAYS = 70
COMMAND = "python -m bench.planner_loop"
ASSETS: dict[str, Any] = {
    "location": {"lat": 52.1, "lon": 5.18},
    "timezone": "Europe/Amsterdam",
    "grid": {"max_import_kw": 17.0, "max_export_kw": 10.0},
    "battery": {"capacity_kwh": 10.0, "max_charge_kw": 5.0, "max_discharge_kw": 5.0},
    "pv": [{"kwp": 5.0, "tilt_deg": 35, "azimuth_deg": 180}],
}
TARIFF = {"energy": {"kind": "fixed", "price": 0.25}, "vat": 0.21, "export": {"kind": "fixed", "price": 0.07}}
# the risk timing's weather: each day's PV as a share of the clear day, a week's cycle (a spread to plan on)
PV_DAYS = (1.0, 0.35, 0.8, 0.55, 0.95, 0.25, 0.7)
RISK_PLANS = 5  # plans timed per setting (the median is reported)


def _readings(start: datetime, end: datetime, pv_days: tuple[float, ...] = (1.0,)) -> list[Any]:
    from cloud_sync.wire import WireReading
    from zapd.model import DerKind

    out: list[WireReading] = []
    t, seq = start, 1
    while t < end:
        h = t.hour + t.minute / 60
        load = 0.3 + 1.5 * math.exp(-(((h - 18) / 2) ** 2)) + 0.2 * (t.toordinal() % 7 == 5)
        pv = max(0.0, 3.5 * math.sin((h - 4) / 16 * math.pi)) if 4 <= h <= 20 else 0.0
        pv *= pv_days[t.toordinal() % len(pv_days)]
        for der, kind, values in (
            ("meter", DerKind.METER, {"power_w": (load - pv) * 1000}),
            ("pv1", DerKind.PV, {"power_w": pv * 1000}),
            ("bat1", DerKind.BATTERY, {"power_w": 0.0, "soc": 0.5}),
        ):
            out.append(WireReading(seq=seq, der_id=der, kind=kind, ts=t, values=values))
            seq += 1
        t += timedelta(minutes=15)
    return out


async def _stall_during(work: Any) -> tuple[float, float]:
    """(longest gap in ms a 5 ms-sleeping probe saw beyond its sleep, wall time in s) while `work` runs."""
    worst = 0.0
    done = asyncio.Event()

    async def probe() -> None:
        nonlocal worst
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            worst = max(worst, now - last - 0.005)
            last = now

    task = asyncio.create_task(probe())
    started = time.perf_counter()
    await work
    wall = time.perf_counter() - started
    done.set()
    await task
    return worst * 1000.0, wall


@asynccontextmanager
async def seeded_site(prefix: str, pv_days: tuple[float, ...] = (1.0,)) -> AsyncIterator[Database]:
    """A throwaway SQLite database holding site "s" (ASSETS, TARIFF) with `DAYS` of its telemetry up to T0
    (each day's PV that share of the clear day, in turn)."""
    from nacl.signing import SigningKey

    from cloud.db import Database
    from cloud.server.service import register_site
    from cloud_sync.keys import public_key_b64
    from cloud_sync.wire import MAX_BATCH_READINGS, make_batch

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        db = Database(f"sqlite+aiosqlite:///{Path(tmp) / 'p.sqlite'}")
        await db.create_schema()
        try:
            await register_site(db, "s", public_key_b64(SigningKey.generate()), assets=ASSETS, tariff=TARIFF, now=T0)
            rs = _readings(T0.replace(hour=0, minute=0) - timedelta(days=DAYS), T0.replace(minute=0), pv_days)
            for i in range(0, len(rs), MAX_BATCH_READINGS):
                await db.ingest_telemetry(make_batch("s", rs[i : i + MAX_BATCH_READINGS]))
            yield db
        finally:
            await db.dispose()


async def measure() -> tuple[float, float, float]:
    """(longest loop stall in ms, the plan's wall time in s) for one plan that fits both models, and the
    longest stall of the same probe over as long a time with nothing to do (the machine's own noise)."""
    from nacl.signing import SigningKey

    from cloud.planner import PlannerOptions, plan_site
    from cloud.site_forecast import LoadChoice, ModelChoice, PvChoice

    async with seeded_site("bench-planner-loop-") as db:
        options = PlannerOptions(models=ModelChoice(pv=PvChoice.FIT, load=LoadChoice.GBM))
        stall_ms, wall = await _stall_during(plan_site(db, "s", T0, SigningKey.generate(), options=options))
        idle_ms, _ = await _stall_during(asyncio.sleep(wall))
    return stall_ms, wall, idle_ms


async def measure_risk() -> dict[bool, tuple[float, float]]:
    """Per setting (two-stage scenarios and load reserve off / on): the median over RISK_PLANS plans of (the
    solve's ms, the whole plan's wall s), the default forecasters, a site with days of differing PV."""
    from nacl.signing import SigningKey

    from cloud.planner import PlannerOptions, plan_site

    out: dict[bool, tuple[float, float]] = {}
    async with seeded_site("bench-planner-risk-", PV_DAYS) as db:
        key = SigningKey.generate()
        await plan_site(db, "s", T0, key)  # the clear-sky cache and imports: not in either timing
        for risk in (False, True):
            options = PlannerOptions(scenarios=risk, load_reserve=risk)
            solves, walls = [], []
            for _ in range(RISK_PLANS):
                started = time.perf_counter()
                result = await plan_site(db, "s", T0, key, options=options)
                walls.append(time.perf_counter() - started)
                solves.append(result.solve_ms)
                if result.two_stage != risk:
                    raise RuntimeError(f"two-stage {result.two_stage}, expected {risk}")
            out[risk] = (sorted(solves)[len(solves) // 2], sorted(walls)[len(walls) // 2])
    return out


def rows() -> list[Row]:
    stall_ms, wall_s, idle_ms = asyncio.run(measure())
    risk = asyncio.run(measure_risk())
    (det_ms, det_s), (two_ms, two_s) = risk[False], risk[True]
    return [
        row("planner: longest event-loop stall in a plan fitting GBM + PV models", f"{stall_ms:.0f} ms", "< 1,000 ms",
            COMMAND),
        row("planner: the same probe idle for as long (machine noise)", f"{idle_ms:.0f} ms", "-", COMMAND),
        row("planner: that plan's wall time (70 days of telemetry)", f"{wall_s:.2f} s", "-", COMMAND),
        row("planner: default forecasters, LP solve / plan wall (median of 5)", f"{det_ms:.0f} ms / {det_s:.2f} s",
            "-", COMMAND),
        row("planner: the same with --scenarios --load-reserve (two-stage LP)", f"{two_ms:.0f} ms / {two_s:.2f} s",
            "-", COMMAND),
    ]  # fmt: skip


if __name__ == "__main__":
    from bench.table import print_table

    print_table(rows())
