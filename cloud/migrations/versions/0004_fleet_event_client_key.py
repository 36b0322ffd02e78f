"""Demand-response events carry the caller's idempotency key (`client_key`, unique), so a retried
POST /v1/fleet/events gets the first answer instead of dispatching the fleet twice.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A nullable column without a default: SQLite adds it in place too (no table copy).
    op.add_column("fleet_events", sa.Column("client_key", sa.String(length=64), nullable=True))
    op.create_index("ux_fleet_events_client_key", "fleet_events", ["client_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_fleet_events_client_key", table_name="fleet_events")
    with op.batch_alter_table("fleet_events") as batch:
        batch.drop_column("client_key")
