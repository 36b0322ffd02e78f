"""A site's battery flexibility right now, and its live state, for the fleet page and the GraphQL `site`.

Flexibility: how much energy the site's batteries hold above their reserve (what a demand-response
event could take out of them), the room below their top (what it could put in), and how fast, from:

* capacity and charge/discharge limits: the batteries' own figures in the Zap's latest discovery report
  (`capacity_wh`, `max_charge_w`, `max_discharge_w`, summed over battery DERs); where a figure is missing
  (0), the site's registered assets (`assets.battery`);
* reserve and top: the assets' `soc_min` / `soc_max` (the planner's bounds; the Zap's own
  `reserve_soc` is not reported to the cloud), defaults 0.1 / 0.95;
* SoC: the fresher of the Zap's live channel status and the newest battery reading uploaded.

Live state (`rung`, link, when) is what the Zap last said over its channel (cloud/server/channel_hub.py);
telemetry uploads do not carry the rung, so a site without a channel has none.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import strawberry
from sqlalchemy import select

from cloud.assets import AssetsError, decode_assets
from cloud.db import Database, der_models, telemetry
from cloud.server.channel_hub import live_sites

DEFAULT_SOC_MIN = 0.1
DEFAULT_SOC_MAX = 0.95


@strawberry.type(name="Flexibility", description="the batteries' flexibility now (cloud/dataapi/flex.py)")
class Flex:
    capacity_kwh: float | None
    soc: float | None
    soc_at: datetime | None
    soc_source: str | None = strawberry.field(description="channel (live status) or telemetry")
    reserve_soc: float
    max_soc: float
    available_kwh: float | None = strawberry.field(description="energy above the reserve")
    headroom_kwh: float | None = strawberry.field(description="room below the top")
    max_charge_kw: float | None
    max_discharge_kw: float | None
    limits_source: str = strawberry.field(description="discovery, assets, discovery+assets or none")


@strawberry.type(name="LiveStatus", description="what the Zap last said over its live channel")
class Live:
    connected: bool
    rung: str | None
    link: str | None
    soc: float | None
    grid_w: float | None
    status_at: datetime | None
    plan_version: int | None


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _positive(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if v > 0 and v == v and v != float("inf") else None


async def site_live(db: Database, site_id: str) -> Live | None:
    got = (await live_sites(db, [site_id])).get(site_id)
    if got is None:
        return None
    status = got.status or {}
    return Live(
        connected=got.connected,
        rung=status.get("rung") if isinstance(status.get("rung"), str) else None,
        link=status.get("link") if isinstance(status.get("link"), str) else None,
        soc=status.get("soc") if isinstance(status.get("soc"), int | float) else None,
        grid_w=status.get("grid_w") if isinstance(status.get("grid_w"), int | float) else None,
        status_at=got.status_at,
        plan_version=got.plan_version,
    )


async def site_flex(db: Database, site_id: str, assets_json: Any, live: Live | None) -> Flex:
    async with db.engine.connect() as conn:
        caps = [
            c
            for (c,) in await conn.execute(select(der_models.c.capabilities).where(der_models.c.site_id == site_id))
            if isinstance(c, dict) and c.get("kind") == "battery"
        ]
        last = (
            await conn.execute(
                select(telemetry.c.ts, telemetry.c["values"])
                .where(telemetry.c.site_id == site_id, telemetry.c.kind == "battery")
                .order_by(telemetry.c.seq.desc())
                .limit(1)
            )
        ).first()
    try:
        battery = decode_assets(assets_json).battery if assets_json is not None else None
    except AssetsError:
        battery = None
    sources: list[str] = []

    def total(field: str, scale: float, fallback: float | None) -> float | None:
        values = [v for v in (_positive(c.get(field)) for c in caps) if v is not None]
        if values:
            if "discovery" not in sources:
                sources.append("discovery")
            return sum(values) * scale
        if fallback is not None and fallback > 0:
            if "assets" not in sources:
                sources.append("assets")
            return fallback
        return None

    capacity = total("capacity_wh", 1e-3, battery.capacity_kwh if battery else None)
    charge = total("max_charge_w", 1e-3, battery.max_charge_kw if battery else None)
    discharge = total("max_discharge_w", 1e-3, battery.max_discharge_kw if battery else None)
    soc_min = battery.soc_min if battery else DEFAULT_SOC_MIN
    soc_max = battery.soc_max if battery else DEFAULT_SOC_MAX
    soc: float | None = None
    soc_at: datetime | None = None
    source: str | None = None
    if last is not None and isinstance(last[1], dict) and isinstance(last[1].get("soc"), int | float):
        soc, soc_at, source = float(last[1]["soc"]), _utc(last[0]), "telemetry"
    fresher = live is not None and live.status_at is not None and (soc_at is None or live.status_at > soc_at)
    if live is not None and live.soc is not None and fresher:
        soc, soc_at, source = float(live.soc), live.status_at, "channel"
    if soc is not None:
        soc = min(max(soc, 0.0), 1.0)
    available = headroom = None
    if capacity is not None and soc is not None:
        available = round(max(0.0, soc - soc_min) * capacity, 3)
        headroom = round(max(0.0, soc_max - soc) * capacity, 3)
    return Flex(
        capacity_kwh=capacity,
        soc=soc,
        soc_at=soc_at,
        soc_source=source,
        reserve_soc=soc_min,
        max_soc=soc_max,
        available_kwh=available,
        headroom_kwh=headroom,
        max_charge_kw=charge,
        max_discharge_kw=discharge,
        limits_source="+".join(sources) or "none",
    )


__all__ = ["Flex", "Live", "site_flex", "site_live"]
