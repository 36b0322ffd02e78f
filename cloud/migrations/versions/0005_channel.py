"""The live channel (cloud/server/channel_hub.py): queued signed commands with their acknowledgements,
and each site's channel state (which worker holds it, its last live status, the plan it took).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "channel_commands",
        sa.Column("command_id", sa.String(length=32), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result", sa.String(length=16), nullable=True),
        sa.Column("ack", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("command_id"),
    )
    op.create_index("ix_channel_commands_site", "channel_commands", ["site_id", "created_at"], unique=False)
    op.create_index("ix_channel_commands_pending", "channel_commands", ["acked_at", "expires_at"], unique=False)
    op.create_table(
        "channel_sites",
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("worker", sa.String(length=64), nullable=True),
        sa.Column("connected_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disconnected_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.JSON(), nullable=True),
        sa.Column("status_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("plan_version", sa.BigInteger(), nullable=True),
        sa.Column("plan_applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("site_id"),
    )


def downgrade() -> None:
    op.drop_table("channel_sites")
    op.drop_index("ix_channel_commands_pending", table_name="channel_commands")
    op.drop_index("ix_channel_commands_site", table_name="channel_commands")
    op.drop_table("channel_commands")
