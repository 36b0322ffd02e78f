"""The schema as it was when migrations began: the core tables and the data API's (issue 16).

A database made before migrations (by `metadata.create_all` at start) is adopted: only the tables and
indexes it lacks are created, so an index missing there (e.g. one added after the database was made)
is created now. A frozen copy of the models of that day: later model changes go in later revisions.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cloud.server.migrate import create_index_if_missing, create_table_if_missing

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_table_if_missing(
        "command_reports",
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("der_id", sa.String(length=128), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("command", sa.JSON(), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("clamped_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("site_id", "der_id", "ts"),
    )
    create_table_if_missing(
        "der_models",
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("der_id", sa.String(length=128), nullable=False),
        sa.Column("capabilities", sa.JSON(), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("site_id", "der_id"),
    )
    create_table_if_missing(
        "fleet_event_sites",
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("incentive", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", "site_id"),
    )
    create_table_if_missing(
        "fleet_events",
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reduction_kw", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("event_id"),
    )
    create_table_if_missing(
        "forecasts",
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("step_s", sa.Integer(), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("mae", sa.Float(), nullable=True),
        sa.Column("mae_slots", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("site_id", "kind", "issued_at"),
    )
    create_table_if_missing(
        "oauth_clients",
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=True),
        sa.Column("redirect_uris", sa.JSON(), nullable=False),
        sa.Column("grant_types", sa.JSON(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("sites", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("client_id"),
    )
    create_table_if_missing(
        "oauth_codes",
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("owner_id", sa.String(length=64), nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("sites", sa.JSON(), nullable=False),
        sa.Column("code_challenge", sa.String(length=128), nullable=True),
        sa.Column("code_challenge_method", sa.String(length=16), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("code_hash"),
    )
    create_table_if_missing(
        "oauth_tokens",
        sa.Column("access_hash", sa.String(length=64), nullable=False),
        sa.Column("refresh_hash", sa.String(length=64), nullable=True),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("owner_id", sa.String(length=64), nullable=True),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("sites", sa.JSON(), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("refresh_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("access_hash"),
        sa.UniqueConstraint("refresh_hash"),
    )
    create_index_if_missing("ix_oauth_tokens_client", "oauth_tokens", ["client_id"], unique=False)
    create_table_if_missing(
        "owner_sites",
        sa.Column("owner_id", sa.String(length=64), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("owner_id", "site_id"),
    )
    create_table_if_missing(
        "owners",
        sa.Column("owner_id", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner_id"),
    )
    create_table_if_missing(
        "plan_flows",
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("step_s", sa.Integer(), nullable=False),
        sa.Column("flows", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("site_id", "version"),
    )
    create_table_if_missing(
        "plan_jobs",
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("planned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("planned_through_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("site_id"),
    )
    create_table_if_missing(
        "plans",
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("site_id", "version"),
    )
    create_table_if_missing(
        "sites",
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("assets", sa.JSON(), nullable=True),
        sa.Column("tariff", sa.JSON(), nullable=True),
        sa.Column("stored_through", sa.BigInteger(), nullable=False),
        sa.Column("lost_readings", sa.BigInteger(), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("site_id"),
        sa.UniqueConstraint("key_id"),
    )
    create_table_if_missing(
        "spot_prices",
        sa.Column("area", sa.String(length=32), nullable=False),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("price", sa.Float(), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("area", "start"),
    )
    create_table_if_missing(
        "telemetry",
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("der_id", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("quality", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("site_id", "seq"),
    )
    create_index_if_missing("ix_telemetry_site_ts", "telemetry", ["site_id", "ts"], unique=False)


def downgrade() -> None:
    for name in (
        "telemetry", "spot_prices", "sites", "plans", "plan_jobs", "plan_flows", "owners", "owner_sites",
        "oauth_tokens", "oauth_codes", "oauth_clients", "forecasts", "fleet_events", "fleet_event_sites",
        "der_models", "command_reports",
    ):  # fmt: skip
        op.drop_table(name)
