"""Per-site forecaster state in the database: the fitted PV site model and the load model of each site.

The planner worker keeps nothing in its process (any worker plans any site), so a model fitted for a site
is stored here with the instant it was fitted; the next plan of that site, on whatever worker, loads it and
refits only when it is older than its schedule. One row per (site, kind), replaced on every refit, so the
table's size is bounded by sites x kinds x the largest state (`MAX_STATE_BYTES`, refused above it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import Column, DateTime, LargeBinary, PrimaryKeyConstraint, String, Table, delete, insert, select

from cloud.db import Database, metadata

MAX_STATE_BYTES: Final = 512 * 1024
KINDS: Final = ("pv", "load")

forecast_models = Table(
    "forecast_models",
    metadata,
    Column("site_id", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # pv | load
    Column("fitted_at", DateTime(timezone=True), nullable=False),
    Column("state", LargeBinary, nullable=False),
    PrimaryKeyConstraint("site_id", "kind"),
)


@dataclass(frozen=True, slots=True)
class StoredModel:
    fitted_at: datetime
    state: bytes


async def get_model(db: Database, site_id: str, kind: str) -> StoredModel | None:
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(
                select(forecast_models.c.fitted_at, forecast_models.c.state).where(
                    forecast_models.c.site_id == site_id, forecast_models.c.kind == kind
                )
            )
        ).first()
    if row is None:
        return None
    # SQLite hands back naive datetimes of what was stored as UTC
    fitted_at = row[0].replace(tzinfo=UTC) if row[0].tzinfo is None else row[0].astimezone(UTC)
    return StoredModel(fitted_at=fitted_at, state=bytes(row[1]))


async def put_model(db: Database, site_id: str, kind: str, fitted_at: datetime, state: bytes) -> None:
    """Replace the site's model of this kind (delete + insert in one transaction: portable, and two workers
    refitting the same site at once each leave one whole row, the later one)."""
    if kind not in KINDS:
        raise ValueError(f"unknown forecast model kind {kind!r}")
    if len(state) > MAX_STATE_BYTES:
        raise ValueError(f"forecast model state too large: {len(state)} bytes > {MAX_STATE_BYTES}")
    async with db.engine.begin() as conn:
        await conn.execute(
            delete(forecast_models).where(forecast_models.c.site_id == site_id, forecast_models.c.kind == kind)
        )
        await conn.execute(insert(forecast_models).values(site_id=site_id, kind=kind, fitted_at=fitted_at, state=state))


__all__ = ["KINDS", "MAX_STATE_BYTES", "StoredModel", "forecast_models", "get_model", "put_model"]
