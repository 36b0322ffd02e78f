"""The GraphQL schema of the data API (strawberry), served on /graphql of `zapcloud serve`.

Every resolver that reads site data calls `_gate(info, scope, site_id)`: the token must hold the scope
AND a grant for the site, checked in the resolver itself (a nested field never inherits a check from
its parent). Denials are GraphQL errors with `extensions.code` = the reason; a site the token was not
granted answers exactly like a site that does not exist.

Cost bounds: query depth, aliases and tokens are limited by strawberry's validation extensions; each
telemetry/price field adds its point count to a per-request budget (MAX_COST), and a time range ×
resolution over MAX_POINTS is refused before the database is touched.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, cast

import msgspec
import strawberry
from graphql import GraphQLError
from sqlalchemy import select
from strawberry.extensions import MaskErrors, MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter
from strawberry.scalars import JSON
from strawberry.types import Info

from cloud.dataapi import rollup, series
from cloud.dataapi.access import (
    PLANS_READ,
    PRICES_READ,
    SITE_READ,
    TELEMETRY_LIVE,
    TELEMETRY_READ,
    Access,
    AccessDenied,
)
from cloud.dataapi.flex import Flex, Live, site_flex, site_live
from cloud.db import Database, command_reports, der_models, forecasts, plans, sites, spot_prices, telemetry
from cloud.server import ingest_signal
from cloud.server.metrics import Metrics

MAX_COST = 20_000  # points (buckets, raw rows, price slots) one request may ask for in total
QUERY_TIMEOUT_S = 10.0
LIVE_POLL_S = 0.25
MAX_LIVE_PER_PROCESS = 200
QUARTER = timedelta(minutes=15)
_live = asyncio.Semaphore(MAX_LIVE_PER_PROCESS)


def _err(code: str, message: str) -> GraphQLError:
    return GraphQLError(message, extensions={"code": code})


def _ctx(info: Info[Any, Any]) -> dict[str, Any]:
    ctx: dict[str, Any] = info.context
    return ctx


def _access(info: Info[Any, Any]) -> Access:
    access = _ctx(info).get("access")
    if not isinstance(access, Access):
        raise _err("missing_token", str(_ctx(info).get("auth_error") or "Authorization: Bearer <token> required"))
    return access


def _gate(info: Info[Any, Any], scope: str, site_id: str | None) -> Database:
    try:
        _access(info).require(scope, site_id)
    except AccessDenied as exc:
        raise _err(exc.reason, exc.detail) from None
    db: Database = _ctx(info)["db"]
    return db


def _charge(info: Info[Any, Any], points: int) -> None:
    ctx = _ctx(info)
    ctx["cost"] = ctx.get("cost", 0) + points
    if ctx["cost"] > MAX_COST:
        raise _err("too_costly", f"query asks for more than {MAX_COST} points in total; split it")


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _on_minutes(ts: datetime) -> bool:
    return ts.second == 0 and ts.microsecond == 0


def _range(start: datetime, end: datetime, step_s: int) -> int:
    try:
        return series.check_range(start, end, step_s)
    except ValueError as exc:
        raise _err("bad_range", str(exc)) from None


@strawberry.enum
class Resolution(enum.Enum):
    RAW = "RAW"
    MIN1 = "MIN1"
    MIN15 = "MIN15"
    HOUR1 = "HOUR1"
    DAY1 = "DAY1"


@strawberry.enum
class PriceResolution(enum.Enum):
    MIN15 = "MIN15"
    MIN60 = "MIN60"


@strawberry.type
class Point:
    ts: datetime
    value: float


@strawberry.type
class Bucket:
    start: datetime
    mean: float
    min: float
    max: float
    count: int
    energy_wh: float | None = strawberry.field(description="power fields (*_w) only: Wh in the bucket")


@strawberry.type
class TelemetrySeries:
    der: str
    field: str
    resolution: Resolution
    points: list[Point] = strawberry.field(description="RAW only")
    buckets: list[Bucket] = strawberry.field(description="every resolution but RAW")
    has_more: bool = strawberry.field(description="RAW: more points follow; ask again from the last ts")


@strawberry.type
class Der:
    der_id: str
    kind: str
    capabilities: JSON


@strawberry.type
class CommandReport:
    ts: datetime
    der_id: str
    command: JSON
    result: str
    clamped_reason: str | None


@strawberry.type
class Plan:
    site_id: strawberry.Private[str]
    version: int
    issued_at: datetime
    valid_until: datetime
    body: strawberry.Private[bytes]

    @strawberry.field(description="the plan's slots as signed (start, end, intent)")
    def slots(self) -> JSON:
        doc: dict[str, Any] = msgspec.json.decode(self.body)
        return cast("JSON", doc.get("slots", []))

    @strawberry.field(description="what the site reported executing while this plan was valid")
    async def executed(self, info: Info[Any, Any], first: int = 500) -> list[CommandReport]:
        db = _gate(info, PLANS_READ, self.site_id)
        first = max(1, min(first, 5000))
        _charge(info, first)
        cr = command_reports
        stmt = (
            select(cr)
            .where(cr.c.site_id == self.site_id, cr.c.ts >= self.issued_at, cr.c.ts < self.valid_until)
            .order_by(cr.c.ts)
            .limit(first)
        )
        async with db.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            CommandReport(
                ts=_utc(r.ts), der_id=r.der_id, command=r.command, result=r.result, clamped_reason=r.clamped_reason
            )
            for r in rows
        ]


@strawberry.type
class Forecast:
    kind: str
    issued_at: datetime
    start: datetime
    step_s: int
    values: list[float]
    mae_kw: float | None = strawberry.field(description="day-ahead mean absolute error, once scored")
    scored_slots: int | None


@strawberry.type
class PricePoint:
    start: datetime
    price: float


@strawberry.type
class PriceSeries:
    area: str
    resolution: PriceResolution
    unit: str
    published_at: datetime | None = strawberry.field(
        description="when the source published these prices (the latest, if several); for prices stored "
        "before sources were recorded, when the cloud stored them"
    )
    source: str = strawberry.field(description="who published them: ENTSO-E, or the operator's upload's source")
    points: list[PricePoint]


@strawberry.type
class TariffPrice:
    start: datetime
    import_price: float
    export_price: float
    spot: float | None


@strawberry.type
class Link:
    stored_through: int
    lost_readings: int
    last_reading_at: datetime | None


async def price_series(
    db: Database, area: str, start: datetime, end: datetime, resolution: PriceResolution
) -> PriceSeries:
    """Day-ahead prices of a zone: 15-min rows as stored, or hourly means of complete hours."""
    async with asyncio.timeout(QUERY_TIMEOUT_S), db.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(
                    spot_prices.c.start,
                    spot_prices.c.price,
                    spot_prices.c.fetched_at,
                    spot_prices.c.source,
                    spot_prices.c.published_at,
                )
                .where(spot_prices.c.area == area, spot_prices.c.start >= start, spot_prices.c.start < end)
                .order_by(spot_prices.c.start)
            )
        ).all()
    # rows stored before migration 0008 know only when the cloud stored them
    published = max((_utc(r.published_at or r.fetched_at) for r in rows), default=None)
    sources = sorted({r.source for r in rows if r.source})
    pts = [PricePoint(start=_utc(r.start), price=float(r.price)) for r in rows]
    if resolution is PriceResolution.MIN60:
        hours: dict[datetime, list[float]] = {}
        for p in pts:
            hours.setdefault(p.start.replace(minute=0, second=0, microsecond=0), []).append(p.price)
        pts = [PricePoint(start=h, price=sum(v) / 4) for h, v in hours.items() if len(v) == 4]
    return PriceSeries(
        area=area,
        resolution=resolution,
        unit="per kWh",
        published_at=published,
        source=", ".join(sources) if sources else "day-ahead spot (ENTSO-E or operator upload)",
        points=pts,
    )


@strawberry.type
class Site:
    id: strawberry.ID
    _record: strawberry.Private[Any]

    @strawberry.field(description="the live channel's last status (rung, link); null without a channel")
    async def live(self, info: Info[Any, Any]) -> Live | None:
        db = _gate(info, SITE_READ, str(self.id))
        return await site_live(db, str(self.id))

    @strawberry.field(description="battery energy above reserve / below top and power limits, now")
    async def flexibility(self, info: Info[Any, Any]) -> Flex:
        db = _gate(info, SITE_READ, str(self.id))
        return await site_flex(db, str(self.id), self._record.assets, await site_live(db, str(self.id)))

    @strawberry.field
    def assets(self, info: Info[Any, Any]) -> JSON | None:
        _gate(info, SITE_READ, str(self.id))
        return cast("JSON | None", self._record.assets)

    @strawberry.field
    def tariff(self, info: Info[Any, Any]) -> JSON | None:
        _gate(info, SITE_READ, str(self.id))
        return cast("JSON | None", self._record.tariff)

    @strawberry.field
    def registered_at(self, info: Info[Any, Any]) -> datetime:
        _gate(info, SITE_READ, str(self.id))
        return _utc(self._record.registered_at)

    @strawberry.field(description="DERs and their capabilities, from the site's latest discovery report")
    async def ders(self, info: Info[Any, Any]) -> list[Der]:
        db = _gate(info, SITE_READ, str(self.id))
        async with db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(der_models.c.der_id, der_models.c.capabilities)
                    .where(der_models.c.site_id == str(self.id))
                    .order_by(der_models.c.der_id)
                )
            ).all()
        return [Der(der_id=r[0], kind=str(r[1].get("kind", "")), capabilities=r[1]) for r in rows]

    @strawberry.field
    async def link(self, info: Info[Any, Any]) -> Link:
        db = _gate(info, SITE_READ, str(self.id))
        async with db.engine.connect() as conn:
            last = (
                await conn.execute(
                    select(telemetry.c.ts)
                    .where(telemetry.c.site_id == str(self.id))
                    .order_by(telemetry.c.seq.desc())
                    .limit(1)
                )
            ).scalar()
        return Link(
            stored_through=int(self._record.stored_through),
            lost_readings=int(self._record.lost_readings),
            last_reading_at=None if last is None else _utc(last),
        )

    @strawberry.field(description="history of one field of one DER; mean/min/max (+Wh for *_w) per bucket")
    async def telemetry(
        self,
        info: Info[Any, Any],
        der: str,
        from_: Annotated[datetime, strawberry.argument(name="from")],
        to: datetime,
        resolution: Resolution = Resolution.MIN15,
        field: str = "power_w",
        first: int = 1000,
    ) -> TelemetrySeries:
        db = _gate(info, TELEMETRY_READ, str(self.id))
        step = series.RESOLUTION_S[resolution.value]
        n = _range(from_, to, step)
        first = max(1, min(first, series.MAX_POINTS))
        _charge(info, first if step == 0 else n)
        try:
            async with asyncio.timeout(QUERY_TIMEOUT_S):
                if step == 0:
                    pts, more = await series.raw(db, str(self.id), der, field, from_, to, first)
                    return TelemetrySeries(
                        der=der,
                        field=field,
                        resolution=resolution,
                        buckets=[],
                        has_more=more,
                        points=[Point(ts=t, value=v) for t, v in pts],
                    )
                aligned = _on_minutes(from_) and _on_minutes(to) and series.FIELD.match(field) is not None
                if aligned and await rollup.catch_up(db, str(self.id)):
                    got = await rollup.buckets(db, str(self.id), der, field, from_, to, step)
                else:  # off whole minutes, or the rollup is still folding a backlog: from the raw readings
                    got = await series.downsample(db, str(self.id), der, field, from_, to, step)
        except series.ScanLimitError as exc:
            raise _err("too_costly", str(exc)) from None
        except ValueError as exc:
            raise _err("bad_argument", str(exc)) from None
        except TimeoutError:
            raise _err("timeout", "query took too long; narrow it") from None
        buckets = [
            Bucket(start=b.start, mean=b.mean, min=b.min, max=b.max, count=b.count, energy_wh=b.energy_wh) for b in got
        ]
        return TelemetrySeries(der=der, field=field, resolution=resolution, points=[], buckets=buckets, has_more=False)

    @strawberry.field(description="newest first; `before` pages to older versions")
    async def plans(self, info: Info[Any, Any], first: int = 10, before: int | None = None) -> list[Plan]:
        db = _gate(info, PLANS_READ, str(self.id))
        first = max(1, min(first, 100))
        stmt = select(plans).where(plans.c.site_id == str(self.id))
        if before is not None:
            stmt = stmt.where(plans.c.version < before)
        async with db.engine.connect() as conn:
            rows = (await conn.execute(stmt.order_by(plans.c.version.desc()).limit(first))).all()
        return [
            Plan(
                site_id=r.site_id,
                version=int(r.version),
                issued_at=_utc(r.issued_at),
                valid_until=_utc(r.valid_until),
                body=bytes(r.body),
            )
            for r in rows
        ]

    @strawberry.field(description="the planner's forecasts, newest first, with their scored day-ahead error")
    async def forecasts(self, info: Info[Any, Any], first: int = 20, kind: str | None = None) -> list[Forecast]:
        db = _gate(info, PLANS_READ, str(self.id))
        first = max(1, min(first, 200))
        stmt = select(forecasts).where(forecasts.c.site_id == str(self.id))
        if kind is not None:
            stmt = stmt.where(forecasts.c.kind == kind)
        async with db.engine.connect() as conn:
            rows = (await conn.execute(stmt.order_by(forecasts.c.issued_at.desc()).limit(first))).all()
        return [
            Forecast(
                kind=r.kind,
                issued_at=_utc(r.issued_at),
                start=_utc(r.start),
                step_s=int(r.step_s),
                values=[float(v) for v in r.values],
                mae_kw=r.mae,
                scored_slots=r.mae_slots,
            )
            for r in rows
        ]

    @strawberry.field(description="the site's import/export price per 15 min: its tariff over the spot price")
    async def tariff_prices(
        self,
        info: Info[Any, Any],
        from_: Annotated[datetime, strawberry.argument(name="from")],
        to: datetime,
    ) -> list[TariffPrice]:
        from cloud.tariffs import TariffError, decode_tariff, export_price, import_price

        db = _gate(info, PRICES_READ, str(self.id))
        n = _range(from_, to, 900)
        _charge(info, n)
        if self._record.tariff is None:
            return []
        try:
            tariff = decode_tariff(self._record.tariff)
        except TariffError as exc:
            raise _err("bad_tariff", str(exc)) from None
        start = _utc(from_).replace(minute=_utc(from_).minute // 15 * 15, second=0, microsecond=0)
        spot: dict[datetime, float] = {}
        if tariff.spot_area:
            got = await price_series(db, tariff.spot_area, start, _utc(to), PriceResolution.MIN15)
            spot = {p.start: p.price for p in got.points}
        out = []
        t = start
        while t < to:
            s = spot.get(t)
            if s is not None or not tariff.needs_spot:
                out.append(
                    TariffPrice(
                        start=t,
                        import_price=import_price(tariff, t, s),
                        export_price=export_price(tariff, t, s),
                        spot=s,
                    )
                )
            t += QUARTER
        return out


@strawberry.type
class Me:
    scopes: list[str]
    sites: list[str] | None = strawberry.field(description="null: every site (operator)")
    client_id: str | None
    owner_id: str | None


async def _site_record(db: Database, site_id: str) -> Any:
    async with db.engine.connect() as conn:
        return (await conn.execute(select(sites).where(sites.c.site_id == site_id))).first()


@strawberry.type
class Query:
    @strawberry.field(description="what this token may read")
    def me(self, info: Info[Any, Any]) -> Me:
        a = _access(info)
        return Me(
            scopes=sorted(a.scopes),
            sites=None if a.sites is None else sorted(a.sites),
            client_id=a.client_id,
            owner_id=a.owner_id,
        )

    @strawberry.field(description="one site; each of its fields checks its own scope")
    async def site(self, info: Info[Any, Any], id: strawberry.ID) -> Site | None:
        access = _access(info)
        if not access.operator and str(id) not in (access.sites or ()):
            raise _err("forbidden_site", "this token has no grant for that site")
        row = await _site_record(_ctx(info)["db"], str(id))
        if row is None:
            if access.operator:
                return None
            raise _err("forbidden_site", "this token has no grant for that site")
        return Site(id=strawberry.ID(str(id)), _record=row)

    @strawberry.field(description="the sites this token may read (site:read)")
    async def sites(self, info: Info[Any, Any], first: int = 100, after: str | None = None) -> list[str]:
        db = _gate(info, SITE_READ, None)
        first = max(1, min(first, 1000))
        access = _access(info)
        stmt = select(sites.c.site_id).order_by(sites.c.site_id)
        if access.sites is not None:
            stmt = stmt.where(sites.c.site_id.in_(sorted(access.sites)))
        if after is not None:
            stmt = stmt.where(sites.c.site_id > after)
        async with db.engine.connect() as conn:
            return [r[0] for r in await conn.execute(stmt.limit(first))]

    @strawberry.field(description="day-ahead prices of a bidding zone (prices:read; not tied to a site)")
    async def prices(
        self,
        info: Info[Any, Any],
        area: str,
        from_: Annotated[datetime, strawberry.argument(name="from")],
        to: datetime,
        resolution: PriceResolution = PriceResolution.MIN15,
    ) -> PriceSeries:
        db = _gate(info, PRICES_READ, None)
        if len(area) > 32:
            raise _err("bad_argument", "area: at most 32 characters")
        _charge(info, _range(from_, to, 900))
        return await price_series(db, area, _utc(from_), _utc(to), resolution)


@strawberry.type
class Reading:
    seq: int
    der_id: str
    kind: str
    ts: datetime
    values: JSON


@strawberry.type
class Subscription:
    @strawberry.subscription(description="new readings of a site (optionally one DER) as they are stored")
    async def telemetry(
        self, info: Info[Any, Any], site: strawberry.ID, der: str | None = None
    ) -> AsyncGenerator[Reading, None]:
        db = _gate(info, TELEMETRY_LIVE, str(site))
        if _live.locked():
            raise _err("too_many_subscriptions", "this server holds its maximum of live subscriptions")
        async with _live:
            # Start after what is stored now: a subscription pushes new readings, history is `telemetry`.
            async with db.engine.connect() as conn:
                row = (await conn.execute(select(sites.c.stored_through).where(sites.c.site_id == str(site)))).scalar()
            after = int(row or 0)
            # Counted once its starting point is read: from here on, every new reading is pushed.
            metrics = _server_metrics(info)
            if metrics is not None:
                metrics.live_subscriptions += 1
            try:
                while True:
                    # Poll the database (every worker sees every ingest); re-check the token each round so a
                    # revoked or expired one stops the stream.
                    # Woken at once by an ingest in this worker (cloud/server/ingest_signal.py), else polled.
                    await ingest_signal.wait(str(site), LIVE_POLL_S)
                    await _recheck(info)
                    stmt = select(telemetry).where(telemetry.c.site_id == str(site), telemetry.c.seq > after)
                    if der is not None:
                        stmt = stmt.where(telemetry.c.der_id == der)
                    async with db.engine.connect() as conn:
                        rows = (await conn.execute(stmt.order_by(telemetry.c.seq).limit(1000))).all()
                    for r in rows:
                        after = max(after, int(r.seq))
                        yield Reading(seq=int(r.seq), der_id=r.der_id, kind=r.kind, ts=_utc(r.ts), values=r.values)
            finally:
                if metrics is not None:
                    metrics.live_subscriptions -= 1


def _server_metrics(info: Info[Any, Any]) -> Metrics | None:
    """The serving worker's counters (cloud/server/app.py keeps them on the app), or None outside a server."""
    app = getattr(_ctx(info).get("request"), "app", None)
    metrics = getattr(getattr(app, "state", None), "metrics", None)
    return metrics if isinstance(metrics, Metrics) else None


async def _recheck(info: Info[Any, Any]) -> None:
    ctx = _ctx(info)
    recheck = ctx.get("recheck")
    if recheck is not None:
        try:
            ctx["access"] = await recheck()
        except AccessDenied as exc:
            raise _err(exc.reason, exc.detail) from None


def _internal(error: GraphQLError) -> bool:
    """Validation errors and our own refusals (GraphQLError with a code) are shown; anything raised below is not."""
    original = error.original_error
    return original is not None and not isinstance(original, GraphQLError)


schema = strawberry.Schema(
    query=Query,
    subscription=Subscription,
    extensions=[
        lambda: QueryDepthLimiter(max_depth=6),
        lambda: MaxAliasesLimiter(max_alias_count=20),
        lambda: MaxTokensLimiter(max_token_count=2000),
        # Our own refusals carry a code; anything else (a database error, a bug) is logged by strawberry and
        # answered as "Unexpected error." so no SQL or internals reach the client.
        lambda: MaskErrors(should_mask_error=_internal),
    ],
)

__all__ = ["MAX_COST", "schema"]
