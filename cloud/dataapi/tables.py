"""Tables of the data API, on the cloud's one `metadata` so `create_schema` makes them too.

Secrets are never stored: client secrets, authorization codes, access and refresh tokens are kept
as SHA-256 digests (they are 256-bit random strings, so a fast hash is enough); owner passwords as
scrypt hashes (they are chosen by people).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from cloud.db import metadata

# A person who owns sites and signs in to grant apps access to them.
owners = Table(
    "owners",
    metadata,
    Column("owner_id", String(64), primary_key=True),
    Column("password_hash", String(256), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

owner_sites = Table(
    "owner_sites",
    metadata,
    Column("owner_id", String(64), nullable=False),
    Column("site_id", String(64), nullable=False),
    PrimaryKeyConstraint("owner_id", "site_id"),
)

# A registered app (authorization code + PKCE) or operator service (client credentials).
oauth_clients = Table(
    "oauth_clients",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("secret_hash", String(64), nullable=True),  # None: a public client (PKCE required)
    Column("redirect_uris", JSON, nullable=False),
    Column("grant_types", JSON, nullable=False),
    Column("scope", Text, nullable=False),  # the most this client may ever be granted
    Column("sites", JSON, nullable=False),  # client credentials only: the sites the operator gave it
    Column("created_at", DateTime(timezone=True), nullable=False),
)

oauth_codes = Table(
    "oauth_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("client_id", String(64), nullable=False),
    Column("owner_id", String(64), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("scope", Text, nullable=False),
    Column("sites", JSON, nullable=False),
    Column("code_challenge", String(128), nullable=True),
    Column("code_challenge_method", String(16), nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

oauth_tokens = Table(
    "oauth_tokens",
    metadata,
    Column("access_hash", String(64), primary_key=True),
    Column("refresh_hash", String(64), nullable=True, unique=True),
    Column("client_id", String(64), nullable=False),
    Column("owner_id", String(64), nullable=True),  # None for client credentials
    Column("scope", Text, nullable=False),
    Column("sites", JSON, nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("refresh_expires_at", DateTime(timezone=True), nullable=True),
    Column("revoked", Boolean, nullable=False, default=False),
)

Index("ix_oauth_tokens_client", oauth_tokens.c.client_id)

# Per-minute aggregates of every numeric telemetry field, kept by cloud/dataapi/rollup.py so that
# 1 min .. 1 day history never rescans raw readings. `minute` is epoch seconds // 60.
telemetry_rollup = Table(
    "telemetry_rollup",
    metadata,
    Column("site_id", String(64), nullable=False),
    Column("der_id", String(128), nullable=False),
    Column("field", String(32), nullable=False),
    Column("minute", BigInteger, nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("total", Float, nullable=False),
    Column("min", Float, nullable=False),
    Column("max", Float, nullable=False),
    Column("energy_wh", Float, nullable=False),
    PrimaryKeyConstraint("site_id", "der_id", "field", "minute"),
)

# The same per hour (`minute` = the hour's first minute), folded alongside: a month at 1 h reads 720 rows.
telemetry_rollup_hour = Table(
    "telemetry_rollup_hour",
    metadata,
    *(Column(c.name, c.type, nullable=False) for c in telemetry_rollup.columns),
    PrimaryKeyConstraint("site_id", "der_id", "field", "minute"),
)

# How far each site's rollup has read its telemetry (seq), and the last sample of each series, whose
# energy (held until the next sample) is only known once the next one arrives.
rollup_state = Table(
    "rollup_state",
    metadata,
    Column("site_id", String(64), primary_key=True),
    Column("rolled_through", BigInteger, nullable=False),
    Column("tails", JSON, nullable=False),
)
