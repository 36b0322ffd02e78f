"""A site's regional day-ahead PV forecast (cloud/forecast_pv_index.py), uploaded as it is published.

`PUT /v1/sites/{site_id}/pv-index` (admin) `{"start": RFC 3339, "step_minutes": 15|30|60, "values": [...]}`: one
value per step of a forecast that follows the site's PV (a transmission system operator's forecast of its
control area's PV in MW, or a forecast irradiance; the unit is free, the site learns its ratio to it), at most
7 days, each value finite and within 0..MAX_INDEX_VALUE, starting between `MAX_BACKFILL` ago and a week ahead:
an operator backfills the past weeks once (the ratio and the residual spread are learnt from them), then uploads
each day's forecast when it is published. Stored in the `forecasts` table as kind `pv_index` on the planner's
15-minute grid, one row per upload; a slot takes the latest upload that covers it. What is stored was uploaded
before the plan, so it was published then: the worker needs no publication rule (the backtest's
`--pv-index-lead-hours` stands for it).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

import msgspec
import numpy as np
from sqlalchemy import select

from cloud.db import Database, forecasts
from cloud.external_pv import MAX_SPAN, STEP, place, series_problem, store_series
from cloud.forecast import FloatArray
from cloud.forecast_pv_index import MAX_INDEX_VALUE

KIND: Final = "pv_index"
MAX_BACKFILL: Final = timedelta(days=90)  # the history the worker reads (cloud.planner.PV_INDEX_HISTORY_DAYS)


class PvIndexUploadError(ValueError):
    """The upload is unusable; the message says which field."""


class PvIndexUpload(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    start: datetime
    step_minutes: int
    values: list[float]


def decode_pv_index_upload(body: bytes, now: datetime) -> PvIndexUpload:
    try:
        up = msgspec.json.decode(body, type=PvIndexUpload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PvIndexUploadError(f"pv-index: {exc}") from None
    earliest = now - MAX_BACKFILL
    if problem := series_problem(up.start, up.step_minutes, up.values, "values", MAX_INDEX_VALUE, earliest, now):
        raise PvIndexUploadError(f"pv-index: {problem}")
    return up


async def put_pv_index(db: Database, site_id: str, up: PvIndexUpload, now: datetime) -> int:
    """Store the upload on the 15-minute grid; returns the number of 15-minute slots."""
    return await store_series(db, site_id, KIND, up.start, up.step_minutes, up.values, now)


async def pv_index_on_grid(db: Database, site_id: str, start: datetime, n: int, now: datetime) -> FloatArray:
    """The slots start..start+n-1 (15 minutes) from the uploads issued by `now`, each slot from the latest
    upload that covers it; NaN where none does."""
    out = np.full(n, np.nan)
    async with db.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(forecasts.c.start, forecasts.c.step_s, forecasts.c["values"])
                .where(
                    forecasts.c.site_id == site_id,
                    forecasts.c.kind == KIND,
                    forecasts.c.issued_at <= now,
                    forecasts.c.start < start + STEP * n,
                    forecasts.c.start >= start - MAX_SPAN,
                )
                .order_by(forecasts.c.issued_at)
            )
        ).all()
    for first, step_s, values in rows:  # oldest first: a later upload overwrites the slots it covers
        if step_s == int(STEP.total_seconds()):
            place(out, start, first, values)
    return out


__all__ = [
    "KIND",
    "MAX_BACKFILL",
    "PvIndexUpload",
    "PvIndexUploadError",
    "decode_pv_index_upload",
    "put_pv_index",
    "pv_index_on_grid",
]
