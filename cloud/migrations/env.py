"""Alembic environment of zapcloud: migrations run on a connection the caller opened (and locked).

`cloud/server/migrate.py` hands the connection in through `config.attributes["connection"]`, inside a
transaction that already holds the migration lock; there is no alembic.ini and no offline (SQL script) mode.
"""

from __future__ import annotations

from alembic import context

from cloud.server.migrate import target_metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable through the alembic CLI
    raise RuntimeError("run migrations with `zapcloud db upgrade --db URL`, not the alembic command")

context.configure(
    connection=connection,
    target_metadata=target_metadata(),
    # SQLite alters a table by copying it (batch mode); PostgreSQL alters in place.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
