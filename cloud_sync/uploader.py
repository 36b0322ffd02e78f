"""Store-and-forward telemetry upload: the outbox goes up in order, exactly once.

At-least-once delivery from here (the acknowledged position moves only on the server's
answer, and survives restarts in the store) plus the server's idempotency by (site, seq)
gives exactly-once storage, in order. Batches are built by splicing the stored JSON of each
reading instead of decoding and re-encoding it: that keeps a drain of a long outage fast.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime

import httpx
import msgspec
import structlog
from nacl.signing import SigningKey

from cloud_sync.link import LinkStatus
from cloud_sync.wire import (
    MAX_BATCH_READINGS,
    CommandReport,
    DiscoveryReport,
    WireError,
    command_problem,
    decode_ack,
    gzip_body,
    sign_body,
    signed_request_body,
)
from drivers.modbus.backoff import Backoff
from zapd.bounds import check_ts
from zapd.clock import Clock
from zapd.model import Command, DerCapabilities
from zapd.store import CommandLogRow, OutboxRow, Store

log = structlog.get_logger(__name__)

_command_decoder = msgspec.json.Decoder(Command)


class UploadRejected(Exception):
    """The server refused a batch for a reason re-sending will not fix by itself (401/422)."""


def batch_body(site_id: str, rows: list[OutboxRow], commands: list[CommandReport], lost_through: int | None) -> bytes:
    """The TelemetryBatch JSON, with each stored reading spliced in with its sequence number."""
    parts = [b'{"seq":%d,%s' % (row.seq, row.body[1:]) for row in rows]
    head = msgspec.json.encode(
        {"site_id": site_id, "first_seq": rows[0].seq, "last_seq": rows[-1].seq, "lost_through": lost_through}
    )
    tail = b',"commands":' + msgspec.json.encode(commands) + b',"readings":[' + b",".join(parts) + b"]}"
    return head[:-1] + tail


def command_reports(rows: list[CommandLogRow]) -> list[CommandReport]:
    out = []
    for row in rows:
        try:
            command = _command_decoder.decode(row.command)
        except msgspec.DecodeError:
            continue  # a row from an older schema (or a NaN stored as null): the command log keeps it locally
        ts = datetime.fromisoformat(row.ts)
        if command_problem(command) is not None or check_ts(ts) is not None:
            continue  # the cloud would refuse the whole batch for it: it stays in the local command log
        out.append(
            CommandReport(
                ts=ts,
                der_id=row.der_id,
                command=command,
                result="ok" if row.ok else (row.detail or "failed"),
                clamped_reason=row.clamped_reason or None,
            )
        )
    return out


class Uploader:
    def __init__(
        self,
        *,
        store: Store,
        client: httpx.AsyncClient,
        site_id: str,
        key: SigningKey,
        clock: Clock,
        link: LinkStatus,
        interval_s: float = 10.0,
        batch_max: int = 5000,
        compress: bool = True,
        capabilities: Callable[[], list[DerCapabilities]] | None = None,
    ) -> None:
        self._store = store
        self._client = client
        self._site_id = site_id
        self._key = key
        self._clock = clock
        self._link = link
        self._interval_s = interval_s
        self._batch_max = min(batch_max, MAX_BATCH_READINGS)
        self._compress = compress
        self._capabilities = capabilities
        self._reported_caps: bytes | None = None
        self._cursor: int | None = None
        self._backoff = Backoff(1.0, 300.0)
        self._store_failing = False

    @property
    def path(self) -> str:
        return f"/v1/sites/{self._site_id}/telemetry"

    async def report_discovery(self) -> bool:
        """Send the DER set when it changed since the last successful report."""
        if self._capabilities is None:
            return False
        ders = self._capabilities()
        encoded = msgspec.json.encode(ders)
        if encoded == self._reported_caps or not ders:
            return False
        body, headers = signed_request_body(self._key, DiscoveryReport(site_id=self._site_id, ders=ders))
        resp = await self._client.post(f"/v1/sites/{self._site_id}/discovery", content=body, headers=headers)
        if resp.status_code >= 300:
            raise UploadRejected(f"discovery: HTTP {resp.status_code}: {resp.text[:200]}")
        self._reported_caps = encoded
        log.info("discovery_reported", ders=len(ders))
        return True

    async def upload_once(self) -> int:
        """Send one batch; returns how many readings the server newly acknowledged (0 = drained)."""
        if self._cursor is None:
            self._cursor = await self._store.acked_seq()
        rows = await self._store.outbox_after(self._cursor, self._batch_max)
        if not rows:
            return 0
        lost_through = rows[0].seq - 1 if rows[0].seq > self._cursor + 1 else None
        command_rows = await self._store.unsent_commands(limit=1000)
        body = batch_body(self._site_id, rows, command_reports(command_rows), lost_through)
        headers = {**sign_body(self._key, body), "Content-Type": "application/json"}
        if self._compress:
            headers["Content-Encoding"] = "gzip"
            body = gzip_body(body)
        resp = await self._client.post(self.path, content=body, headers=headers)
        if resp.status_code == 409:
            # The server is missing what comes before this batch: continue from where it stands.
            stored = decode_ack(resp.content).stored_through
            log.warning("telemetry_gap", server_stored_through=stored, our_cursor=self._cursor)
            self._cursor = min(stored, self._cursor)
            return 0
        if resp.status_code != 200:
            raise UploadRejected(f"HTTP {resp.status_code}: {resp.text[:200]}")
        stored = decode_ack(resp.content).stored_through
        before = self._cursor
        await self._store.ack_through(stored)
        if command_rows:
            await self._store.mark_commands_uploaded(command_rows[-1].id)
        self._cursor = max(self._cursor, stored)
        return max(0, self._cursor - before)

    async def drain(self) -> int:
        """Upload until the outbox is empty; returns readings sent."""
        total = 0
        while True:
            sent = await self.upload_once()
            if sent == 0:
                return total
            total += sent

    async def run(self) -> None:
        while True:
            now = self._clock.now()
            try:
                await self.report_discovery()
                sent = await self.drain()
                self._link.ok(now)
                if sent:
                    self._link.last_upload = now
                    self._link.uploaded_readings += sent
                self._backoff.reset()
                await self._clock.sleep(self._interval_s)
            except (httpx.HTTPError, UploadRejected, WireError, OSError) as exc:
                self._link.failed(now, "upload", f"{type(exc).__name__}: {exc}")
                await self._clock.sleep(self._backoff.next_delay())
            except sqlite3.Error as exc:
                # The local store (disk full) refused the ack or the read: a local problem, not the link's.
                # The cloud keeps what it stored; the next round re-sends the batch and it answers the same.
                if not self._store_failing:
                    self._store_failing = True
                    log.error("upload_store_failed", error=str(exc))
                await self._clock.sleep(self._backoff.next_delay())
            else:
                if self._store_failing:
                    self._store_failing = False
                    log.info("upload_store_recovered")
