"""Demand response as fleet work (cloud/fleet_work.py): one queue row per (event, site) that the workers
claim, and the event's status and dispatch time.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cloud.server.migrate import create_index_if_missing, create_table_if_missing

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("fleet_events", sa.Column("status", sa.String(length=16), nullable=True))
    op.add_column("fleet_events", sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
    create_table_if_missing(
        "fleet_event_jobs",
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("prior_version", sa.BigInteger(), nullable=True),
        sa.Column("base_net_kw", sa.Float(), nullable=True),
        sa.Column("curve", sa.JSON(), nullable=True),
        sa.Column("candidates", sa.LargeBinary(), nullable=True),
        sa.Column("incentive", sa.Float(), nullable=True),
        sa.Column("reduction_kw", sa.Float(), nullable=True),
        sa.Column("extra_cost", sa.Float(), nullable=True),
        sa.Column("plan_version", sa.BigInteger(), nullable=True),
        sa.Column("planned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("event_id", "site_id"),
    )
    create_index_if_missing("ix_fleet_event_jobs_state", "fleet_event_jobs", ["state"], unique=False)
    create_index_if_missing("ix_fleet_event_jobs_site", "fleet_event_jobs", ["site_id"], unique=False)


def downgrade() -> None:
    op.drop_table("fleet_event_jobs")
    with op.batch_alter_table("fleet_events") as batch:
        batch.drop_column("dispatched_at")
        batch.drop_column("status")
