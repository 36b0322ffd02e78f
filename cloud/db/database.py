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
    Insert,
    Table,
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

from cloud.db.schema import (
    command_reports,
    der_models,
    plans,
    sites,
    telemetry,
)
from cloud_sync.wire import DiscoveryReport, TelemetryBatch


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

    async def channel_identity(self, site_id: str) -> tuple[str, str, int | None] | None:
        """(public key, key id, newest plan version) of a site, or None: what a channel hello needs.

        One connection and one statement, and none of the site's JSON columns decoded: a reconnect
        wave runs this once per Zap (cloud/server/channel.py), where `get_site` plus
        `latest_plan_version` took two pool checkouts and two queries.
        """
        newest = select(func.max(plans.c.version)).where(plans.c.site_id == sites.c.site_id).scalar_subquery()
        query = select(sites.c.public_key, sites.c.key_id, newest).where(sites.c.site_id == site_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return str(row[0]), str(row[1]), None if row[2] is None else int(row[2])

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
