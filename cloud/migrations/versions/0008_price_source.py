"""Day-ahead price rows record their source and when the source published them (GET /v1/prices/{area},
the GraphQL `prices` field).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: SQLite adds them in place; older rows say "stored at" instead (graphql.py).
    op.add_column("spot_prices", sa.Column("source", sa.String(length=64), nullable=True))
    op.add_column("spot_prices", sa.Column("published_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("spot_prices") as batch:
        batch.drop_column("published_at")
        batch.drop_column("source")
