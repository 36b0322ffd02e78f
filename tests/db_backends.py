"""The cloud's two database engines for the tests that exercise SQL: a SQLite file, and PostgreSQL.

PostgreSQL comes from ZAPCLOUD_TEST_DB_URL, which `make test` sets to a throwaway cluster it starts
(tests/pg_cluster.py). Without it the PostgreSQL cases are skipped, saying so; `make test` always runs them.
Each use gets an empty database: the public schema is dropped (tables, alembic_version and all).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from sqlalchemy import text

from cloud.db import Database

BACKENDS = ("sqlite", "postgresql")
PG_ENV = "ZAPCLOUD_TEST_DB_URL"


def pg_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"{PG_ENV} not set (make test starts a PostgreSQL for these)")
    return url


async def reset_pg(url: str) -> None:
    db = Database(url)
    try:
        async with db.engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
    finally:
        await db.dispose()


async def empty_db_url_async(backend: str, tmp: Path, name: str = "cloud") -> str:
    """A URL of an empty database of `backend`."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp / f'{name}.sqlite'}"
    url = pg_url()
    await reset_pg(url)
    return url


def empty_db_url(backend: str, tmp: Path, name: str = "cloud") -> str:
    """`empty_db_url_async` outside a running event loop (sync fixtures)."""
    return asyncio.run(empty_db_url_async(backend, tmp, name))
