"""The data API's routes on the cloud's Starlette app, its handlers built on the first request to one of them.

strawberry (its schema), graphql-core and Authlib are about a third of a `zapcloud serve` worker's start-up
CPU, and most workers (and every test of the Zap API) never serve an OAuth, GraphQL or web-page request. The
paths live here, in a module that imports only Starlette; cloud/dataapi/routes.py builds the handlers once,
synchronously (no await between the check and the build, so two first requests cannot build it twice).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send

if TYPE_CHECKING:
    from cloud.dataapi.routes import DataApi
    from cloud.db import Database

Handler = Callable[[Request], Awaitable[Response]]
Wrap = Callable[[str, Handler], Handler]

WEB_CALLBACK = "/web/callback"  # the web view's OAuth redirect (cloud/dataapi/oauth.py, web.py)
# (path, route name, methods): the name is the handler's key in routes.build_data_api and the endpoint's in metrics
PATHS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("/web/", "web_home", ("GET",)),
    ("/web/login", "web_login", ("GET",)),
    (WEB_CALLBACK, "web_callback", ("GET",)),
    ("/web/site/{site_id}", "web_site", ("GET",)),
    ("/web/fleet", "web_fleet", ("GET",)),
    ("/web/fleet/login", "web_fleet_login", ("GET", "POST")),
    ("/oauth/authorize", "oauth_authorize", ("GET", "POST")),
    ("/oauth/token", "oauth_token", ("POST",)),
    ("/oauth/revoke", "oauth_revoke", ("POST",)),
    ("/v1/owners", "owner_put", ("POST",)),
    ("/v1/oauth/clients", "oauth_client_put", ("POST",)),
    ("/v1/prices/{area}", "prices_get", ("GET",)),
)
NEEDS = ("strawberry", "authlib")  # the data API's own libraries (the `cloud` extra)


def missing_library() -> str | None:
    """The first library the data API needs that is not installed (an older install), or None."""
    return next((name for name in NEEDS if importlib.util.find_spec(name) is None), None)


class _Lazy:
    """Builds the data API on first use; an ASGI app for /graphql (HTTP and WebSocket)."""

    def __init__(self, build: Callable[[], DataApi]) -> None:
        self._build = build
        self._api: DataApi | None = None

    def api(self) -> DataApi:
        if self._api is None:
            self._api = self._build()
        return self._api

    def handler(self, name: str) -> Handler:
        async def handle(request: Request) -> Response:
            return await self.api().handlers[name](request)

        return handle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.api().graphql(scope, receive, send)


def data_api_routes(
    db: Database,
    clock: Callable[[], datetime],
    admin_token: str | None,
    require_admin: Callable[[Request], None],
    wrap: Wrap,
    count: Callable[[str, str], None] = lambda _endpoint, _reason: None,
) -> list[BaseRoute]:
    """The data API's routes; `wrap(name, handler)` is the app's guard (errors, metrics) around each."""

    def build() -> DataApi:
        from cloud.dataapi.routes import build_data_api

        return build_data_api(db, clock, admin_token, require_admin, count)

    lazy = _Lazy(build)
    routes: list[BaseRoute] = [
        Route(path, wrap(name, lazy.handler(name)), methods=list(methods)) for path, name, methods in PATHS
    ]
    routes += [Route("/graphql", lazy, methods=["GET", "POST"]), WebSocketRoute("/graphql", lazy)]
    return routes
