"""The data API is built on its first request: a worker that never serves it does not load strawberry,
graphql-core or Authlib (a third of its start-up CPU), and every path the route table names has a handler."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

from cloud.dataapi.mount import PATHS, data_api_routes

CREATE = """
import sys
from nacl.signing import SigningKey
from cloud.server.app import create_app
create_app("sqlite+aiosqlite:///unused.sqlite", SigningKey.generate(), admin_token="t" * 32, planner=False)
print(sorted(m for m in ("strawberry", "graphql", "authlib") if m in sys.modules))
"""


def test_creating_the_app_loads_no_data_api_library() -> None:
    out = subprocess.run([sys.executable, "-c", CREATE], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_every_route_of_the_table_has_its_handler() -> None:
    from cloud.dataapi.routes import build_data_api
    from cloud.db import Database

    db = Database("sqlite+aiosqlite:///:memory:")
    api = build_data_api(db, lambda: datetime.now(UTC), "t" * 32, lambda _request: None)
    assert set(api.handlers) == {name for _, name, _ in PATHS}
    routes = data_api_routes(db, lambda: datetime.now(UTC), "t" * 32, lambda _r: None, lambda _name, fn: fn)
    assert [getattr(r, "path", None) for r in routes][-2:] == ["/graphql", "/graphql"]  # HTTP and WebSocket
    assert len(routes) == len(PATHS) + 2
