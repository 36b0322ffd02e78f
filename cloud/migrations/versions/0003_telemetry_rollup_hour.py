"""The data API's hourly telemetry rollup (cloud/dataapi/rollup.py), folded beside the per-minute one.

Created only if missing (a database made by `create_all` after the table was added has it already).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cloud.server.migrate import create_table_if_missing

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_table_if_missing(
        "telemetry_rollup_hour",
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
    op.drop_table("telemetry_rollup_hour")
