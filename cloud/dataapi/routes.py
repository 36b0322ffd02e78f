"""The data API's handlers: OAuth endpoints, /graphql, the price REST route, the web pages.

Built on the first request to one of them (cloud/dataapi/mount.py holds the paths): strawberry, graphql-core
and Authlib are most of a worker's start-up, and most workers never serve the data API.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cross_web import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL

from cloud.dataapi.access import PRICES_READ, Access, AccessDenied, authenticate
from cloud.dataapi.graphql import PriceResolution, price_series, schema
from cloud.dataapi.oauth import OAuthEndpoints, access_ttl_s
from cloud.dataapi.web import Web
from cloud.db import Database


class _GraphQL(GraphQL[dict[str, Any], None]):
    """strawberry's ASGI view with our bearer-token context (HTTP header, or connection_init payload)."""

    def __init__(self, db: Database, clock: Callable[[], datetime], admin_token: str | None) -> None:
        super().__init__(
            schema,
            graphql_ide=None,
            allow_queries_via_get=False,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            connection_init_wait_timeout=timedelta(seconds=10),
        )
        self.db = db
        self.clock = clock
        self.admin_token = admin_token

    async def _auth(self, authorization: str | None) -> Access:
        return await authenticate(self.db, authorization, self.admin_token, self.clock())

    async def get_context(self, request: Any, response: Any) -> dict[str, Any]:
        ctx: dict[str, Any] = {"db": self.db, "request": request, "response": response, "cost": 0}
        if isinstance(request, WebSocket):
            return ctx  # authenticated in on_ws_connect
        try:
            ctx["access"] = await self._auth(request.headers.get("authorization"))
        except AccessDenied as exc:
            raise HTTPException(401, f"{exc.reason}: {exc.detail}") from None
        return ctx

    async def on_ws_connect(self, context: dict[str, Any]) -> None:
        params = context.get("connection_params") or {}
        header = params.get("Authorization") or params.get("authorization")
        if not isinstance(header, str):
            raise ConnectionRejectionError({"reason": "missing_token"})
        try:
            context["access"] = await self._auth(header)
        except AccessDenied as exc:
            raise ConnectionRejectionError({"reason": exc.reason}) from None

        async def recheck() -> Access:
            return await self._auth(header)

        context["recheck"] = recheck


@dataclass(frozen=True)
class DataApi:
    """The data API's handlers by route name (cloud/dataapi/mount.py names the paths) and its GraphQL view."""

    handlers: dict[str, Callable[[Request], Awaitable[Response]]]
    graphql: _GraphQL


def build_data_api(
    db: Database,
    clock: Callable[[], datetime],
    admin_token: str | None,
    require_admin: Callable[[Request], None],
    count: Callable[[str, str], None] = lambda _endpoint, _reason: None,
) -> DataApi:
    """`count(endpoint, reason)`: refusals the handlers answer themselves (a sign-in over its limit)."""
    oauth = OAuthEndpoints(db, clock, require_admin, access_ttl=access_ttl_s(), count=count)

    async def prices(request: Request) -> Response:
        return await _prices_get(db, clock, admin_token, request)

    web = Web(db, clock, admin_token, oauth)
    handlers: dict[str, Callable[[Request], Awaitable[Response]]] = {
        "web_home": web.home,
        "web_login": web.login,
        "web_callback": web.callback,
        "web_site": web.site_page,
        "web_fleet": web.fleet,
        "web_fleet_login": web.fleet_login,
        "oauth_authorize": oauth.authorize,
        "oauth_token": oauth.token,
        "oauth_revoke": oauth.revoke,
        "owner_put": oauth.create_owner,
        "oauth_client_put": oauth.create_client,
        "prices_get": prices,
    }
    return DataApi(handlers, _GraphQL(db, clock, admin_token))


async def _prices_get(
    db: Database, clock: Callable[[], datetime], admin_token: str | None, request: Request
) -> Response:
    """GET /v1/prices/{area}?from=&to=&resolution=15|60 (prices:read or the admin token)."""
    try:
        access = await authenticate(db, request.headers.get("authorization"), admin_token, clock())
        access.require(PRICES_READ)
    except AccessDenied as exc:
        status = 403 if exc.reason == "insufficient_scope" else 401
        return JSONResponse(
            {"error": exc.reason, "detail": exc.detail}, status_code=status, headers={"WWW-Authenticate": "Bearer"}
        )
    area = request.path_params["area"]
    q = request.query_params
    now = clock()
    try:
        start = (
            datetime.fromisoformat(q["from"]) if "from" in q else now.replace(hour=0, minute=0, second=0, microsecond=0)
        )
        end = datetime.fromisoformat(q["to"]) if "to" in q else start + timedelta(days=2)
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("from/to need a UTC offset")
        if not timedelta(0) < end - start <= timedelta(days=31):
            raise ValueError("to must be after from, at most 31 days")
        res = {"15": PriceResolution.MIN15, "60": PriceResolution.MIN60}[q.get("resolution", "15")]
        if len(area) > 32:
            raise ValueError("area: at most 32 characters")
    except KeyError:
        return JSONResponse({"error": "malformed", "detail": "resolution: 15 or 60"}, status_code=422)
    except ValueError as exc:
        return JSONResponse({"error": "malformed", "detail": str(exc)}, status_code=422)
    got = await price_series(db, area, start, end, res)
    return JSONResponse(
        {
            "area": got.area,
            "resolution_minutes": 15 if res is PriceResolution.MIN15 else 60,
            "unit": got.unit,
            "source": got.source,
            "published_at": None if got.published_at is None else got.published_at.isoformat(),
            "prices": [{"start": p.start.isoformat(), "price": p.price} for p in got.points],
        }
    )
