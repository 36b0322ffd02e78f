"""The data API's telemetry rollups (cloud/dataapi/rollup.py): per-minute aggregates and their read position.

Tables that a database made by `create_all` after they were added may have already: only missing ones
are created.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cloud.server.migrate import create_table_if_missing

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_table_if_missing(
        "rollup_state",
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("rolled_through", sa.BigInteger(), nullable=False),
        sa.Column("tails", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("site_id"),
    )
    create_table_if_missing(
        "telemetry_rollup",
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("der_id", sa.String(length=128), nullable=False),
        sa.Column("field", sa.String(length=32), nullable=False),
        sa.Column("minute", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.Float(), nullable=False),
        sa.Column("min", sa.Float(), nullable=False),
        sa.Column("max", sa.Float(), nullable=False),
        sa.Column("energy_wh", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("site_id", "der_id", "field", "minute"),
    )


def downgrade() -> None:
    op.drop_table("telemetry_rollup")
    op.drop_table("rollup_state")
