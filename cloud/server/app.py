"""The HTTP API of `zapcloud serve` (see docs/wire.md for the contract, docs/operations.md for limits).

Cheap checks come before expensive ones. A request from a Zap is refused on its headers alone when
they cannot be right (no key id, a signature that is not 64 bytes of base64, a declared body over the
cap, an unknown encoding), then on the key lookup and the site's rate limit; only then is its body read
(under a deadline), decompressed, hashed and decoded, in a worker thread so that a large body does not
stall the event loop. The signature is checked over the exact (decompressed) body bytes before the
JSON is decoded. Admin endpoints check the bearer token (constant time) before they read anything. All
state is in the database except the per-worker rate-limit buckets and metrics counters.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hmac
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import structlog
from nacl.signing import SigningKey, VerifyKey
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute

from cloud.db import Database, PlanVersionConflictError, SiteKeyConflictError, SiteRecord
from cloud.fleet_acks import mark_fetched
from cloud.server import bounds, ingest_signal
from cloud.server.auth import BearerTokens, check_token
from cloud.server.bounds import BoundsError
from cloud.server.channel import ChannelEndpoint
from cloud.server.channel_hub import ChannelHub
from cloud.server.limits import Limits, TokenBuckets, retry_after
from cloud.server.metrics import Metrics
from cloud.server.service import publish_plan, register_site
from cloud_sync.channel_wire import CHANNEL_PATH, MAX_COMMAND_TTL_S, Action, ChannelError
from cloud_sync.keys import key_id, load_verify_key_b64
from cloud_sync.wire import (
    HEADER_KEY_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    MAX_BODY_BYTES,
    MAX_REQUEST_SKEW_S,
    GapError,
    TelemetryAck,
    WireError,
    decode_batch,
    decode_discovery,
    decode_plan,
    encode,
    etag,
    gunzip_limited,
    if_none_match_hits,
    sign_body,
    verify_body,
    verify_request,
)

if TYPE_CHECKING:
    from cloud.planner import PlannerOptions

log = structlog.get_logger("zapcloud.api")

# Bounds one request end to end (slow client body + database); past it the answer is 503.
REQUEST_TIMEOUT_S = 30.0
HEALTH_TIMEOUT_S = 2.0
_MAX_KEY_ID_CHARS = 64
_MAX_SIGNATURE_CHARS = 128

T = TypeVar("T")


class SiteRegistration(msgspec.Struct, frozen=True, kw_only=True):
    site_id: str
    public_key: str
    assets: Any = None
    tariff: Any = None


class ApiError(Exception):
    """A refused request: status, a stable machine-readable reason, and a human detail."""

    def __init__(
        self,
        status: int,
        reason: str,
        detail: str = "",
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail
        self.body = body
        self.headers = headers or {}


@dataclass(frozen=True, slots=True)
class _Context:
    db: Database
    signing_key: SigningKey
    key_id: str
    admin_token: str  # the data API (cloud/dataapi) accepts it as a token with every scope
    tokens: BearerTokens
    clock: Callable[[], datetime]
    metrics: Metrics
    limits: Limits
    site_buckets: TokenBuckets
    admin_buckets: TokenBuckets
    fail_buckets: TokenBuckets
    cpu: asyncio.Semaphore
    max_request_skew_s: float = MAX_REQUEST_SKEW_S
    # Set by a new demand-response event so this worker's planner loop starts on it at once.
    wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    @property
    def future_skew(self) -> timedelta:
        return timedelta(seconds=self.max_request_skew_s)


Handler = Callable[[Request], Awaitable[Response]]


def create_app(
    db_url: str,
    signing_key: SigningKey,
    *,
    admin_token: str,
    metrics_token: str | None = None,
    limits: Limits | None = None,
    clock: Callable[[], datetime] | None = None,
    planner: bool = True,
    planner_idle_s: float = 5.0,
    planner_options: PlannerOptions | None = None,
    max_request_skew_s: float = MAX_REQUEST_SKEW_S,
    rate_scale: float = 1.0,
) -> Starlette:
    """Build the ASGI app. There is no open mode: `admin_token` is required (cloud/server/auth.py).

    `planner`: run the planning loop (cloud/planner.py) in this worker; every worker may, the database
    hands each due site to one of them, with `planner_options` (`zapcloud serve`'s planner flags,
    cloud/planner_settings.py; None: the defaults, no weather forecasts). `rate_scale` multiplies the request
    rates (a test on a sped-up clock sends requests that much faster).
    """
    admin_token = check_token(admin_token, "admin token")
    tokens = {"admin": admin_token}
    if metrics_token is not None:
        tokens["metrics"] = check_token(metrics_token, "metrics token")
    limits = limits or Limits()
    ctx = _Context(
        db=Database(db_url),
        signing_key=signing_key,
        key_id=key_id(signing_key),
        admin_token=admin_token,
        tokens=BearerTokens(tokens),
        clock=clock or (lambda: datetime.now(UTC)),
        metrics=Metrics(),
        limits=limits,
        site_buckets=TokenBuckets(limits.site_rate.scaled(rate_scale)),
        admin_buckets=TokenBuckets(limits.admin_rate.scaled(rate_scale)),
        fail_buckets=TokenBuckets(limits.fail_rate),
        cpu=asyncio.Semaphore(limits.cpu_slots),
        max_request_skew_s=max_request_skew_s,
    )

    hub = ChannelHub(ctx.db, ctx.metrics, ctx.clock)
    channel = ChannelEndpoint(
        db=ctx.db,
        hub=hub,
        metrics=ctx.metrics,
        limits=limits,
        clock=ctx.clock,
        fail_buckets=ctx.fail_buckets,
        max_skew_s=max_request_skew_s,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await ctx.db.create_schema()
        await hub.start()
        planning: asyncio.Task[None] | None = None
        if planner:
            from cloud.fleet_work import urgent_work
            from cloud.planner import price_client_from_env, run_planner

            planning = asyncio.create_task(
                run_planner(
                    ctx.db,
                    ctx.signing_key,
                    clock=ctx.clock,
                    options=planner_options,
                    price_client=price_client_from_env(),
                    idle_s=planner_idle_s,
                    urgent=urgent_work(ctx.db, ctx.signing_key),
                    wake=ctx.wake,
                ),
                name="planner",
            )
        try:
            yield
        finally:
            if planning is not None:
                planning.cancel()
                await asyncio.wait([planning])  # our own cancellation still propagates
            await hub.stop()
            await ctx.db.dispose()

    def ep(name: str, fn: Callable[[_Context, Request], Awaitable[Response]]) -> Handler:
        return _guarded(ctx, name, fn)

    routes = [
        Route("/healthz", ep("healthz", _healthz), methods=["GET"]),
        Route("/metrics", ep("metrics", _metrics), methods=["GET"]),
        Route("/v1/sites", ep("register", _register), methods=["POST"]),
        Route("/v1/sites/{site_id}/telemetry", ep("telemetry", _telemetry), methods=["POST"]),
        Route("/v1/sites/{site_id}/discovery", ep("discovery", _discovery), methods=["POST"]),
        Route("/v1/sites/{site_id}/plan", ep("plan_get", _plan_get), methods=["GET"]),
        Route("/v1/sites/{site_id}/plan", ep("plan_put", _plan_put), methods=["PUT"]),
        Route("/v1/prices/{area}", ep("prices_put", _prices_put), methods=["PUT"]),
        Route("/v1/fleet/flexibility", ep("fleet_flexibility", _fleet_flexibility), methods=["GET"]),
        Route("/v1/fleet/events", ep("fleet_event", _fleet_event), methods=["POST"]),
        Route("/v1/fleet/events/{event_id}", ep("fleet_event_get", _fleet_event_get), methods=["GET"]),
        Route("/v1/sites/{site_id}/forecast-errors", ep("forecast_errors", _forecast_errors), methods=["GET"]),
        Route("/v1/sites/{site_id}/pv-forecast", ep("pv_forecast_put", _pv_forecast_put), methods=["PUT"]),
        Route("/v1/sites/{site_id}/pv-index", ep("pv_index_put", _pv_index_put), methods=["PUT"]),
        Route("/v1/sites/{site_id}/commands", ep("command_post", _command_post), methods=["POST"]),
        Route("/v1/commands/{command_id}", ep("command_get", _command_get), methods=["GET"]),
        WebSocketRoute(CHANNEL_PATH, channel.handle),
    ]

    def wrap(name: str, fn: Callable[[Request], Awaitable[Response]]) -> Handler:
        return _guarded(ctx, name, lambda _ctx, request: fn(request))

    # the data API (issue 16): OAuth, GraphQL, prices, web pages; built on its first request (cloud/dataapi/mount.py)
    from cloud.dataapi.mount import data_api_routes, missing_library

    if (missing := missing_library()) is None:
        extra = data_api_routes(
            ctx.db, ctx.clock, ctx.admin_token, lambda r: _require_admin(ctx, r), wrap, count=ctx.metrics.reject
        )
    else:  # an older install without authlib/strawberry: serve the Zap API alone
        log.warning("server.data_api_unavailable", missing=missing, hint="pip install -e '.[cloud]'")
        extra = []
    app = Starlette(routes=[*routes, *extra], lifespan=lifespan)
    app.state.db = ctx.db
    app.state.metrics = ctx.metrics
    app.state.channel_hub = hub
    return app


def _guarded(ctx: _Context, name: str, fn: Callable[[_Context, Request], Awaitable[Response]]) -> Handler:
    """Turn refusals, timeouts and database failures into counted, logged HTTP answers."""

    async def handler(request: Request) -> Response:
        site_id = request.path_params.get("site_id")
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                response = await fn(ctx, request)
        except ApiError as exc:
            ctx.metrics.reject(name, exc.reason)
            if exc.status == 401:
                ctx.fail_buckets.charge(_client(request))
            # A flood of 429s would flood the log too: the counter has them.
            level = log.debug if exc.status == 429 else log.info
            level(
                "request_rejected",
                endpoint=name,
                site_id=site_id,
                status=exc.status,
                reason=exc.reason,
                detail=exc.detail,
            )
            body = exc.body if exc.body is not None else encode({"error": exc.reason, "detail": exc.detail})
            return Response(body, status_code=exc.status, media_type="application/json", headers=exc.headers)
        except TimeoutError:
            ctx.metrics.reject(name, "timeout")
            log.warning("server.request_timeout", endpoint=name, site_id=site_id)
            return _json({"error": "timeout", "detail": "request took too long"}, 503)
        except SQLAlchemyError as exc:
            ctx.metrics.reject(name, "database")
            log.error("server.database_error", endpoint=name, site_id=site_id, error=type(exc).__name__)
            return _json({"error": "database", "detail": "database unavailable"}, 503)
        ctx.metrics.accept(name)
        return response

    return handler


def _json(obj: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(encode(obj), status_code=status, media_type="application/json", headers=headers)


# --- request plumbing -------------------------------------------------------------------


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _rate_limited(wait_s: float, what: str) -> ApiError:
    return ApiError(
        429, "rate_limited", f"too many {what}; retry in {wait_s:.1f} s", headers={"Retry-After": retry_after(wait_s)}
    )


def _check_fail_budget(ctx: _Context, request: Request) -> None:
    """An address that keeps failing authentication is refused before any lookup."""
    wait = ctx.fail_buckets.spent(_client(request))
    if wait > 0:
        raise _rate_limited(wait, "failed authentications from this address")


def _check_body_headers(request: Request) -> str:
    """Size and encoding as declared, before anything is read; returns the encoding."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "bad_request", "bad Content-Length") from None
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "too_large", f"body larger than {MAX_BODY_BYTES} bytes")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity", "gzip"):
        raise ApiError(415, "unsupported_encoding", f"Content-Encoding {encoding[:40]!r} (use gzip or none)")
    return encoding


async def _read_raw(ctx: _Context, request: Request) -> bytes:
    """The raw body, size-capped, within the body deadline."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(ctx.limits.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise ApiError(413, "too_large", f"body larger than {MAX_BODY_BYTES} bytes")
                chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "client_disconnect", "client went away while sending the body") from None
    except TimeoutError:
        detail = f"body not received within {ctx.limits.body_timeout_s:g} s"
        raise ApiError(408, "body_timeout", detail, headers={"Connection": "close"}) from None
    return b"".join(chunks)


def _decompress(raw: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        try:
            return gunzip_limited(raw)
        except WireError as exc:
            raise ApiError(400, "bad_encoding", str(exc)) from None
    return raw


async def _in_thread(ctx: _Context, fn: Callable[[], T]) -> T:
    """CPU work on a body (gunzip, hashing, JSON) off the event loop, `limits.cpu_slots` at a time."""
    async with ctx.cpu:
        return await asyncio.to_thread(fn)


def _decode_or_422(decode: Callable[[bytes], T], body: bytes) -> T:
    try:
        return decode(body)
    except ValueError as exc:  # WireError, BoundsError, EventError: messages fit for the client
        raise ApiError(422, "malformed", str(exc)) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ApiError(422, "malformed", f"malformed body: {exc}") from None


async def _admin_body(ctx: _Context, request: Request, decode: Callable[[bytes], T]) -> T:
    """An admin request's body, decoded (the caller has checked the token)."""
    encoding = _check_body_headers(request)
    raw = await _read_raw(ctx, request)
    return await _in_thread(ctx, lambda: _decode_or_422(decode, _decompress(raw, encoding)))


def _signature_header(request: Request) -> str:
    signature = request.headers.get(HEADER_SIGNATURE)
    if not signature:
        raise ApiError(401, "missing_signature", f"{HEADER_SIGNATURE} header required")
    try:
        if len(signature) > _MAX_SIGNATURE_CHARS or len(base64.b64decode(signature, validate=True)) != 64:
            raise ValueError
    except (binascii.Error, ValueError):
        raise ApiError(401, "bad_signature", f"{HEADER_SIGNATURE} is not base64 of 64 bytes") from None
    return signature


async def _site_for_key(ctx: _Context, request: Request, site_id: str) -> tuple[SiteRecord, VerifyKey]:
    """The site's registered key, if the request names it; 401 otherwise (never says which).

    Then the site's rate limit: a flood under one valid key is refused before its body is read.
    """
    _check_fail_budget(ctx, request)
    kid = request.headers.get(HEADER_KEY_ID)
    if not kid:
        raise ApiError(401, "missing_key_id", f"{HEADER_KEY_ID} header required")
    if len(kid) > _MAX_KEY_ID_CHARS or len(site_id) > 64:
        raise ApiError(401, "unknown_key", "key id not registered for this site")
    site = await ctx.db.get_site(site_id)
    if site is None or not hmac.compare_digest(site.key_id.encode(), kid.strip().encode()):
        raise ApiError(401, "unknown_key", "key id not registered for this site")
    wait = ctx.site_buckets.take(site.key_id)
    if wait > 0:
        raise _rate_limited(wait, "requests for this site")
    return site, load_verify_key_b64(site.public_key)


async def _signed(ctx: _Context, request: Request, site_id: str, decode: Callable[[bytes], T]) -> tuple[SiteRecord, T]:
    """A Zap's signed POST: headers, key and rate first, then body, signature and decoding."""
    _check_fail_budget(ctx, request)
    signature = _signature_header(request)
    encoding = _check_body_headers(request)
    site, verify_key = await _site_for_key(ctx, request, site_id)
    raw = await _read_raw(ctx, request)

    def work() -> T:
        body = _decompress(raw, encoding)
        if not verify_body(verify_key, body, signature):
            raise ApiError(401, "bad_signature", "signature does not match the body")
        return _decode_or_422(decode, body)

    return site, await _in_thread(ctx, work)


def _require_admin(ctx: _Context, request: Request, *, metrics: bool = False) -> None:
    """The admin token (or, for `metrics`, the metrics token); each has its own rate limit."""
    _check_fail_budget(ctx, request)
    name = ctx.tokens.match(request.headers.get("authorization"))
    if name is None or (name == "metrics" and not metrics):
        raise ApiError(401, "admin_auth", "admin bearer token required", headers={"WWW-Authenticate": "Bearer"})
    wait = ctx.admin_buckets.take(name)
    if wait > 0:
        raise _rate_limited(wait, "admin requests")


# --- endpoints --------------------------------------------------------------------------


async def _healthz(ctx: _Context, _request: Request) -> Response:
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S):
            await ctx.db.ping()
    except (TimeoutError, SQLAlchemyError):
        raise ApiError(503, "unhealthy", "database unreachable") from None
    return _json({"status": "ok", "cloud_key_id": ctx.key_id})


async def _metrics(ctx: _Context, request: Request) -> Response:
    _require_admin(ctx, request, metrics=True)
    return Response(ctx.metrics.render(), media_type="text/plain; version=0.0.4")


def _decode_registration(body: bytes) -> SiteRegistration:
    return msgspec.json.decode(body, type=SiteRegistration)


def _check_registration(reg: SiteRegistration) -> None:
    """The site's planner overrides (`assets.planning`, cloud/assets.py) are checked at registration: a bad one
    is a 422 naming the field, not a site whose every plan fails later. (The rest of `assets` and `tariff` is
    checked when the site is planned, as before: a site that does not decode is not planned.)"""
    from cloud.assets import check_planning

    if isinstance(reg.assets, dict) and "planning" in reg.assets:
        check_planning(reg.assets["planning"])


async def _register(ctx: _Context, request: Request) -> Response:
    _require_admin(ctx, request)
    reg = await _admin_body(ctx, request, _decode_registration)
    try:
        _check_registration(reg)
        kid = await register_site(
            ctx.db, reg.site_id, reg.public_key, assets=reg.assets, tariff=reg.tariff, now=ctx.clock()
        )
    except ValueError as exc:
        raise ApiError(422, "malformed", str(exc)) from None
    except SiteKeyConflictError as exc:
        raise ApiError(409, "key_conflict", str(exc)) from None
    log.info("server.site_registered", site_id=reg.site_id, key_id=kid)
    return _json({"site_id": reg.site_id, "key_id": kid}, 201)


async def _telemetry(ctx: _Context, request: Request) -> Response:
    site_id = request.path_params["site_id"]
    site, batch = await _signed(ctx, request, site_id, decode_batch)
    if batch.site_id != site_id:
        raise ApiError(422, "site_mismatch", f"batch is for site {batch.site_id!r}, URL says {site_id!r}")
    try:
        bounds.check_times(batch, ctx.clock(), ctx.future_skew)
        if batch.lost_through is not None and batch.first_seq > site.stored_through + 1:
            last_ts = await ctx.db.last_reading_ts(site_id)
            try:
                bounds.check_seq_jump(batch, site.stored_through, last_ts)
            except BoundsError as exc:
                raise ApiError(422, "seq_jump", str(exc)) from None
    except BoundsError as exc:
        raise ApiError(422, "malformed", str(exc)) from None
    result = await ctx.db.ingest_telemetry(batch)
    # Both answers are signed with the cloud key: the Zap deletes its outbox only on a signed ACK.
    if not result.accepted:
        gap = encode(GapError(error="gap", stored_through=result.stored_through, site_id=site_id))
        raise ApiError(
            409,
            "gap",
            f"batch starts at {batch.first_seq}; re-send from {result.stored_through + 1}",
            body=gap,
            headers=sign_body(ctx.signing_key, gap),
        )
    ingest_signal.stored(site_id)  # wakes this worker's live subscriptions of the site
    ack = encode(TelemetryAck(stored_through=result.stored_through, site_id=site_id))
    return Response(ack, media_type="application/json", headers=sign_body(ctx.signing_key, ack))


async def _discovery(ctx: _Context, request: Request) -> Response:
    site_id = request.path_params["site_id"]
    _site, report = await _signed(ctx, request, site_id, decode_discovery)
    if report.site_id != site_id:
        raise ApiError(422, "site_mismatch", f"report is for site {report.site_id!r}, URL says {site_id!r}")
    try:
        bounds.check_discovery(report)
    except BoundsError as exc:
        raise ApiError(422, "malformed", str(exc)) from None
    await ctx.db.replace_der_models(report, now=ctx.clock())
    return _json({"ders": len(report.ders)})


async def _plan_get(ctx: _Context, request: Request) -> Response:
    site_id = request.path_params["site_id"]
    # A GET has no body: the Zap signs method, path and a timestamp instead (docs/wire.md).
    signature = _signature_header(request)
    _site, verify_key = await _site_for_key(ctx, request, site_id)
    problem = verify_request(
        verify_key,
        "GET",
        request.url.path,
        request.headers.get(HEADER_TIMESTAMP),
        signature,
        now=ctx.clock(),
        max_skew_s=ctx.max_request_skew_s,
    )
    if problem is not None:
        raise ApiError(401, problem, "request signature or timestamp not accepted")
    plan = await ctx.db.latest_plan(site_id)
    if plan is None or plan.valid_until <= ctx.clock():
        raise ApiError(404, "no_plan", "no current plan for this site")
    tag = etag(plan.version)
    if if_none_match_hits(request.headers.get("if-none-match"), plan.version):
        return Response(status_code=304, headers={"ETag": tag})
    # The Zap now holds this version: a demand-response dispatch at or below it is acknowledged (polling).
    await mark_fetched(ctx.db, site_id, plan.version, ctx.clock())
    headers = {
        "ETag": tag,
        HEADER_SIGNATURE: plan.signature,
        HEADER_KEY_ID: ctx.key_id,
        "Cache-Control": "no-cache",
    }
    return Response(plan.body, media_type="application/json", headers=headers)


async def _plan_put(ctx: _Context, request: Request) -> Response:
    _require_admin(ctx, request)
    site_id = request.path_params["site_id"]
    plan = await _admin_body(ctx, request, decode_plan)
    if plan.site_id != site_id:
        raise ApiError(422, "site_mismatch", f"plan is for site {plan.site_id!r}, URL says {site_id!r}")
    try:
        await publish_plan(ctx.db, ctx.signing_key, plan, now=ctx.clock(), future_skew=ctx.future_skew)
    except WireError as exc:
        raise ApiError(422, "malformed", str(exc)) from None
    except LookupError as exc:
        raise ApiError(404, "unknown_site", str(exc)) from None
    except PlanVersionConflictError as exc:
        raise ApiError(409, "version_conflict", str(exc)) from None
    log.info("server.plan_published", site_id=site_id, version=plan.version)
    return _json({"site_id": site_id, "version": plan.version}, headers={"ETag": etag(plan.version)})


# --- planning and fleet (cloud/planner.py, cloud/fleet.py) ------------------------------------


class _PriceUpload(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    start: datetime
    step_minutes: int
    prices: list[float]  # per kWh
    # Who published the prices and when (returned by GET /v1/prices/{area}); default: this upload, now.
    source: str = "operator upload"
    published_at: datetime | None = None


def _decode_prices(body: bytes) -> _PriceUpload:
    return msgspec.json.decode(body, type=_PriceUpload)


async def _prices_put(ctx: _Context, request: Request) -> Response:
    """Day-ahead prices for a bidding zone from an operator or script (ENTSO-E is fetched by the planner)."""
    from cloud.db.planning import put_spot_prices
    from cloud.prices import PriceSeries

    _require_admin(ctx, request)
    area = request.path_params["area"]
    up = await _admin_body(ctx, request, _decode_prices)
    if up.start.tzinfo is None or up.step_minutes not in (15, 30, 60) or not up.prices:
        raise ApiError(422, "malformed", "need start with a UTC offset, step_minutes 15/30/60 and prices")
    try:
        bounds.check_prices(area, up.start, up.step_minutes, up.prices, ctx.clock())
    except BoundsError as exc:
        raise ApiError(422, "malformed", str(exc)) from None
    try:
        bounds.check_price_source(up.source, up.published_at, ctx.clock())
    except BoundsError as exc:
        raise ApiError(422, "malformed", str(exc)) from None
    series = PriceSeries(up.start, timedelta(minutes=up.step_minutes), tuple(up.prices), up.published_at)
    rows = await put_spot_prices(ctx.db, area, series, ctx.clock(), source=up.source)
    return _json({"area": area, "rows": rows})


async def _fleet_flexibility(ctx: _Context, request: Request) -> Response:
    from cloud.fleet import flexibility

    _require_admin(ctx, request)
    raw = request.query_params.get("slots", "96")
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw[:6]) <= bounds.MAX_FLEX_SLOTS and len(raw) <= 6):
        raise ApiError(422, "malformed", f"slots must be an integer 1..{bounds.MAX_FLEX_SLOTS}")
    return _json(await flexibility(ctx.db, ctx.clock(), int(raw)))


async def _fleet_event(ctx: _Context, request: Request) -> Response:
    """Store the event and its per-site work, answer at once (202); the workers do the rest (fleet_work)."""
    from cloud.fleet import EventError, decode_event
    from cloud.fleet_work import create_event

    _require_admin(ctx, request)
    event = await _admin_body(ctx, request, decode_event)
    try:
        bounds.check_event(event.start, event.reduction_kw, ctx.clock())
        created = await create_event(ctx.db, event, ctx.clock())
    except (EventError, BoundsError) as exc:
        raise ApiError(422, "malformed", str(exc)) from None
    ctx.wake.set()
    href = f"/v1/fleet/events/{created.event_id}"
    body = {"event_id": created.event_id, "client_key": event.client_key, "href": href, "replayed": created.replayed}
    # A retry with the same client_key: the first event (200 instead of 202), nothing made or dispatched again.
    return _json(body, 200 if created.replayed else 202, headers={"Location": href})


_EVENT_ID = re.compile(r"[0-9a-f]{32}")


async def _fleet_event_get(ctx: _Context, request: Request) -> Response:
    from cloud.fleet_status import MAX_DELIVERY_PAGE, event_status

    _require_admin(ctx, request)
    event_id = request.path_params["event_id"]
    if not _EVENT_ID.fullmatch(event_id):
        raise ApiError(404, "unknown_event", "no such event")
    q = request.query_params
    delivery = q.get("delivery", "0") in ("1", "true")
    offset, limit = (q.get("offset", "0"), q.get("limit", "50"))
    if not (offset.isdigit() and limit.isdigit() and len(offset) <= 7 and 1 <= int(limit[:4]) <= MAX_DELIVERY_PAGE):
        raise ApiError(422, "malformed", f"offset must be an integer >= 0, limit 1..{MAX_DELIVERY_PAGE}")
    status = await event_status(ctx.db, event_id, ctx.clock(), delivery=delivery, offset=int(offset),
                                limit=int(limit))  # fmt: skip
    if status is None:
        raise ApiError(404, "unknown_event", "no such event")
    return _json(status)


async def _forecast_errors(ctx: _Context, request: Request) -> Response:
    from cloud.db.planning import forecast_errors

    _require_admin(ctx, request)
    now = ctx.clock()
    site_id = request.path_params["site_id"]
    errors = await forecast_errors(ctx.db, site_id, now - timedelta(days=30))
    return _json({"site_id": site_id, "since_days": 30, "errors": errors})


async def _pv_forecast_put(ctx: _Context, request: Request) -> Response:
    """A site's external PV forecast (cloud/external_pv.py): the planner prefers it where it has values."""
    from cloud.external_pv import decode_pv_upload, put_external_pv

    return await _series_put(ctx, request, decode_pv_upload, put_external_pv)


async def _pv_index_put(ctx: _Context, request: Request) -> Response:
    """A regional day-ahead PV forecast for a site (cloud/pv_index_store.py): the planner plans each day it
    covers on the site's learnt ratio to it."""
    from cloud.pv_index_store import decode_pv_index_upload, put_pv_index

    return await _series_put(ctx, request, decode_pv_index_upload, put_pv_index)


async def _series_put(
    ctx: _Context,
    request: Request,
    decode: Callable[[bytes, datetime], T],
    put: Callable[[Database, str, T, datetime], Awaitable[int]],
) -> Response:
    """An admin's upload of a series for a known site: decoded (422 with the field), stored, 201 with its
    15-minute slot count."""
    _require_admin(ctx, request)
    site_id = request.path_params["site_id"]
    if await ctx.db.get_site(site_id) is None:
        raise ApiError(404, "unknown_site", f"no site {site_id!r}")
    now = ctx.clock()
    up = await _admin_body(ctx, request, lambda body: decode(body, now))
    slots = await put(ctx.db, site_id, up, now)
    return _json({"site_id": site_id, "slots": slots}, 201)


# --- live channel commands (cloud/server/channel_hub.py) ------------------------------------------


class _CommandRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    action: Action
    ttl_s: float = 300.0


def _decode_command_request(body: bytes) -> _CommandRequest:
    return msgspec.json.decode(body, type=_CommandRequest)


async def _command_post(ctx: _Context, request: Request) -> Response:
    """Queue a signed command for a site (an operator's DR activation, re-plan or safe-mode order): 202."""
    from cloud.server.channel_hub import send_command

    _require_admin(ctx, request)
    site_id = request.path_params["site_id"]
    req = await _admin_body(ctx, request, _decode_command_request)
    if await ctx.db.get_site(site_id) is None:
        raise ApiError(404, "unknown_site", f"no site {site_id!r}")
    if not (math.isfinite(req.ttl_s) and 0 < req.ttl_s <= MAX_COMMAND_TTL_S):
        raise ApiError(422, "malformed", f"ttl_s must be in (0, {MAX_COMMAND_TTL_S:g}]")
    try:
        command_id = await send_command(ctx.db, ctx.signing_key, site_id, req.action, now=ctx.clock(), ttl_s=req.ttl_s)
    except ChannelError as exc:
        raise ApiError(422, "malformed", str(exc)) from None
    return _json({"command_id": command_id, "site_id": site_id}, 202)


async def _command_get(ctx: _Context, request: Request) -> Response:
    """A command's delivery and the Zap's answer (applied what, when; or refused why)."""
    from cloud.server.channel_hub import command_acks

    _require_admin(ctx, request)
    command_id = request.path_params["command_id"]
    if len(command_id) != 32:
        raise ApiError(404, "unknown_command", "no such command")
    ack = (await command_acks(ctx.db, [command_id])).get(command_id)
    if ack is None:
        raise ApiError(404, "unknown_command", "no such command")
    return _json(
        {
            "command_id": ack.command_id,
            "site_id": ack.site_id,
            "kind": ack.kind,
            "created_at": ack.created_at.isoformat(),
            "sent_at": ack.sent_at.isoformat() if ack.sent_at else None,
            "acked_at": ack.acked_at.isoformat() if ack.acked_at else None,
            "result": ack.result,
            "reason": ack.reason,
            "applied": ack.applied,
            "applied_at": ack.applied_at.isoformat() if ack.applied_at else None,
        }
    )
