"""Telemetry history for the data API: raw points and server-side downsampling.

One numeric field of one DER over [start, end). The database returns only (epoch seconds, value)
pairs, extracted from the reading's JSON in SQL, so no JSON is decoded in Python. Buckets carry
mean/min/max/count and, for power fields (`*_w`), the energy in Wh: each sample's power held until
the next sample, but never longer than MAX_HOLD_S (a gap in the data is not energy), attributed to
the bucket the sample falls in.

Bounds: a query scans at most MAX_SCAN_ROWS samples (`ScanLimitError` past it: narrow the range), and
returns at most MAX_POINTS points per page.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Float, cast, func, select

from cloud.db import Database, telemetry

RESOLUTION_S: dict[str, int] = {"RAW": 0, "MIN1": 60, "MIN15": 900, "HOUR1": 3600, "DAY1": 86400}
MAX_POINTS = 10_000
MAX_SCAN_ROWS = 1_000_000
MAX_RANGE = timedelta(days=400)
MAX_HOLD_S = 300.0
FIELD = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class ScanLimitError(ValueError):
    """The range holds more samples than one query may read."""


@dataclass(frozen=True, slots=True)
class Bucket:
    start: datetime
    mean: float
    min: float
    max: float
    count: int
    energy_wh: float | None


def _epoch(db: Database) -> ColumnElement[Any]:
    ts = telemetry.c.ts
    if db.engine.dialect.name == "postgresql":
        return cast(func.extract("epoch", ts), Float)
    # SQLite stores UTC datetimes as ISO text; julianday parses it.
    return (func.julianday(ts) - 2440587.5) * 86400.0


def check_range(start: datetime, end: datetime, step_s: int) -> int:
    """How many buckets the range asks for (its cost); ValueError for a bad or too large range."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("from/to need a UTC offset")
    if end <= start:
        raise ValueError("to must be after from")
    if end - start > MAX_RANGE:
        raise ValueError(f"range longer than {MAX_RANGE.days} days")
    if step_s == 0:
        return MAX_POINTS  # raw: one page
    n = math.ceil((end - start).total_seconds() / step_s)
    if n > MAX_POINTS:
        raise ValueError(f"{n} buckets asked; at most {MAX_POINTS} per query (coarser resolution or shorter range)")
    return n


async def samples(
    db: Database, site_id: str, der_id: str, field: str, start: datetime, end: datetime, limit: int
) -> list[tuple[float, float]]:
    """(epoch s, value) in time order; non-numeric or missing values are skipped."""
    if not FIELD.match(field):
        raise ValueError(f"bad field name {field[:40]!r}")
    value = telemetry.c["values"][field].as_float()
    stmt = (
        select(_epoch(db), value)
        .where(
            telemetry.c.site_id == site_id,
            telemetry.c.ts >= start.astimezone(UTC),
            telemetry.c.ts < end.astimezone(UTC),
            telemetry.c.der_id == der_id,
            value.is_not(None),
        )
        .order_by(telemetry.c.ts)
        .limit(limit)
    )
    async with db.engine.connect() as conn:
        result = await conn.execute(stmt)
        # julianday arithmetic is off by up to ~50 µs; readings carry at most ms precision that matters here.
        return [(round(float(t), 3), float(v)) for t, v in result if v is not None and math.isfinite(v)]


async def raw(
    db: Database, site_id: str, der_id: str, field: str, start: datetime, end: datetime, first: int
) -> tuple[list[tuple[datetime, float]], bool]:
    """Up to `first` raw points, and whether more follow (page on with from = last point + 1 µs)."""
    rows = await samples(db, site_id, der_id, field, start, end, first + 1)
    points = [(datetime.fromtimestamp(t, UTC), v) for t, v in rows[:first]]
    return points, len(rows) > first


async def downsample(
    db: Database, site_id: str, der_id: str, field: str, start: datetime, end: datetime, step_s: int
) -> list[Bucket]:
    rows = await samples(db, site_id, der_id, field, start, end, MAX_SCAN_ROWS + 1)
    if len(rows) > MAX_SCAN_ROWS:
        raise ScanLimitError(f"more than {MAX_SCAN_ROWS} samples in range; ask for a shorter range")
    return aggregate(rows, start.timestamp(), end.timestamp(), step_s, energy=field.endswith("_w"))


def aggregate(rows: list[tuple[float, float]], t0: float, t_end: float, step_s: int, *, energy: bool) -> list[Bucket]:
    """Bucket (epoch, value) samples in time order onto a grid starting at t0 (pure; unit-tested)."""
    out: list[Bucket] = []
    i, n = 0, len(rows)
    while i < n:
        k = int((rows[i][0] - t0) // step_s)
        b_end = t0 + (k + 1) * step_s
        total = 0.0
        lo, hi = math.inf, -math.inf
        wh = 0.0
        j = i
        while j < n and rows[j][0] < b_end:
            t, v = rows[j]
            total += v
            lo = min(lo, v)
            hi = max(hi, v)
            if energy:
                nxt = rows[j + 1][0] if j + 1 < n else t_end
                wh += v * min(max(nxt - t, 0.0), MAX_HOLD_S) / 3600.0
            j += 1
        count = j - i
        out.append(
            Bucket(
                start=datetime.fromtimestamp(t0 + k * step_s, UTC),
                mean=total / count,
                min=lo,
                max=hi,
                count=count,
                energy_wh=wh if energy else None,
            )
        )
        i = j
    return out
