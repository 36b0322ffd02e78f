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


def decode_pv_upload(body: bytes, now: datetime) -> PvUpload:
    try:
        up = msgspec.json.decode(body, type=PvUpload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PvUploadError(f"pv-forecast: {exc}") from None
    if up.start.tzinfo is None:
        raise PvUploadError("pv-forecast: start needs a UTC offset")
    if up.step_minutes not in (15, 30, 60):
        raise PvUploadError("pv-forecast: step_minutes must be 15, 30 or 60")
    if not up.values_kw or timedelta(minutes=up.step_minutes) * len(up.values_kw) > MAX_SPAN:
        raise PvUploadError(f"pv-forecast: 1 value to {MAX_SPAN.days} days of values")
    for i, v in enumerate(up.values_kw):
        if not math.isfinite(v) or not 0.0 <= v <= MAX_KW:
            raise PvUploadError(f"pv-forecast: values_kw[{i}] must be finite and within 0..{MAX_KW:g}")
    if not now - timedelta(days=1) <= up.start <= now + MAX_SPAN:
        raise PvUploadError("pv-forecast: start must be between a day ago and a week ahead")
    if (up.start.minute % 15, up.start.second, up.start.microsecond) != (0, 0, 0):
        raise PvUploadError("pv-forecast: start must be on a quarter hour")
    return up


async def put_external_pv(db: Database, site_id: str, up: PvUpload, now: datetime) -> int:
    """Store the upload on the 15-minute grid; returns the number of 15-minute slots."""
    repeat = up.step_minutes // 15
    values = [v for v in up.values_kw for _ in range(repeat)]
    await store.save_forecast(db, site_id, KIND, now, up.start, STEP, values)
    return len(values)


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
    if row is None or row[1] != int(STEP.total_seconds()):
        return out
    first = row[0].replace(tzinfo=UTC) if row[0].tzinfo is None else row[0]  # SQLite: naive UTC
    values = np.asarray(row[2], dtype=np.float64)
    offset = int((first - start) // STEP)  # where the upload's first slot lands on the plan's grid
    lo, hi = max(0, offset), min(horizon, offset + len(values))
    if lo < hi:
        out[lo:hi] = values[lo - offset : hi - offset]
    return out


__all__ = ["KIND", "PvUpload", "PvUploadError", "decode_pv_upload", "external_pv_on_grid", "put_external_pv"]
