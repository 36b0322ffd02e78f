"""The cloud's two database engines for the tests that exercise SQL: a SQLite file, and PostgreSQL.

PostgreSQL comes from ZAPCLOUD_TEST_DB_URL, which `make test` sets to a throwaway cluster it starts
(tests/pg_cluster.py). Without it the PostgreSQL cases are skipped, saying so; `make test` always runs them.
Each use gets an empty database: the public schema is dropped (tables, alembic_version and all).
`make test` runs the suite in parallel worker processes (pytest-xdist): each worker gets its own database in
that cluster (`zapcloud_test_gw0`, ...), created on first use, so one worker's reset never empties a
database another worker's test is using.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text

from cloud.db import Database

BACKENDS = ("sqlite", "postgresql")
PG_ENV = "ZAPCLOUD_TEST_DB_URL"


def pg_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"{PG_ENV} not set (make test starts a PostgreSQL for these)")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return _worker_database(url, worker) if worker else url


@functools.cache
def _worker_database(url: str, worker: str) -> str:
    """The URL of this xdist worker's own database next to `url`'s, created the first time a worker asks.

    Created on a thread with its own event loop: callers may be inside a running loop (async fixtures)."""
    base, _, name = url.rpartition("/")
    own = f"{name}_{worker}"
    if not own.replace("_", "").isalnum():
        raise ValueError(f"unexpected database name {own!r}")

    async def create() -> None:
        conn = await asyncpg.connect(base.replace("postgresql+asyncpg://", "postgresql://") + "/" + name)
        try:
            # exists already: a second process with the same worker id (xdist restarts a crashed worker)
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{own}"')
        finally:
            await conn.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, create()).result()
    return f"{base}/{own}"


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
