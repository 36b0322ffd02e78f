"""Cloud → Zap delivery from any worker: the database is the queue, NOTIFY is the doorbell.

A Zap holds one WebSocket to one worker (cloud/server/channel.py); the event that concerns it may be
handled by another (a DR event claimed by any worker, a plan made by any planner). So nothing is sent
worker to worker: a command is a row in `channel_commands` (signed, with its nonce and expiry), and
the sender rings the doorbell: `pg_notify` on PostgreSQL (delivered at commit to every worker that
LISTENs), an in-process call on SQLite (one box, one process). The worker that holds the site's
connection reads the row and sends it. A doorbell can be missed (listener reconnecting, a second
process on SQLite): every worker also sweeps for unacknowledged commands of the sites it holds every
SWEEP_S, so a command is late then, never lost while it is valid.

The Zap's acknowledgement (applied what, when, or refused why) is stored on the command's row; its
live status (rung, link, SoC, grid power, plan in force) on `channel_sites`, written in batches.

The interface for the rest of the cloud is the four functions `send_command`, `notify_plan`,
`command_acks` and `live_sites`; they work from any worker, with or without a local hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import msgspec
import structlog
from nacl.signing import SigningKey
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    LargeBinary,
    String,
    Table,
    Text,
    bindparam,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.db import Database, metadata
from cloud.server.metrics import Metrics
from cloud_sync.channel_wire import (
    Ack,
    Action,
    CommandFrame,
    PlanAvailable,
    Status,
    encode_frame,
    make_command,
    sign_command,
)
from drivers.resilience import Backoff, FailureLatch

log = structlog.get_logger("zapcloud.channel")

NOTIFY_CHANNEL = "zapd_channel"
SWEEP_S = 2.0  # how late a command whose doorbell was missed may be
RESEND_S = 10.0  # a command sent but not acknowledged this long is sent again (the Zap re-acks by nonce)
STATUS_FLUSH_S = 2.0
_SWEEP_LIMIT = 5000

channel_commands = Table(
    "channel_commands",
    metadata,
    Column("command_id", String(32), primary_key=True),  # the nonce
    Column("site_id", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("body", LargeBinary, nullable=False),  # the Command JSON exactly as signed
    Column("signature", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=True),  # last handed to a connection
    Column("acked_at", DateTime(timezone=True), nullable=True),  # when the cloud got the Zap's answer
    Column("result", String(16), nullable=True),  # applied | refused
    Column("ack", JSON, nullable=True),  # {"reason", "applied": {...}, "applied_at"}
)
Index("ix_channel_commands_site", channel_commands.c.site_id, channel_commands.c.created_at)
Index("ix_channel_commands_pending", channel_commands.c.acked_at, channel_commands.c.expires_at)

channel_sites = Table(
    "channel_sites",
    metadata,
    Column("site_id", String(64), primary_key=True),
    Column("worker", String(64), nullable=True),  # the worker holding its channel; None while disconnected
    Column("connected_at", DateTime(timezone=True), nullable=True),
    Column("disconnected_at", DateTime(timezone=True), nullable=True),
    Column("status", JSON, nullable=True),  # the last Status frame (rung, link, soc, grid_w)
    Column("status_at", DateTime(timezone=True), nullable=True),
    Column("plan_version", BigInteger, nullable=True),  # the newest plan the Zap said it took
    Column("plan_applied_at", DateTime(timezone=True), nullable=True),
    Column("note", Text, nullable=True),
)


@dataclass(frozen=True, slots=True)
class CommandAck:
    command_id: str
    site_id: str
    kind: str
    created_at: datetime
    sent_at: datetime | None
    acked_at: datetime | None
    result: str | None  # None until the Zap answered
    reason: str
    applied: dict[str, Any]
    applied_at: datetime | None


@dataclass(frozen=True, slots=True)
class LiveSite:
    site_id: str
    connected: bool
    worker: str | None
    status: dict[str, Any] | None
    status_at: datetime | None
    plan_version: int | None
    plan_applied_at: datetime | None


# --- the interface for any worker ------------------------------------------------------------------


async def send_command(
    db: Database, key: SigningKey, site_id: str, action: Action, *, now: datetime, ttl_s: float = 300.0
) -> str:
    """Queue a signed command for `site_id` and ring the doorbell; returns its command id (the nonce).

    The command reaches the Zap if it is connected (to any worker) before it expires; the answer
    shows in `command_acks`. Nothing waits for the Zap here.
    """
    (command_id,) = await send_commands(db, key, [(site_id, action)], now=now, ttl_s=ttl_s)
    return command_id


async def send_commands(
    db: Database, key: SigningKey, actions: Sequence[tuple[str, Action]], *, now: datetime, ttl_s: float = 300.0
) -> list[str]:
    """`send_command` for many sites in one transaction (a DR event over a fleet); ids in order."""
    rows: list[dict[str, Any]] = []
    bells: list[tuple[str, str]] = []
    for site_id, action in actions:
        cmd = make_command(site_id, action, now=now, ttl_s=ttl_s)
        frame = sign_command(key, cmd)
        rows.append(
            {
                "command_id": cmd.command_id,
                "site_id": site_id,
                "kind": type(action).__struct_config__.tag or "",
                "body": frame.body.encode(),
                "signature": frame.signature,
                "created_at": now,
                "expires_at": cmd.expires_at,
            }
        )
        bells.append((site_id, cmd.command_id))
    if not rows:
        return []
    async with db.engine.begin() as conn:
        await conn.execute(channel_commands.insert(), rows)
        for site_id, command_id in bells:
            await _ring(db, conn, f"c {site_id} {command_id}")
    for site_id, command_id in bells:
        _ring_local(db, ("c", site_id, command_id))
    return [command_id for _site, command_id in bells]


async def notify_plan(db: Database, site_id: str, version: int) -> None:
    """Tell `site_id` (if connected anywhere) that plan `version` is stored; it fetches and verifies it."""
    await notify_plans(db, [(site_id, version)])


async def notify_plans(db: Database, plans: Sequence[tuple[str, int]]) -> None:
    """`notify_plan` for many sites (a DR event's): one statement rings every doorbell on PostgreSQL."""
    payloads = [f"p {site_id} {int(version)}" for site_id, version in plans]
    if not payloads:
        return
    if db.engine.dialect.name == "postgresql":
        async with db.engine.begin() as conn:
            await conn.execute(
                text("SELECT pg_notify(:ch, p) FROM unnest(CAST(:payloads AS text[])) AS p"),
                {"ch": NOTIFY_CHANNEL, "payloads": payloads},
            )
    for site_id, version in plans:
        _ring_local(db, ("p", site_id, str(int(version))))


async def command_acks(db: Database, command_ids: Sequence[str]) -> dict[str, CommandAck]:
    """Delivery and acknowledgement of each known command id (unknown ids are absent)."""
    out: dict[str, CommandAck] = {}
    ids = list(command_ids)
    async with db.engine.connect() as conn:
        for i in range(0, len(ids), 500):
            rows = await conn.execute(
                select(channel_commands).where(channel_commands.c.command_id.in_(ids[i : i + 500]))
            )
            for r in rows:
                m = r._mapping
                ack = m["ack"] or {}
                applied_at = ack.get("applied_at")
                out[m["command_id"]] = CommandAck(
                    command_id=m["command_id"],
                    site_id=m["site_id"],
                    kind=m["kind"],
                    created_at=_utc(m["created_at"]),
                    sent_at=_utc_opt(m["sent_at"]),
                    acked_at=_utc_opt(m["acked_at"]),
                    result=m["result"],
                    reason=str(ack.get("reason", "")),
                    applied=dict(ack.get("applied") or {}),
                    applied_at=datetime.fromisoformat(applied_at) if applied_at else None,
                )
    return out


async def live_sites(db: Database, site_ids: Sequence[str] | None = None) -> dict[str, LiveSite]:
    """What each site's channel last said (rung, link, SoC, grid power) and whether it is connected now."""
    query = select(channel_sites)
    if site_ids is not None:
        query = query.where(channel_sites.c.site_id.in_(list(site_ids)))
    async with db.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return {
        r.site_id: LiveSite(
            site_id=r.site_id,
            connected=r.worker is not None,
            worker=r.worker,
            status=r.status,
            status_at=_utc_opt(r.status_at),
            plan_version=None if r.plan_version is None else int(r.plan_version),
            plan_applied_at=_utc_opt(r.plan_applied_at),
        )
        for r in rows
    }


async def _ring(db: Database, conn: AsyncConnection, payload: str) -> None:
    if db.engine.dialect.name == "postgresql":
        # Delivered when this transaction commits, to every LISTENing worker (ours too).
        await conn.execute(text("SELECT pg_notify(:ch, :payload)"), {"ch": NOTIFY_CHANNEL, "payload": payload})


# Hubs of this process, by database URL: the in-process doorbell for SQLite.
_local_hubs: weakref.WeakSet[ChannelHub] = weakref.WeakSet()


def _ring_local(db: Database, bell: tuple[str, str, str]) -> None:
    if db.engine.dialect.name == "postgresql":
        return  # the NOTIFY reaches our own listener too
    url = db.engine.url.render_as_string(hide_password=False)
    for hub in list(_local_hubs):
        if hub.db_url == url:
            hub.ring(bell)


# --- the per-worker hub --------------------------------------------------------------------------


class SiteConnection(Protocol):
    """What the hub needs of one live channel (cloud/server/channel.py implements it)."""

    site_id: str

    async def send_text(self, data: str) -> None: ...


class ChannelHub:
    """This worker's live channels, its doorbell listener and its sweeper."""

    def __init__(self, db: Database, metrics: Metrics, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.db_url = db.engine.url.render_as_string(hide_password=False)
        self.metrics = metrics
        self.clock = clock
        self.worker = f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"
        self.connections: dict[str, SiteConnection] = {}
        self._bells: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue(maxsize=100_000)
        self._dirty: dict[str, dict[str, Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: Any = None  # asyncpg connection while listening
        self.listening = asyncio.Event()

    # lifecycle

    async def start(self) -> None:
        _local_hubs.add(self)
        self._tasks = [
            asyncio.create_task(self._deliver_loop(), name="channel_deliver"),
            asyncio.create_task(self._sweep_loop(), name="channel_sweep"),
            asyncio.create_task(self._flush_loop(), name="channel_flush"),
        ]
        if self.db.engine.dialect.name == "postgresql":
            self._tasks.append(asyncio.create_task(self._listen_loop(), name="channel_listen"))
        else:
            self.listening.set()

    async def stop(self) -> None:
        _local_hubs.discard(self)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._flush()
            await self._mark_disconnected(list(self.connections))
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close(timeout=2)

    # connections (called by the endpoint)

    def attach(self, conn: SiteConnection) -> SiteConnection | None:
        """Bind `conn` to its site here; returns the connection it replaces (the caller closes it)."""
        old = self.connections.get(conn.site_id)
        self.connections[conn.site_id] = conn
        self._dirty.setdefault(conn.site_id, {}).update(
            worker=self.worker, connected_at=self.clock(), disconnected_at=None
        )
        self.ring(("s", conn.site_id, ""))  # send what is pending for it
        return old

    def detach(self, conn: SiteConnection) -> None:
        if self.connections.get(conn.site_id) is conn:
            del self.connections[conn.site_id]
            self._dirty.setdefault(conn.site_id, {}).update(worker=None, disconnected_at=self.clock())

    def ring(self, bell: tuple[str, str, str]) -> None:
        if bell[1] not in self.connections:
            return  # another worker's site (or nobody's): its own worker, or polling, takes it
        try:
            self._bells.put_nowait(bell)
        except asyncio.QueueFull:
            self.metrics.channel("cloud", "doorbell_overflow")  # the sweep delivers it

    # what the Zap sends (called by the endpoint)

    async def on_ack(self, site_id: str, ack: Ack) -> bool:
        """Store the first answer to a command of this site; False if it names no such command."""
        detail = {
            "reason": ack.reason,
            "applied": dict(ack.applied),
            "applied_at": ack.applied_at.astimezone(UTC).isoformat(),
        }
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                update(channel_commands)
                .where(
                    channel_commands.c.command_id == ack.command_id,
                    channel_commands.c.site_id == site_id,
                    channel_commands.c.acked_at.is_(None),
                )
                .values(acked_at=self.clock(), result=ack.result, ack=detail)
            )
            if result.rowcount == 1:
                return True
            known = (
                await conn.execute(
                    select(channel_commands.c.site_id).where(channel_commands.c.command_id == ack.command_id)
                )
            ).scalar()
        return known == site_id  # a repeated ack of ours is fine; another site's or an unknown id is not

    def on_status(self, site_id: str, status: Status) -> None:
        self._dirty.setdefault(site_id, {}).update(
            status=msgspec.to_builtins(status), status_at=self.clock(), **_plan_fields(status)
        )

    def on_plan_ack(self, site_id: str, version: int, applied_at: datetime) -> None:
        self._dirty.setdefault(site_id, {}).update(plan_version=version, plan_applied_at=applied_at)

    # delivery

    async def _deliver_loop(self) -> None:
        while True:
            bell = await self._bells.get()
            batch = [bell]
            while not self._bells.empty() and len(batch) < 500:
                batch.append(self._bells.get_nowait())
            try:
                await self._deliver(batch)
            except Exception as exc:  # the database hiccuped: the sweep retries
                self.metrics.channel("cloud", "deliver_failed")
                log.warning("channel.deliver_failed", error=f"{type(exc).__name__}: {exc}")

    async def _deliver(self, bells: list[tuple[str, str, str]]) -> None:
        plans = [(site, int(v)) for kind, site, v in bells if kind == "p"]
        for site_id, version in plans:
            await self._send(site_id, encode_frame(PlanAvailable(site_id=site_id, version=version)))
        command_ids = [cid for kind, _site, cid in bells if kind == "c"]
        sites = [site for kind, site, _ in bells if kind == "s"]
        if command_ids or sites:
            await self._send_pending(command_ids=command_ids, sites=sites)

    async def _send_pending(self, *, command_ids: Iterable[str] = (), sites: Iterable[str] = ()) -> None:
        """Send the named commands and every pending one of `sites`, then mark them sent."""
        now = self.clock()
        cols = (
            channel_commands.c.command_id,
            channel_commands.c.site_id,
            channel_commands.c.body,
            channel_commands.c.signature,
        )
        pending = (channel_commands.c.acked_at.is_(None), channel_commands.c.expires_at > now)
        found: dict[str, Any] = {}
        ids, site_list = list(command_ids), list(sites)
        async with self.db.engine.connect() as conn:
            for i in range(0, len(ids), 500):
                rows = await conn.execute(
                    select(*cols).where(channel_commands.c.command_id.in_(ids[i : i + 500]), *pending)
                )
                found.update((r.command_id, r) for r in rows)
            for i in range(0, len(site_list), 500):
                rows = await conn.execute(
                    select(*cols).where(channel_commands.c.site_id.in_(site_list[i : i + 500]), *pending)
                )
                found.update((r.command_id, r) for r in rows)
        await self._send_rows(list(found.values()), now)

    async def _send_rows(self, rows: list[Any], now: datetime) -> None:
        sent: list[str] = []
        for r in rows:
            frame = encode_frame(CommandFrame(body=bytes(r.body).decode(), signature=r.signature))
            if await self._send(r.site_id, frame):
                sent.append(r.command_id)
        if sent:
            async with self.db.engine.begin() as conn:
                await conn.execute(
                    update(channel_commands)
                    .where(channel_commands.c.command_id == bindparam("cid"))
                    .values(sent_at=now),
                    [{"cid": c} for c in sent],
                )

    async def _send(self, site_id: str, frame: str) -> bool:
        conn = self.connections.get(site_id)
        if conn is None:
            return False
        try:
            await conn.send_text(frame)
        except Exception:  # the connection is going away; its handler detaches it
            return False
        return True

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            if not self.connections:
                continue
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("channel.sweep_failed", error=f"{type(exc).__name__}: {exc}")

    async def sweep(self) -> None:
        """Send pending commands of our sites that were never sent or not acknowledged in RESEND_S."""
        now = self.clock()
        c = channel_commands.c
        due = (c.sent_at.is_(None)) | (c.sent_at < now - timedelta(seconds=RESEND_S))
        query = select(c.command_id, c.site_id, c.body, c.signature).where(
            c.acked_at.is_(None), c.expires_at > now, due
        )
        if len(self.connections) <= 500:  # few sites here: only theirs (else all pending, filtered below)
            query = query.where(c.site_id.in_(list(self.connections)))
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query.limit(_SWEEP_LIMIT))).all()
        await self._send_rows([r for r in rows if r.site_id in self.connections], now)

    # status rows, in batches

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_FLUSH_S)
            try:
                await self._flush()
            except Exception as exc:
                log.warning("channel.status_flush_failed", error=f"{type(exc).__name__}: {exc}")

    async def _flush(self) -> None:
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, {}
        async with self.db.engine.begin() as conn:
            await conn.execute(self.db._insert_ignore(channel_sites), [{"site_id": s} for s in dirty])
            by_cols: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for site_id, values in dirty.items():
                by_cols.setdefault(tuple(sorted(values)), []).append({"sid": site_id, **values})
            for cols, params in by_cols.items():
                stmt = (
                    update(channel_sites)
                    .where(channel_sites.c.site_id == bindparam("sid"))
                    .values({col: bindparam(col) for col in cols})
                )
                await conn.execute(stmt, params)

    async def _mark_disconnected(self, site_ids: list[str]) -> None:
        if not site_ids:
            return
        async with self.db.engine.begin() as conn:
            for i in range(0, len(site_ids), 500):
                await conn.execute(
                    update(channel_sites)
                    .where(channel_sites.c.site_id.in_(site_ids[i : i + 500]), channel_sites.c.worker == self.worker)
                    .values(worker=None, disconnected_at=self.clock())
                )

    # PostgreSQL doorbell

    async def _listen_loop(self) -> None:
        import asyncpg

        dsn = _asyncpg_dsn(self.db_url)
        # The shared retry helpers (issue 15): jittered, so a fleet of workers does not retry a restarted
        # database in step, and one warning per outage instead of one per attempt.
        backoff = Backoff(0.5, 30.0)
        latch = FailureLatch(
            log, "channel.listen_connect_failed", "channel.listen_reconnected", level="warning", worker=self.worker
        )
        while True:
            try:
                conn = await asyncpg.connect(dsn, timeout=10)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                latch.failed(error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(backoff.next_delay())
                continue
            latch.ok()
            backoff.reset()
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _c, ev=lost: ev.set())
            await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
            self._listener = conn
            self.listening.set()
            log.info("channel.listening", worker=self.worker)
            # What rang while we were not listening: every pending command of our sites.
            await self._catch_up()
            try:
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), timeout=15.0)
                    if not lost.is_set() and conn.is_closed():
                        break
                    if not lost.is_set():
                        await conn.execute("SELECT 1")  # notices a dead server without a FIN
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("channel.listen_lost", error=f"{type(exc).__name__}: {exc}")
            finally:
                self.listening.clear()
                self._listener = None
                with contextlib.suppress(Exception):
                    await conn.close(timeout=2)

    async def _catch_up(self) -> None:
        with contextlib.suppress(Exception):
            await self.sweep()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        parts = payload.split(" ")
        if len(parts) == 3 and parts[0] in ("c", "p"):
            self.ring((parts[0], parts[1], parts[2]))
        else:
            self.metrics.channel("cloud", "bad_notify")


def _plan_fields(status: Status) -> dict[str, Any]:
    return {} if status.plan_version is None else {"plan_version": status.plan_version}


def _asyncpg_dsn(url: str) -> str:
    """The SQLAlchemy URL as a plain libpq DSN for asyncpg.connect (driver name dropped)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _utc_opt(dt: datetime | None) -> datetime | None:
    return None if dt is None else _utc(dt)


__all__ = [
    "ChannelHub",
    "CommandAck",
    "LiveSite",
    "channel_commands",
    "channel_sites",
    "command_acks",
    "live_sites",
    "notify_plan",
    "notify_plans",
    "send_command",
    "send_commands",
]
