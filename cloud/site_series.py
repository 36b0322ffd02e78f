"""A site's stored telemetry as regular series (15-minute means), the forecasters' and planner's input.

Readings arrive per DER at whatever rate the Zap samples; the planner thinks in slots. Each DER's power is
averaged per slot, DERs of one kind are summed (two inverters are one PV), and household load, which no
meter measures directly, is derived from the balance at the grid connection:

    load = grid import - battery charging - EV charging + PV        (ARCHITECTURE.md sign conventions)

unless a DER of kind `load` reports it. A slot with no meter reading has an unknown load (NaN), never 0:
forecasters skip unknowns, but would learn a wrong profile from invented zeros. The grid meter is the meter
DER the Zap reported with role `grid` (its DER capabilities, from the site config); a site that reported no
role (an older Zap) falls back to the meter DER with the most readings. Sub-meters are never added in.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import select

from cloud.db import Database, telemetry

FloatArray = npt.NDArray[np.float64]

# A state of charge older than this is unknown ("stale is unknown").
SOC_MAX_AGE = timedelta(minutes=30)


@dataclass(frozen=True, slots=True)
class SiteSeries:
    start: datetime
    step: timedelta
    grid_kw: FloatArray
    pv_kw: FloatArray
    battery_kw: FloatArray
    ev_kw: FloatArray
    load_kw: FloatArray
    soc: float | None  # latest battery SoC (mean over batteries), if fresh
    ev_connected: bool | None
    ev_soc: float | None
    last_seq: int

    @property
    def n(self) -> int:
        return len(self.grid_kw)


async def load_series(
    db: Database, site_id: str, start: datetime, end: datetime, step: timedelta, *, has_battery: bool, has_ev: bool
) -> SiteSeries:
    async with db.engine.connect() as conn:
        result = await conn.execute(
            select(telemetry.c.seq, telemetry.c.der_id, telemetry.c.kind, telemetry.c.ts, telemetry.c["values"])
            .where(telemetry.c.site_id == site_id, telemetry.c.ts >= start, telemetry.c.ts < end)
            .order_by(telemetry.c.ts)
        )
        # the rows are buffered; decoding them (JSON values, timestamps) and binning is CPU work on weeks of
        # telemetry: in a worker thread, so the serve worker's event loop keeps serving meanwhile
        rows = await asyncio.to_thread(lambda: [tuple(r) for r in result])
    grid = [
        m.get("der_id") for m in await db.der_models(site_id) if m.get("kind") == "meter" and m.get("role") == "grid"
    ]
    grid_meter = grid[0] if len(grid) == 1 and isinstance(grid[0], str) else None
    return await asyncio.to_thread(
        bin_readings, rows, start, end, step, has_battery=has_battery, has_ev=has_ev, grid_meter=grid_meter
    )


def bin_readings(
    rows: list[tuple[Any, ...]],
    start: datetime,
    end: datetime,
    step: timedelta,
    *,
    has_battery: bool,
    has_ev: bool,
    grid_meter: str | None = None,
) -> SiteSeries:
    """rows: (seq, der_id, kind, ts, values) in time order; `grid_meter` the DER id reported with role grid."""
    n = int((end - start) // step)
    step_s = step.total_seconds()
    sums: dict[str, FloatArray] = defaultdict(lambda: np.zeros(n))
    counts: dict[str, FloatArray] = defaultdict(lambda: np.zeros(n))
    kinds: dict[str, str] = {}
    socs: dict[str, tuple[datetime, float]] = {}
    ev_state: tuple[datetime, float | None, float | None] | None = None
    last_seq = 0
    for seq, der_id, kind, ts, values in rows:
        last_seq = max(last_seq, int(seq))
        ts = ts if ts.tzinfo is not None else ts.replace(tzinfo=start.tzinfo)
        i = int((ts - start).total_seconds() // step_s)
        power = values.get("power_w")
        if 0 <= i < n and power is not None:
            sums[der_id][i] += float(power) / 1000.0
            counts[der_id][i] += 1
            kinds[der_id] = kind
        if kind == "battery" and values.get("soc") is not None:
            socs[der_id] = (ts, float(values["soc"]))
        if kind == "ev_charger":
            ev_state = (ts, values.get("connected"), values.get("soc"))

    def per_kind(kind: str) -> FloatArray | None:
        ders = [d for d, k in kinds.items() if k == kind]
        if not ders:
            return None
        if kind == "meter" and grid_meter is not None:
            ders = [d for d in ders if d == grid_meter]  # a silent grid meter is unknown, never a sub-meter
            if not ders:
                return None
        elif kind == "meter":
            ders = [max(ders, key=lambda d: counts[d].sum())]
        total = np.zeros(n)
        seen = np.zeros(n, dtype=bool)
        for d in ders:
            have = counts[d] > 0
            total[have] += sums[d][have] / counts[d][have]
            seen |= have
        return np.where(seen, total, np.nan)

    nan = np.full(n, np.nan)
    grid = per_kind("meter")
    pv = per_kind("pv")
    battery = per_kind("battery")
    ev = per_kind("ev_charger")
    load = per_kind("load")
    grid = nan.copy() if grid is None else grid
    # PV inverters go quiet at night: a missing PV reading counts as 0 in the balance, but stays NaN in
    # pv_kw so that the PV factor is not learned from a day the inverter did not report.
    pv = np.zeros(n) if pv is None else pv
    # A site without the asset has 0 from it; a site with it but no reading has an unknown.
    battery = (nan.copy() if has_battery else np.zeros(n)) if battery is None else battery
    ev = (nan.copy() if has_ev else np.zeros(n)) if ev is None else ev
    if load is None:
        load = np.clip(grid - battery - ev + np.nan_to_num(pv, nan=0.0), 0.0, None)
    fresh = [v for t, v in socs.values() if end - t <= SOC_MAX_AGE]
    connected = ev_soc = None
    if ev_state is not None and end - ev_state[0] <= SOC_MAX_AGE:
        connected = None if ev_state[1] is None else bool(ev_state[1] >= 0.5)
        ev_soc = None if ev_state[2] is None else float(ev_state[2])
    return SiteSeries(
        start=start,
        step=step,
        grid_kw=grid,
        pv_kw=pv,
        battery_kw=battery,
        ev_kw=ev,
        load_kw=load,
        soc=float(np.mean(fresh)) if fresh else None,
        ev_connected=connected,
        ev_soc=ev_soc,
        last_seq=last_seq,
    )


__all__ = ["SOC_MAX_AGE", "SiteSeries", "bin_readings", "load_series"]
