"""Versioned schema migrations (Alembic, revisions in cloud/migrations/versions) run under a lock.

Every `zapcloud serve` upgrades the database to the newest revision at start, and `zapcloud db upgrade`
does it on its own. Several workers may start together on one empty database: each takes the migration
lock first, so one of them migrates and the others find the database at head when they get the lock.
PostgreSQL: a transaction-scoped advisory lock (`pg_advisory_xact_lock`), and the DDL runs in that same
transaction (PostgreSQL's DDL is transactional), so a worker killed mid-migration leaves nothing behind.
SQLite: `BEGIN IMMEDIATE` takes the database's write lock before anything is read.

A database made before migrations existed (by `metadata.create_all`) has tables but no `alembic_version`:
the first revision adopts it, creating only the tables and indexes it lacks. After an upgrade to head,
an index the models define and the database lacks is re-created (`_restore_indexes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection

from cloud.db import Database

log = structlog.get_logger("zapcloud.migrate")

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
# Any constant both engines agree on; "zapd" in ASCII. One advisory lock key for the whole schema.
MIGRATION_LOCK_KEY = 0x7A617064


def create_table_if_missing(name: str, *columns: Any) -> None:
    """`op.create_table` for a revision whose tables a database made before migrations may have already."""
    from alembic import op
    from sqlalchemy import inspect

    if not inspect(op.get_bind()).has_table(name):
        op.create_table(name, *columns)


def create_index_if_missing(name: str, table: str, columns: list[str], *, unique: bool) -> None:
    from alembic import op
    from sqlalchemy import inspect

    if name not in {ix["name"] for ix in inspect(op.get_bind()).get_indexes(table)}:
        op.create_index(name, table, columns, unique=unique)


def target_metadata() -> MetaData:
    """The models every revision is compared against: the core tables and the data API's."""
    import cloud.dataapi.tables
    import cloud.forecast_models
    import cloud.server.channel_hub  # noqa: F401  (the live channel's tables; forecast_models: per-site models)
    from cloud.db import metadata

    return metadata


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migration revisions"
    return head


async def upgrade(db: Database, revision: str = "head") -> None:
    """Migrate to `revision` holding the migration lock; a no-op when the database is there already."""
    dialect = db.engine.dialect.name
    async with db.engine.connect() as conn:
        if dialect == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        else:
            # The write lock before the version is read; the busy timeout (db.py) bounds the wait.
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
        await conn.run_sync(_upgrade, revision)
        await conn.commit()


def _upgrade(conn: Connection, revision: str) -> None:
    command.upgrade(alembic_config(conn), revision)
    if revision == "head":
        _restore_indexes(conn)


def _restore_indexes(conn: Connection) -> None:
    """Re-create an index the models have and the database lacks (dropped by hand, lost in a restore).

    Only this repair is automatic: an index is derived data, so creating it loses nothing. Any other
    difference is for a revision to settle; `zapcloud db check` lists it.
    """
    for diff in compare_metadata(MigrationContext.configure(conn), target_metadata()):
        if isinstance(diff, tuple) and diff[0] == "add_index":
            index = diff[1]
            log.warning("migrate.index_restored", index=index.name, table=index.table.name)
            index.create(conn)


async def current_revision(db: Database) -> str | None:
    async with db.engine.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())


async def drift(db: Database) -> list[str]:
    """How the database differs from the models (tables, columns, indexes): empty when it matches."""
    async with db.engine.connect() as conn:
        diffs: Sequence[Any] = await conn.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c, opts={"compare_type": False}), target_metadata())
        )
    return [_describe(d) for d in diffs]


def _describe(diff: Any) -> str:
    if isinstance(diff, list):  # column modifications come grouped
        return "; ".join(_describe(d) for d in diff)
    op, *args = diff
    names = [getattr(a, "name", None) or str(a) for a in args if a is not None]
    return f"{op} {' '.join(n for n in names if n)}"


__all__ = [
    "MIGRATIONS",
    "MIGRATION_LOCK_KEY",
    "alembic_config",
    "current_revision",
    "drift",
    "head_revision",
    "upgrade",
]
