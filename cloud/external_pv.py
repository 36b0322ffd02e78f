"""An external PV forecast a site uploads (many users already pay a forecast service for one).

`PUT /v1/sites/{site_id}/pv-forecast` (admin) `{"start": RFC 3339, "step_minutes": 15|30|60, "values_kw": [...]}`:
mean PV power per step, at most 7 days, each value finite and within 0..`MAX_KW`, starting between a day ago and
a week ahead. Stored in the `forecasts` table as kind `pv_external` on the planner's 15-minute grid (a 30- or
60-minute value holds for each of its quarters), so it is also scored against the measured PV like our own.
The planner uses the latest one issued within `MAX_AGE` for the slots it covers, and its own model elsewhere
(the backtest does the same with `--pv-forecast-column`).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Final

import msgspec
import numpy as np
import numpy.typing as npt
from sqlalchemy import select

from cloud.db import Database, forecasts
from cloud.db import planning as store
from cloud.forecast import FloatArray

KIND: Final = "pv_external"
STEP: Final = timedelta(minutes=15)
MAX_KW: Final = 1000.0
MAX_SPAN: Final = timedelta(days=7)
MAX_AGE: Final = timedelta(hours=48)  # an older upload is not used: the service stopped sending


class PvUploadError(ValueError):
    """The upload is unusable; the message says which field."""


class PvUpload(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    start: datetime
    step_minutes: int
    values_kw: list[float]


def series_problem(
    start: datetime,
    step_minutes: int,
    values: list[float],
    field: str,
    max_value: float,
    earliest: datetime,
    now: datetime,
) -> str | None:
    """Why an uploaded series (this module's and cloud/pv_index_store.py's) cannot be stored, or None: its start
    with a UTC offset, on a quarter hour, from `earliest` to a week after `now`; a step of 15, 30 or 60
    minutes; 1 value to a week of them, each finite and within 0..`max_value`."""
    if start.tzinfo is None:
        return "start needs a UTC offset"
    if step_minutes not in (15, 30, 60):
        return "step_minutes must be 15, 30 or 60"
    if not values or timedelta(minutes=step_minutes) * len(values) > MAX_SPAN:
        return f"1 value to {MAX_SPAN.days} days of values"
    for i, v in enumerate(values):
        if not math.isfinite(v) or not 0.0 <= v <= max_value:
            return f"{field}[{i}] must be finite and within 0..{max_value:g}"
    if not earliest <= start <= now + MAX_SPAN:
        return f"start must be between {earliest.isoformat()} and a week ahead"
    if (start.minute % 15, start.second, start.microsecond) != (0, 0, 0):
        return "start must be on a quarter hour"
    return None


def decode_pv_upload(body: bytes, now: datetime) -> PvUpload:
    try:
        up = msgspec.json.decode(body, type=PvUpload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PvUploadError(f"pv-forecast: {exc}") from None
    earliest = now - timedelta(days=1)
    if problem := series_problem(up.start, up.step_minutes, up.values_kw, "values_kw", MAX_KW, earliest, now):
        raise PvUploadError(f"pv-forecast: {problem}")
    return up


async def store_series(
    db: Database, site_id: str, kind: str, start: datetime, step_minutes: int, values: list[float], now: datetime
) -> int:
    """Store an uploaded series as a `forecasts` row of `kind` on the 15-minute grid (a 30- or 60-minute value
    holds for each of its quarters), issued `now`; returns the number of 15-minute slots."""
    repeat = step_minutes // 15
    quarters = [v for v in values for _ in range(repeat)]
    await store.save_forecast(db, site_id, kind, now, start, STEP, quarters)
    return len(quarters)


def place(out: FloatArray, start: datetime, first: datetime, values: npt.ArrayLike) -> None:
    """Write a stored row's 15-minute `values` from `first` on onto `out`, the slots from `start` on (what
    falls outside is dropped; SQLite gives naive UTC times)."""
    first = first.replace(tzinfo=UTC) if first.tzinfo is None else first
    row = np.asarray(values, dtype=np.float64)
    offset = int((first - start) // STEP)
    lo, hi = max(0, offset), min(len(out), offset + len(row))
    if lo < hi:
        out[lo:hi] = row[lo - offset : hi - offset]


async def put_external_pv(db: Database, site_id: str, up: PvUpload, now: datetime) -> int:
    """Store the upload on the 15-minute grid; returns the number of 15-minute slots."""
    return await store_series(db, site_id, KIND, up.start, up.step_minutes, up.values_kw, now)


async def external_pv_on_grid(db: Database, site_id: str, start: datetime, horizon: int, now: datetime) -> FloatArray:
    """The latest fresh upload on the slots start..start+horizon-1 (15 minutes); NaN where it has no value."""
    out = np.full(horizon, np.nan)
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(
                select(forecasts.c.start, forecasts.c.step_s, forecasts.c["values"])
                .where(
                    forecasts.c.site_id == site_id,
                    forecasts.c.kind == KIND,
                    forecasts.c.issued_at >= now - MAX_AGE,
                    forecasts.c.issued_at <= now,
                )
                .order_by(forecasts.c.issued_at.desc())
                .limit(1)
            )
        ).first()
    if row is not None and row[1] == int(STEP.total_seconds()):
        place(out, start, row[0], row[2])
    return out


__all__ = [
    "KIND",
    "PvUpload",
    "PvUploadError",
    "decode_pv_upload",
    "external_pv_on_grid",
    "place",
    "put_external_pv",
    "series_problem",
    "store_series",
]
