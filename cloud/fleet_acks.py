"""A demand-response dispatch is acknowledged when the Zap fetched its plan (polling).

Its own small module: `GET /v1/sites/{id}/plan` calls it on every new plan a Zap fetches, and must not
import the planner and optimizer (cloud/fleet_work.py) to do so.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update

from cloud.db import Database, fleet_event_jobs

J = fleet_event_jobs


async def mark_fetched(db: Database, site_id: str, version: int, now: datetime) -> int:
    """The Zap fetched plan `version`: every dispatched row of the site at or below it is acknowledged."""
    async with db.engine.begin() as conn:
        result = await conn.execute(
            update(J)
            .where(
                J.c.site_id == site_id,
                J.c.state == "dispatched",
                J.c.acked_at.is_(None),
                J.c.plan_version <= version,
            )
            .values(acked_at=now)
        )
    return int(result.rowcount or 0)


__all__ = ["mark_fetched"]
