"""The cloud's one data layer: every piece of state lives here, none in the process.

SQLAlchemy Core on an async engine. SQLite (aiosqlite) for one box and tests, PostgreSQL
(asyncpg) for a fleet, chosen by URL; the statements are portable SQL, and the only
dialect-specific piece is the idempotent insert (`ON CONFLICT DO NOTHING`), picked by
dialect name. Several `zapcloud serve` workers may share one database: per-site ordering
is enforced by a single conditional UPDATE, which both engines execute atomically.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Insert,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    case,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from cloud_sync.wire import DiscoveryReport, TelemetryBatch

metadata = MetaData()

sites = Table(
    "sites",
    metadata,
    Column("site_id", String(64), primary_key=True),
    Column("public_key", String(64), nullable=False),
    Column("key_id", String(16), nullable=False, unique=True),
    Column("assets", JSON, nullable=True),
    Column("tariff", JSON, nullable=True),
    # Highest seq such that every seq 1..stored_through is stored (or declared lost).
    Column("stored_through", BigInteger, nullable=False, default=0),
    Column("lost_readings", BigInteger, nullable=False, default=0),
    Column("registered_at", DateTime(timezone=True), nullable=False),
)

telemetry = Table(
    "telemetry",
    metadata,
    Column("site_id", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("der_id", String(128), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("values", JSON, nullable=False),
    Column("quality", String(16), nullable=False),
    PrimaryKeyConstraint("site_id", "seq"),
)

plans = Table(
    "plans",
    metadata,
    Column("site_id", String(64), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("signature", String(128), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("valid_until", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("site_id", "version"),
)

der_models = Table(
    "der_models",
    metadata,
    Column("site_id", String(64), nullable=False),
    Column("der_id", String(128), nullable=False),
    Column("capabilities", JSON, nullable=False),
    Column("reported_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("site_id", "der_id"),
)

command_reports = Table(
    "command_reports",
    metadata,
    Column("site_id", String(64), nullable=False),
    Column("der_id", String(128), nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("command", JSON, nullable=False),
    Column("result", Text, nullable=False),
    Column("clamped_reason", Text, nullable=True),
    # One command per DER per instant: a re-sent batch carries the same reports and is ignored.
    PrimaryKeyConstraint("site_id", "der_id", "ts"),
)

# Forecasters read telemetry by time range (cloud/site_series.py).
Index("ix_telemetry_site_ts", telemetry.c.site_id, telemetry.c.ts)

# --- planning (cloud/planner.py, cloud/store.py, cloud/fleet.py own these tables) ----------

# One row per planned site: the work queue any worker claims from (lease), and why it is due.
plan_jobs = Table(
    "plan_jobs",
    metadata,
    Column("site_id", String(64), primary_key=True),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("planned_at", DateTime(timezone=True), nullable=True),
    Column("planned_through_seq", BigInteger, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
)

# Day-ahead spot prices per bidding zone, per kWh, normalized to 15-minute rows.
spot_prices = Table(
    "spot_prices",
    metadata,
    Column("area", String(32), nullable=False),
    Column("start", DateTime(timezone=True), nullable=False),
    Column("price", Float, nullable=False),
    Column("fetched_at", DateTime(timezone=True), nullable=False),
    # Where the price came from and when its source published it (migration 0008); NULL before that.
    Column("source", String(64), nullable=True),
    Column("published_at", DateTime(timezone=True), nullable=True),
    PrimaryKeyConstraint("area", "start"),
)

# Each forecast the planner used, and its day-ahead error once the actuals are in.
forecasts = Table(
    "forecasts",
    metadata,
    Column("site_id", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("start", DateTime(timezone=True), nullable=False),
    Column("step_s", Integer, nullable=False),
    Column("values", JSON, nullable=False),
    Column("mae", Float, nullable=True),
    Column("mae_slots", Integer, nullable=True),
    PrimaryKeyConstraint("site_id", "kind", "issued_at"),
)

# The optimizer's flows behind a stored plan (the signed plan carries only the intents).
plan_flows = Table(
    "plan_flows",
    metadata,
    Column("site_id", String(64), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("start", DateTime(timezone=True), nullable=False),
    Column("step_s", Integer, nullable=False),
    Column("flows", JSON, nullable=False),
    PrimaryKeyConstraint("site_id", "version"),
)

# Demand-response events and what each site was asked to do for them.
fleet_events = Table(
    "fleet_events",
    metadata,
    Column("event_id", String(40), primary_key=True),
    Column("start", DateTime(timezone=True), nullable=False),
    Column("end", DateTime(timezone=True), nullable=False),
    Column("reduction_kw", Float, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("result", JSON, nullable=True),  # None while a worker is dispatching it
    # The caller's idempotency key (migration 0004): a retry with it gets the first answer, never a second dispatch.
    Column("client_key", String(64), nullable=True),
    # Migration 0007 (cloud/fleet_work.py): "curves" while workers solve the sites, "dispatched" once the
    # allocation and every chosen site's plan are published (one transaction). NULL: an event from before.
    Column("status", String(16), nullable=True),
    Column("dispatched_at", DateTime(timezone=True), nullable=True),
)
Index("ux_fleet_events_client_key", fleet_events.c.client_key, unique=True)

fleet_event_sites = Table(
    "fleet_event_sites",
    metadata,
    Column("event_id", String(40), nullable=False),
    Column("site_id", String(64), nullable=False),
    Column("start", DateTime(timezone=True), nullable=False),
    Column("end", DateTime(timezone=True), nullable=False),
    Column("incentive", Float, nullable=False),  # per kWh of net import avoided in the window
    PrimaryKeyConstraint("event_id", "site_id"),
)

# One row per (event, site): the demand-response work queue (cloud/fleet_work.py, migration 0007). A worker
# claims a "pending" row by lease and solves the site's reduction/cost curve ("curved", or "skipped" /
# "failed" with a reason); the publishing transaction marks the chosen rows "dispatched" with their plan
# version and the others "unchosen"; the Zap's fetch (or channel acknowledgement) sets acked_at.
fleet_event_jobs = Table(
    "fleet_event_jobs",
    metadata,
    Column("event_id", String(40), nullable=False),
    Column("site_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("reason", Text, nullable=True),
    Column("prior_version", BigInteger, nullable=True),  # the site's latest plan when its curve was solved
    Column("base_net_kw", Float, nullable=True),  # mean planned net import in the window without the event
    Column("curve", JSON, nullable=True),  # [{incentive, reduction_kw, extra_cost}], the lower convex hull
    Column("candidates", LargeBinary, nullable=True),  # gzip JSON: the unsigned plan and flows per curve point
    Column("incentive", Float, nullable=True),
    Column("reduction_kw", Float, nullable=True),
    Column("extra_cost", Float, nullable=True),
    Column("plan_version", BigInteger, nullable=True),
    Column("planned_at", DateTime(timezone=True), nullable=True),
    Column("dispatched_at", DateTime(timezone=True), nullable=True),
    Column("acked_at", DateTime(timezone=True), nullable=True),
    PrimaryKeyConstraint("event_id", "site_id"),
)
Index("ix_fleet_event_jobs_state", fleet_event_jobs.c.state)
Index("ix_fleet_event_jobs_site", fleet_event_jobs.c.site_id)


@dataclass(frozen=True, slots=True)
class SiteRecord:
    site_id: str
    public_key: str
    key_id: str
    assets: Any
    tariff: Any
    stored_through: int
    lost_readings: int


@dataclass(frozen=True, slots=True)
class StoredPlan:
    site_id: str
    version: int
    body: bytes
    signature: str
    issued_at: datetime
    valid_until: datetime


@dataclass(frozen=True, slots=True)
class IngestResult:
    """accepted: the batch is stored (now or before). Otherwise it starts past a gap."""

    accepted: bool
    stored_through: int


class SiteKeyConflictError(Exception):
    """The public key is already registered to another site."""


class PlanVersionConflictError(Exception):
    """A plan with this or a higher version is already stored for the site."""


class Database:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.engine: AsyncEngine = _make_engine(url, echo=echo)
        name = self.engine.dialect.name
        if name not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database dialect {name!r} (use sqlite or postgresql)")
        self._dialect = name

    async def create_schema(self) -> None:
        """Bring the schema to the newest migration (cloud/server/migrate.py), safe with racing workers."""
        from cloud.server.migrate import upgrade

        await upgrade(self)

    async def dispose(self) -> None:
        await self.engine.dispose()

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(select(1))

    def _insert_ignore(self, table: Table) -> Insert:
        """INSERT ... ON CONFLICT DO NOTHING in the engine's dialect."""
        if self._dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing()
        return sqlite.insert(table).on_conflict_do_nothing()

    # --- sites --------------------------------------------------------------------------

    async def upsert_site(
        self,
        site_id: str,
        public_key: str,
        key_id: str,
        *,
        assets: Any = None,
        tariff: Any = None,
        now: datetime,
    ) -> None:
        """Register a site, or re-key / update an existing one; its telemetry position stays."""
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(
                    update(sites)
                    .where(sites.c.site_id == site_id)
                    .values(public_key=public_key, key_id=key_id, assets=assets, tariff=tariff)
                )
                if result.rowcount == 0:
                    await conn.execute(
                        sites.insert().values(
                            site_id=site_id,
                            public_key=public_key,
                            key_id=key_id,
                            assets=assets,
                            tariff=tariff,
                            stored_through=0,
                            lost_readings=0,
                            registered_at=now,
                        )
                    )
        except IntegrityError as exc:
            raise SiteKeyConflictError(f"key {key_id} is already registered to another site") from exc

    async def get_site(self, site_id: str) -> SiteRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(sites).where(sites.c.site_id == site_id))).first()
        if row is None:
            return None
        m = row._mapping
        return SiteRecord(
            site_id=m["site_id"],
            public_key=m["public_key"],
            key_id=m["key_id"],
            assets=m["assets"],
            tariff=m["tariff"],
            stored_through=int(m["stored_through"]),
            lost_readings=int(m["lost_readings"]),
        )

    # --- telemetry ----------------------------------------------------------------------

    async def ingest_telemetry(self, batch: TelemetryBatch) -> IngestResult:
        """Store a checked batch idempotently, keeping the per-site stream gap-free.

        One conditional UPDATE moves stored_through forward only if the batch connects to
        what is stored (or the Zap declared the gap lost); it also serializes concurrent
        ingests of one site (row lock on PostgreSQL, write lock on SQLite). Rows at or below
        the old position are ignored by the idempotent insert.
        """
        site_id, first, last = batch.site_id, batch.first_seq, batch.last_seq
        st = sites.c.stored_through
        async with self.engine.begin() as conn:
            if batch.lost_through is not None:
                advance = (
                    update(sites)
                    .where(sites.c.site_id == site_id, st < last)
                    .values(
                        stored_through=last,
                        lost_readings=sites.c.lost_readings
                        + case((st < batch.lost_through, batch.lost_through - st), else_=0),
                    )
                )
            else:
                advance = (
                    update(sites)
                    .where(sites.c.site_id == site_id, st >= first - 1, st < last)
                    .values(stored_through=last)
                )
            if (await conn.execute(advance)).rowcount == 1:
                await self._insert_readings(conn, batch)
                await self._insert_commands(conn, batch)
                return IngestResult(accepted=True, stored_through=last)
            current = await _stored_through(conn, site_id)
            if current is None:
                raise LookupError(f"unknown site {site_id!r}")
            accepted = current >= last
            if accepted:
                # A re-sent batch may carry command reports the first one did not (the Zap
                # attaches whatever is unsent); they must not be lost behind the 200.
                await self._insert_commands(conn, batch)
        return IngestResult(accepted=accepted, stored_through=current)

    async def _insert_readings(self, conn: AsyncConnection, batch: TelemetryBatch) -> None:
        rows = [
            {
                "site_id": batch.site_id,
                "seq": r.seq,
                "der_id": r.der_id,
                "kind": str(r.kind),
                "ts": r.ts.astimezone(UTC),
                "values": r.values,
                "quality": str(r.quality),
            }
            for r in batch.readings
        ]
        await conn.execute(self._insert_ignore(telemetry), rows)

    async def _insert_commands(self, conn: AsyncConnection, batch: TelemetryBatch) -> None:
        if batch.commands:
            cmds = [
                {
                    "site_id": batch.site_id,
                    "der_id": c.der_id,
                    "ts": c.ts.astimezone(UTC),
                    "command": msgspec.to_builtins(c.command),
                    "result": c.result,
                    "clamped_reason": c.clamped_reason,
                }
                for c in batch.commands
            ]
            await conn.execute(self._insert_ignore(command_reports), cmds)

    async def stored_through(self, site_id: str) -> int | None:
        async with self.engine.connect() as conn:
            return await _stored_through(conn, site_id)

    async def telemetry_rows(self, site_id: str, *, after_seq: int = 0, limit: int = 10_000) -> list[Mapping[str, Any]]:
        """Stored readings in seq order, for forecasters and tests."""
        async with self.engine.connect() as conn:
            result = await conn.execute(
                select(telemetry)
                .where(telemetry.c.site_id == site_id, telemetry.c.seq > after_seq)
                .order_by(telemetry.c.seq)
                .limit(limit)
            )
            return [{**r._mapping, "ts": _utc(r.ts)} for r in result]

    async def last_reading_ts(self, site_id: str) -> datetime | None:
        """The newest stored reading's timestamp (index ix_telemetry_site_ts), None if none."""
        async with self.engine.connect() as conn:
            value = (
                await conn.execute(select(func.max(telemetry.c.ts)).where(telemetry.c.site_id == site_id))
            ).scalar()
        return None if value is None else _utc(value)

    # --- DER models ---------------------------------------------------------------------

    async def replace_der_models(self, report: DiscoveryReport, *, now: datetime) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(der_models).where(der_models.c.site_id == report.site_id))
            if report.ders:
                await conn.execute(
                    der_models.insert(),
                    [
                        {
                            "site_id": report.site_id,
                            "der_id": d.der_id,
                            "capabilities": msgspec.to_builtins(d),
                            "reported_at": now,
                        }
                        for d in report.ders
                    ],
                )

    async def der_models(self, site_id: str) -> list[Mapping[str, Any]]:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                select(der_models.c.capabilities).where(der_models.c.site_id == site_id).order_by(der_models.c.der_id)
            )
            return [r[0] for r in result]

    # --- plans --------------------------------------------------------------------------

    async def insert_plan(self, plan: StoredPlan) -> None:
        """Store a signed plan; its version must be above every stored version of the site."""
        try:
            async with self.engine.begin() as conn:
                latest = await _latest_version(conn, plan.site_id)
                if latest is not None and plan.version <= latest:
                    raise PlanVersionConflictError(
                        f"plan version {plan.version} is not above the stored version {latest}"
                    )
                await conn.execute(
                    plans.insert().values(
                        site_id=plan.site_id,
                        version=plan.version,
                        body=plan.body,
                        signature=plan.signature,
                        issued_at=plan.issued_at,
                        valid_until=plan.valid_until,
                    )
                )
        except IntegrityError as exc:
            # Another worker stored the same version between our check and insert.
            raise PlanVersionConflictError(f"plan version {plan.version} already stored") from exc

    async def latest_plan(self, site_id: str) -> StoredPlan | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(plans).where(plans.c.site_id == site_id).order_by(plans.c.version.desc()).limit(1)
                )
            ).first()
        if row is None:
            return None
        m = row._mapping
        return StoredPlan(
            site_id=m["site_id"],
            version=int(m["version"]),
            body=bytes(m["body"]),
            signature=m["signature"],
            issued_at=_utc(m["issued_at"]),
            valid_until=_utc(m["valid_until"]),
        )

    async def latest_plan_version(self, site_id: str) -> int | None:
        async with self.engine.connect() as conn:
            return await _latest_version(conn, site_id)


async def _stored_through(conn: AsyncConnection, site_id: str) -> int | None:
    value = (await conn.execute(select(sites.c.stored_through).where(sites.c.site_id == site_id))).scalar()
    return None if value is None else int(value)


async def _latest_version(conn: AsyncConnection, site_id: str) -> int | None:
    value = (await conn.execute(select(func.max(plans.c.version)).where(plans.c.site_id == site_id))).scalar()
    return None if value is None else int(value)


def _utc(dt: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone=True columns; we only store UTC.
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


class DatabaseFileError(Exception):
    """The SQLite file or its directory is open to other users."""


def secure_sqlite_file(url: str) -> Path | None:
    """Create the SQLite file of `url` mode 0600 (tighten an existing one); refuse an open directory.

    The database holds the site keys' registry and every site's telemetry. SQLite gives its -wal and
    -shm files the database file's mode, so they follow. A world-writable directory (even /tmp with
    its sticky bit) lets another user plant those files first, so it is refused. Returns the path, or
    None for a URL that is not a SQLite file (PostgreSQL, `:memory:`).
    """
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database).resolve()
    directory = path.parent
    try:
        mode = directory.stat().st_mode
    except OSError as exc:
        raise DatabaseFileError(f"{directory}: {exc.strerror}") from None
    if mode & stat.S_IWOTH:
        raise DatabaseFileError(f"{directory} is world-writable: use a directory only zapcloud can write")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        for suffix in ("-wal", "-shm", "-journal"):
            side = path.with_name(path.name + suffix)
            if side.exists() and stat.S_IMODE(side.stat().st_mode) & 0o077:
                side.chmod(0o600)
    except OSError as exc:
        raise DatabaseFileError(f"{path}: {exc.strerror}") from None
    return path


def _make_engine(url: str, *, echo: bool) -> AsyncEngine:
    if url.startswith("sqlite"):
        # timeout: how long a writer waits for another writer's lock (the busy timeout).
        engine = create_async_engine(url, echo=echo, connect_args={"timeout": 15.0})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # pool_timeout bounds the wait for a pooled connection; the driver's own connect timeout
    # (e.g. ?timeout=10 for asyncpg) belongs in the URL.
    return create_async_engine(url, echo=echo, pool_timeout=15.0, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_conn.cursor()
    try:
        # WAL lets readers run while a writer commits; foreign keys are not used.
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


__all__: Sequence[str] = (
    "Database",
    "DatabaseFileError",
    "IngestResult",
    "PlanVersionConflictError",
    "SiteKeyConflictError",
    "SiteRecord",
    "StoredPlan",
    "secure_sqlite_file",
)
