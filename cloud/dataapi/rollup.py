"""Per-minute rollups of telemetry, so history at 1 min .. 1 day reads aggregates, not raw readings.

Kept lazily: before a downsampled query, `catch_up` folds the site's readings stored since the last
run (by seq, up to the site's gap-free `stored_through`) into `telemetry_rollup`, in chunks. Every
numeric field of a reading is rolled up (count, sum, min, max, and the energy of holding each sample
until the next one of its series, at most MAX_HOLD_S). The last sample of each series waits in
`rollup_state.tails` until its successor arrives, so energy across runs is exact.

Workers may race: the run moves `rolled_through` with a conditional UPDATE inside the same
transaction as the upserts; the loser's transaction is rolled back, so nothing is counted twice.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Insert, Table, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.dataapi.series import FIELD, MAX_HOLD_S, Bucket
from cloud.dataapi.tables import rollup_state, telemetry_rollup, telemetry_rollup_hour
from cloud.db import Database, sites, telemetry

CHUNK = 20_000
CATCH_UP_BUDGET_S = 2.0


# min/max of a cell that carries only a held sample's energy: neutral for least()/greatest() and min()/max().
# Such a cell always merges into the row of the sample's own minute, which already counted it.
_NONE_MIN = 1e308


class _Lost(Exception):
    """Another worker rolled this range up first."""


def _merge(db: Database, r: Table) -> Insert:
    keys = ["site_id", "der_id", "field", "minute"]
    if db.engine.dialect.name == "postgresql":
        pg = postgresql.insert(r)
        ex: Any = pg.excluded
        least: Any = func.least
        greatest: Any = func.greatest
        stmt: Any = pg
    else:
        lite = sqlite.insert(r)
        ex = lite.excluded
        least, greatest = func.min, func.max  # SQLite's two-argument scalar min/max
        stmt = lite
    return stmt.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=keys,
        set_={
            "count": r.c.count + ex.count,
            "total": r.c.total + ex.total,
            "min": least(r.c.min, ex.min),
            "max": greatest(r.c.max, ex.max),
            "energy_wh": r.c.energy_wh + ex.energy_wh,
        },
    )


def _epoch(ts: datetime) -> float:
    return (ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts).timestamp()


def fold(
    rows: list[tuple[str, float, dict[str, Any]]], tails: dict[str, list[float]]
) -> dict[tuple[str, str, int], list[float]]:
    """Fold (der_id, epoch, values) readings into per-minute [count, sum, min, max, Wh] (pure; unit-tested).

    `tails` (series key "der|field" -> [epoch, value]) is read and updated in place.
    """
    acc: dict[tuple[str, str, int], list[float]] = {}

    def add(der: str, field: str, minute: int, v: float, wh: float, n: int) -> None:
        cell = acc.get((der, field, minute))
        if cell is None:
            acc[(der, field, minute)] = [n, v * n, v if n else math.inf, v if n else -math.inf, wh]
        else:
            cell[0] += n
            cell[1] += v * n
            if n:
                cell[2] = min(cell[2], v)
                cell[3] = max(cell[3], v)
            cell[4] += wh

    for der, t, values in rows:
        for field, raw in values.items():
            if isinstance(raw, bool) or not isinstance(raw, int | float) or not FIELD.match(field):
                continue
            v = float(raw)
            if not math.isfinite(v):
                continue
            key = f"{der}|{field}"
            prev = tails.get(key)
            if prev is not None and field.endswith("_w"):
                hold = min(max(t - prev[0], 0.0), MAX_HOLD_S)
                # The previous sample's energy lands in its own minute (no new sample counted there).
                add(der, field, int(prev[0] // 60), prev[1], prev[1] * hold / 3600.0, 0)
            tails[key] = [t, v]
            add(der, field, int(t // 60), v, 0.0, 1)
    return acc


def _hours(cells: dict[tuple[str, str, int], list[float]]) -> dict[tuple[str, str, int], list[float]]:
    out: dict[tuple[str, str, int], list[float]] = {}
    for (der, field, minute), c in cells.items():
        key = (der, field, minute // 60 * 60)
        h = out.get(key)
        if h is None:
            out[key] = list(c)
        else:
            h[0] += c[0]
            h[1] += c[1]
            h[2] = min(h[2], c[2])
            h[3] = max(h[3], c[3])
            h[4] += c[4]
    return out


async def catch_up(db: Database, site_id: str, *, budget_s: float = CATCH_UP_BUDGET_S) -> bool:
    """Fold new readings of the site into the rollup, for at most about `budget_s`; True once caught up.

    A site that uploads every minute folds a few hundred readings per query; a long backlog (bulk
    import, days offline) takes several calls, and the caller answers from raw readings meanwhile.
    """
    deadline = time.monotonic() + budget_s
    while True:
        try:
            n = await _one_chunk(db, site_id)
        except _Lost:
            return True  # another worker is folding this very range
        if n < CHUNK:
            return True
        if time.monotonic() >= deadline:
            return False


async def _one_chunk(db: Database, site_id: str) -> int:
    async with db.engine.begin() as conn:
        state = (await conn.execute(select(rollup_state).where(rollup_state.c.site_id == site_id))).first()
        through = int(state.rolled_through) if state is not None else 0
        tails: dict[str, list[float]] = dict(state.tails) if state is not None else {}
        stored = (await conn.execute(select(sites.c.stored_through).where(sites.c.site_id == site_id))).scalar()
        if stored is None or int(stored) <= through:
            return 0
        upto = min(int(stored), through + CHUNK)
        result = await conn.execute(
            select(telemetry.c.der_id, telemetry.c.ts, telemetry.c["values"])
            .where(telemetry.c.site_id == site_id, telemetry.c.seq > through, telemetry.c.seq <= upto)
            .order_by(telemetry.c.seq)
        )
        rows = [(d, _epoch(ts), v) for d, ts, v in result if isinstance(v, dict)]
        acc = fold(rows, tails)
        if acc:
            for table, cells in ((telemetry_rollup, acc), (telemetry_rollup_hour, _hours(acc))):
                await conn.execute(
                    _merge(db, table),
                    [
                        {"site_id": site_id, "der_id": der, "field": field, "minute": minute, "count": int(c[0]),
                         "total": c[1], "min": c[2] if c[0] else _NONE_MIN, "max": c[3] if c[0] else -_NONE_MIN,
                         "energy_wh": c[4]}
                        for (der, field, minute), c in cells.items()
                    ],
                )  # fmt: skip
        await _advance(conn, db, site_id, state is not None, through, upto, tails)
        return upto - through


async def _advance(
    conn: AsyncConnection, db: Database, site_id: str, exists: bool, old: int, new: int, tails: dict[str, list[float]]
) -> None:
    if exists:
        moved = await conn.execute(
            update(rollup_state)
            .where(rollup_state.c.site_id == site_id, rollup_state.c.rolled_through == old)
            .values(rolled_through=new, tails=tails)
        )
        if moved.rowcount != 1:
            raise _Lost
        return
    ins: Any = (postgresql.insert if db.engine.dialect.name == "postgresql" else sqlite.insert)(rollup_state)
    created = await conn.execute(ins.values(site_id=site_id, rolled_through=new, tails=tails).on_conflict_do_nothing())
    if created.rowcount != 1:
        raise _Lost


async def buckets(
    db: Database, site_id: str, der_id: str, field: str, start: datetime, end: datetime, step_s: int
) -> list[Bucket]:
    """Downsampled buckets from the rollup (start and end on whole minutes, step a multiple of 60 s)."""
    m0, m1, k = int(start.timestamp()) // 60, int(end.timestamp()) // 60, step_s // 60
    # Whole hours on whole-hour bounds read the hourly table (60x fewer rows); its `minute` keys step by 60.
    r = telemetry_rollup_hour if step_s % 3600 == 0 and m0 % 60 == 0 and m1 % 60 == 0 else telemetry_rollup
    bucket = (r.c.minute - m0) // k  # integer division in both dialects
    stmt = (
        select(
            bucket.label("b"),
            func.sum(r.c.count),
            func.sum(r.c.total),
            func.min(r.c.min),
            func.max(r.c.max),
            func.sum(r.c.energy_wh),
        )
        .where(
            r.c.site_id == site_id,
            r.c.der_id == der_id,
            r.c.field == field,
            r.c.minute >= m0,
            r.c.minute < m1,
        )
        .group_by("b")
        .order_by("b")
    )
    energy = field.endswith("_w")
    async with db.engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    out = []
    for b, n, total, lo, hi, wh in rows:
        n = int(n)
        if n == 0:  # only held energy, no sample of its own (cannot happen: a sample's own minute has it)
            continue
        out.append(
            Bucket(
                start=datetime.fromtimestamp((m0 + int(b) * k) * 60, UTC),
                mean=float(total) / n,
                min=float(lo),
                max=float(hi),
                count=n,
                energy_wh=float(wh) if energy else None,
            )
        )
    return out
