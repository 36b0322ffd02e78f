"""`zapcloud db upgrade|current|check`: migrate the schema on its own (before a deploy starts the workers),
show the database's revision, or compare the database with the models (drift left by hand edits)."""

from __future__ import annotations

import asyncio
import sys

from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from cloud.db import Database, DatabaseFileError, secure_sqlite_file
from cloud.server import migrate


def run_db(action: str, db_url: str) -> int:
    """Exit 0 when done (check: the database matches), 1 on drift or a database failure, 2 on bad input."""
    try:
        secure_sqlite_file(db_url)
        db = Database(db_url)
    except (ArgumentError, DatabaseFileError, ValueError) as exc:
        print(f"zapcloud: --db: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"zapcloud: --db: database driver not installed: {exc.name or exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(action, db))
    except (SQLAlchemyError, OSError) as exc:
        print(f"zapcloud: database: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


async def _run(action: str, db: Database) -> int:
    try:
        if action == "upgrade":
            before = await migrate.current_revision(db)
            await migrate.upgrade(db)
            after = await migrate.current_revision(db)
            print(f"zapcloud: database at revision {after}" + ("" if before == after else f" (was {before})"))
            return 0
        if action == "current":
            current = await migrate.current_revision(db)
            head = migrate.head_revision()
            print(f"zapcloud: database at revision {current}, newest {head}")
            return 0 if current == head else 1
        diffs = await migrate.drift(db)
        for d in diffs:
            print(f"zapcloud: schema differs from the models: {d}")
        if not diffs:
            print("zapcloud: schema matches the models")
        return 1 if diffs else 0
    finally:
        await db.dispose()
