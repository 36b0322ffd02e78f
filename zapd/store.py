"""The gateway's local SQLite store: telemetry outbox, plans, command log, events, key/value state.

Durability choice: WAL with `synchronous=FULL`. Telemetry is written in batches (one
transaction per flush, about once a second), so FULL costs one fsync per batch, and in
exchange a committed reading survives power loss, which is what "no stored reading is
lost" promises. With NORMAL a power cut could roll back the last committed transactions
(the database would stay consistent, but readings we believed stored would be gone).
See docs/decisions.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiosqlite
import msgspec

from zapd.model import CommandResult, Plan, Reading

_reading_encoder = msgspec.json.Encoder()
_reading_decoder = msgspec.json.Decoder(Reading)

# Each entry moves the schema from version i to i+1. Never edit a shipped entry: append.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        ts TEXT NOT NULL,
        der_id TEXT NOT NULL,
        body BLOB NOT NULL
    );
    CREATE TABLE plans (
        version INTEGER PRIMARY KEY,
        site_id TEXT NOT NULL,
        issued_at TEXT NOT NULL,
        valid_until TEXT NOT NULL,
        body BLOB NOT NULL,
        signature TEXT,
        received_at TEXT NOT NULL
    );
    CREATE TABLE command_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts TEXT NOT NULL,
        der_id TEXT NOT NULL,
        command BLOB NOT NULL,
        ok INTEGER NOT NULL,
        detail TEXT NOT NULL,
        clamped_reason TEXT NOT NULL DEFAULT '',
        uploaded INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts TEXT NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE TABLE kv (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
)

ACKED_SEQ_KEY = "sync.acked_seq"
DROPPED_KEY = "sync.dropped_by_retention"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    body: bytes  # the reading as JSON, exactly as stored

    def reading(self) -> Reading:
        return _reading_decoder.decode(self.body)


@dataclass(frozen=True, slots=True)
class StoredPlan:
    plan: Plan
    body: bytes
    signature: str | None


@dataclass(frozen=True, slots=True)
class CommandLogRow:
    id: int
    ts: str
    der_id: str
    command: bytes
    ok: bool
    detail: str
    clamped_reason: str


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    ts: str
    kind: str
    detail: str


class Store:
    """One connection, owned by the daemon. aiosqlite serializes access on its own thread."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        # Held by the uploader from reading a batch out of the outbox until the cloud's answer is
        # recorded; retention waits for it. Otherwise retention deletes (and counts as lost) readings
        # that are on their way and that the cloud then stores: counted twice, as stored and as dropped.
        self.sending = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> Store:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, timeout=10.0)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA foreign_keys=ON")
        await db.execute("PRAGMA busy_timeout=10000")
        store = cls(db, path)
        await store._migrate()
        return store

    async def close(self) -> None:
        await self._db.close()

    async def schema_version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def _migrate(self) -> None:
        current = await self.schema_version()
        if current > len(MIGRATIONS):
            raise RuntimeError(
                f"{self.path}: schema version {current} is newer than this zapd knows ({len(MIGRATIONS)})"
            )
        for version in range(current, len(MIGRATIONS)):
            # executescript commits first; the version bump is part of the same script.
            await self._db.executescript(f"BEGIN; {MIGRATIONS[version]}; PRAGMA user_version = {version + 1}; COMMIT;")

    async def integrity_check(self) -> str:
        async with self._db.execute("PRAGMA integrity_check") as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else "no answer"

    # --- telemetry outbox -------------------------------------------------------------------

    async def append_readings(self, readings: Sequence[Reading]) -> int:
        """Append in one transaction; returns the last sequence number (0 if nothing)."""
        if not readings:
            return await self.last_seq()
        rows = [(r.ts.isoformat(), r.der_id, _reading_encoder.encode(r)) for r in readings]
        try:
            await self._db.executemany("INSERT INTO outbox (ts, der_id, body) VALUES (?, ?, ?)", rows)
            await self._db.commit()
        except BaseException:
            # Disk full half-way: the caller keeps the batch and writes it again; rows left in the open
            # transaction would be committed by the next write and stored twice under new numbers.
            await self._db.rollback()
            raise
        return await self.last_seq()

    async def last_seq(self) -> int:
        async with self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def outbox_after(self, after_seq: int, limit: int) -> list[OutboxRow]:
        async with self._db.execute(
            "SELECT seq, body FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
        ) as cur:
            return [OutboxRow(int(seq), bytes(body)) async for seq, body in cur]

    async def acked_seq(self) -> int:
        value = await self.kv_get(ACKED_SEQ_KEY)
        return int(value) if value is not None else 0

    async def ack_through(self, seq: int) -> None:
        """Record the cloud's acknowledgement and delete what it holds, in one transaction."""
        current = await self.acked_seq()
        if seq <= current:
            return
        await self._db.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (ACKED_SEQ_KEY, str(seq)),
        )
        await self._db.execute("DELETE FROM outbox WHERE seq <= ?", (seq,))
        await self._db.commit()

    async def outbox_depth(self) -> int:
        acked = await self.acked_seq()
        async with self._db.execute("SELECT COUNT(*) FROM outbox WHERE seq > ?", (acked,)) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def oldest_unacked_ts(self) -> datetime | None:
        """Timestamp of the oldest reading the cloud has not acknowledged: the sync lag."""
        acked = await self.acked_seq()
        async with self._db.execute("SELECT ts FROM outbox WHERE seq > ? ORDER BY seq LIMIT 1", (acked,)) as cur:
            row = await cur.fetchone()
        return datetime.fromisoformat(str(row[0])) if row else None

    async def enforce_retention(
        self, older_than: datetime, max_rows: int | None = None, *, counter_key: str = DROPPED_KEY
    ) -> int:
        """Drop readings past the retention bound; count them under `counter_key`, never silently.

        Never the batch in flight (`sending`): the outbox may exceed its bound by one batch meanwhile.
        """
        async with self.sending:
            try:
                return await self._enforce_retention(older_than, max_rows, counter_key)
            except BaseException:
                # Disk full after the DELETE: the next commit must not drop the rows without the count.
                await self._db.rollback()
                raise

    async def _enforce_retention(self, older_than: datetime, max_rows: int | None, counter_key: str) -> int:
        dropped = 0
        cur = await self._db.execute("DELETE FROM outbox WHERE ts < ?", (older_than.isoformat(),))
        dropped += cur.rowcount if cur.rowcount > 0 else 0
        if max_rows is not None:
            cur = await self._db.execute(
                "DELETE FROM outbox WHERE seq <= (SELECT MAX(seq) FROM outbox) - ?", (max_rows,)
            )
            dropped += cur.rowcount if cur.rowcount > 0 else 0
        if dropped:
            total = int(await self.kv_get(counter_key) or 0) + dropped
            await self._db.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (counter_key, str(total)),
            )
        await self._db.commit()
        return dropped

    # --- plans ------------------------------------------------------------------------------

    async def save_plan(self, plan: Plan, body: bytes, signature: str | None, received_at: datetime) -> None:
        await self._db.execute(
            "INSERT OR REPLACE INTO plans (version, site_id, issued_at, valid_until, body, signature, received_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                plan.version,
                plan.site_id,
                plan.issued_at.isoformat(),
                plan.valid_until.isoformat(),
                body,
                signature,
                received_at.isoformat(),
            ),
        )
        await self._db.execute("DELETE FROM plans WHERE version < ? - 10", (plan.version,))
        await self._db.commit()

    async def latest_plan(self) -> StoredPlan | None:
        async with self._db.execute("SELECT body, signature FROM plans ORDER BY version DESC LIMIT 1") as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        body = bytes(row[0])
        return StoredPlan(msgspec.json.decode(body, type=Plan), body, row[1])

    async def forget_plans(self, kv_keys: Sequence[str], kv_set: dict[str, str]) -> None:
        """Drop every cached plan, delete `kv_keys` and write `kv_set`, in one transaction.

        The operator's plan-version reset (cloud_sync.fetcher.reset_plan_version): a cached plan
        with an absurd version would otherwise stay the "latest" one (plans sort by version).
        """
        await self._db.execute("DELETE FROM plans")
        await self._db.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k in kv_keys])
        await self._db.executemany(
            "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            list(kv_set.items()),
        )
        await self._db.commit()

    # --- command log and events -------------------------------------------------------------

    async def log_commands(self, ts: datetime, entries: Iterable[tuple[CommandResult, str]]) -> None:
        rows = [
            (ts.isoformat(), r.command.der_id, msgspec.json.encode(r.command), int(r.ok), r.detail, clamped)
            for r, clamped in entries
        ]
        if not rows:
            return
        await self._db.executemany(
            "INSERT INTO command_log (ts, der_id, command, ok, detail, clamped_reason) VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        await self._db.commit()

    async def recent_commands(self, limit: int = 50) -> list[CommandLogRow]:
        async with self._db.execute(
            "SELECT id, ts, der_id, command, ok, detail, clamped_reason FROM command_log ORDER BY id DESC LIMIT ?",
            (limit,),
        ) as cur:
            return [
                CommandLogRow(int(i), str(ts), str(d), bytes(c), bool(ok), str(det), str(cl))
                async for i, ts, d, c, ok, det, cl in cur
            ]

    async def unsent_commands(self, limit: int = 1000) -> list[CommandLogRow]:
        async with self._db.execute(
            "SELECT id, ts, der_id, command, ok, detail, clamped_reason FROM command_log"
            " WHERE uploaded = 0 ORDER BY id LIMIT ?",
            (limit,),
        ) as cur:
            return [
                CommandLogRow(int(i), str(ts), str(d), bytes(c), bool(ok), str(det), str(cl))
                async for i, ts, d, c, ok, det, cl in cur
            ]

    async def mark_commands_uploaded(self, through_id: int) -> None:
        await self._db.execute("UPDATE command_log SET uploaded = 1 WHERE id <= ?", (through_id,))
        await self._db.commit()

    async def add_event(self, ts: datetime, kind: str, detail: str) -> None:
        await self._db.execute("INSERT INTO events (ts, kind, detail) VALUES (?, ?, ?)", (ts.isoformat(), kind, detail))
        await self._db.commit()

    async def events(self, kind: str | None = None, limit: int = 100) -> list[EventRow]:
        sql = "SELECT id, ts, kind, detail FROM events"
        params: tuple[object, ...] = ()
        if kind is not None:
            sql += " WHERE kind = ?"
            params = (kind,)
        sql += " ORDER BY id DESC LIMIT ?"
        async with self._db.execute(sql, (*params, limit)) as cur:
            return [EventRow(int(i), str(ts), str(k), str(d)) async for i, ts, k, d in cur]

    # --- key/value state ----------------------------------------------------------------------

    async def kv_get(self, key: str) -> str | None:
        async with self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else None

    async def kv_set(self, key: str, value: str) -> None:
        await self._db.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
        await self._db.commit()
